"""Controlled regressions for the gate's tests and for perf/gate_power.py: an ONNX classifier and copies of it that
are slower by a chosen amount of extra work, computing the same logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def base_model(out: Path, image_size: int = 32) -> Path:
    """A random-weight MobileNetV3-S-050 exported to fp32 ONNX (input ``(1, 3, S, S)``)."""
    import torch

    from edgedistill.toolchain.vision.export.onnx import export_fp32
    from edgedistill.toolchain.vision.models import create

    torch.manual_seed(0)
    model = create("mobilenetv3_small_050", 10).eval()
    return export_fp32(model, torch.zeros(1, 3, image_size, image_size), out)


def slowed_copy(src: Path, out: Path, width: int) -> Path:
    """``src`` plus a side branch that does extra work and adds zero to the logits: ``logits + 0 ·
    sum(tanh(x_flat · W))`` with ``W`` ``(C·S·S, width)``, so the outputs are unchanged and the run costs
    ``C·S·S·width`` more multiply-adds (``width`` 0: an identical copy). The zero is a runtime input-dependent
    product, so graph optimisers cannot fold the branch away."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src), load_external_data=True)
    if width <= 0:
        onnx.save(m, str(out), save_as_external_data=False)
        return out
    g = m.graph
    inp, outp = g.input[0].name, g.output[0].name
    shape = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    flat = int(np.prod(shape[1:]))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((flat, width)).astype(np.float32) * 0.01,
                                "slow_w")
    zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "slow_zero")
    shp = numpy_helper.from_array(np.array([-1, flat], dtype=np.int64), "slow_shape")  # any batch
    g.initializer.extend([w, zero, shp])
    old_out = outp + "_orig"
    for node in g.node:  # rename the producer of the graph output; the new Add produces it
        node.output[:] = [old_out if o == outp else o for o in node.output]
    g.node.extend([
        helper.make_node("Reshape", [inp, "slow_shape"], ["slow_flat"]),
        helper.make_node("MatMul", ["slow_flat", "slow_w"], ["slow_mm"]),
        helper.make_node("Tanh", ["slow_mm"], ["slow_t"]),
        helper.make_node("ReduceSum", ["slow_t"], ["slow_sum"], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nil"]),
        helper.make_node("Add", [old_out, "slow_nil"], [outp]),
    ])
    del m.graph.value_info[:]  # shapes are re-inferred by the runtime
    onnx.save(m, str(out), save_as_external_data=False)
    return out


def report_for(name: str, samples: list[float], per_example: list[int] | None = None) -> dict:
    """The smallest report the gate reads: one artifact row on the host with its samples."""
    from edgedistill.benchmarks.row import Row, percentiles

    s = np.asarray(samples)
    row = Row(name, "vision", "artifact", "host", threads=1, per_example=per_example,
              score=None if per_example is None else float(np.mean(per_example)),
              **percentiles(samples, float(np.percentile(s, 50)), float(np.percentile(s, 90)),
                            float(np.percentile(s, 99))))
    return {"summary": {"threads": [1], "recommended": None}, "rows": [row.to_dict()], "devices": []}
