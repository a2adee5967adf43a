"""Roofline latency estimates for profiles with no reachable device (label ``estimated``).

Each node of the artifact's ONNX graph (after shape inference, batch 1) costs
``max(flops / compute_peak, bytes / memory_bandwidth)`` (a per-node roofline); the estimate is the sum over
nodes, plus a fixed per-node dispatch cost. FLOPs are counted for Conv/ConvTranspose/Gemm/MatMul and their
integer/QLinear forms (2 per multiply-accumulate), one per output element for everything else; bytes are each
node's inputs, weights and outputs (no cache reuse between nodes). A node computes in int8 when it is an
integer/QLinear op or reads a DequantizeLinear output (QDQ); then it uses the profile's int8 peak and 1-byte
elements, and the Q/DQ nodes themselves are taken as fused (free). Compute peaks scale with threads/cores;
bandwidth does not.

The pure roofline is a bound: runtimes reach a fraction of peak. Every node therefore belongs to an operator class
(:func:`op_class`: dense conv, depthwise conv, matmul, other; each fp32 or int8), and a calibration
(``devices/profiles/estimator-calibration.json``, written by ``perf/calibrate_estimator.py``) holds the efficiency
each class reaches, fitted on measured host runs; the estimate divides each node's roofline time by its class's
efficiency and uses the fitted per-node dispatch cost. ``roofline_ms`` keeps the uncalibrated bound. The script
reports the error on models and published Raspberry Pi 4 figures kept out of the fit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.profile import DeviceProfile
from edgedistill.devices.transport import TRANSPORTS, Label, Transport

#: fixed cost per executed node (kernel dispatch, threading hand-off); a typical CPU runtime figure
DISPATCH_US = 5.0
_MAC_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger",
            "QLinearMatMul"}
_INT_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeLinear"}
_FREE_OPS = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
             "Shape", "Constant", "Cast"}


@dataclass
class GraphCost:
    """What one batch-1 inference of a graph costs: totals and the int8 share."""

    flops: float = 0.0
    bytes: float = 0.0
    int8_flops: float = 0.0
    nodes: int = 0
    unknown_shapes: int = 0
    #: per node: (fp32 flops, int8 flops, bytes), for the per-node roofline
    per_node: list[tuple[float, float, float]] = field(default_factory=list)
    #: per node: (operator, flops), in graph order (what the count was made of)
    ops: list[tuple[str, float]] = field(default_factory=list)
    #: per node: its operator class (:func:`op_class`), aligned with ``per_node``
    classes: list[str] = field(default_factory=list)


CALIBRATION_FILE = Path(__file__).parent / "profiles" / "estimator-calibration.json"


def op_class(kind: str, int8: bool) -> str:
    """``conv`` (dense convolution), ``dwconv`` (grouped/depthwise), ``matmul`` (Gemm/MatMul/fully connected),
    ``other`` (element-wise, pooling, normalisation, ...), ``decode`` (a GGUF's per-token work), suffixed ``-int8``
    when the node computes in int8 (quantised GGUF tensors included)."""
    return f"{kind}-int8" if int8 else kind


@cache
def load_calibration(path: Path = CALIBRATION_FILE) -> dict[str, Any] | None:
    """The fitted efficiencies (``{"efficiency": {class: fraction of peak}, "dispatch_us": float, ...}``), or None
    when no calibration file exists (then estimates are the pure roofline)."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    eff = doc.get("efficiency", {})
    if not all(isinstance(v, int | float) and 0 < v <= 50 for v in eff.values()):
        raise ValueError(f"{path}: efficiency: each class needs a positive fraction of peak")
    return doc


def _dims(vi: Any) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif i == 0:
            out.append(1)  # dynamic batch -> 1
        else:
            return None
    return out


def _load_shaped(path: Path) -> Any:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for inp in model.graph.input:  # fix a dynamic batch to 1 so shapes propagate
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    return shape_inference.infer_shapes(model, data_prop=True)


def _mac_flops(op: str, ins: list[list[int] | None], outs: list[list[int] | None], group: int) -> float:
    """2 x multiply-accumulates of a conv or matrix product, from its shapes."""
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = ins[3] if op == "QLinearConv" else ins[1]
        if w is None or outs[0] is None:
            return 0.0
        if op == "ConvTranspose":
            x = ins[0]
            return 2.0 * math.prod(x or [0]) * math.prod(w[1:])
        return 2.0 * math.prod(outs[0]) * math.prod(w[1:])  # per output: Cin/group x kh x kw MACs
    a = ins[3] if op == "QLinearMatMul" else ins[0]
    if a is None or outs[0] is None:
        return 0.0
    return 2.0 * math.prod(outs[0]) * a[-1]  # out (…, M, N) x K


def graph_cost(path: Path) -> GraphCost:
    """Count FLOPs and bytes of every node of an ONNX file (batch 1)."""
    from onnx import TensorProto, helper, numpy_helper

    model = _load_shaped(path)
    g = model.graph
    shapes: dict[str, list[int] | None] = {vi.name: _dims(vi) for vi in [*g.input, *g.output, *g.value_info]}
    itemsize: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        et = vi.type.tensor_type.elem_type
        itemsize[vi.name] = helper.tensor_dtype_to_np_dtype(et).itemsize if et else 4
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        itemsize[init.name] = numpy_helper.to_array(init).itemsize if init.data_type != TensorProto.UNDEFINED else 4
    producer = {o: n.op_type for n in g.node for o in n.output}
    cost = GraphCost()
    for n in g.node:
        if n.op_type in _FREE_OPS:
            continue
        ins = [shapes.get(i) for i in n.input if i]
        outs = [shapes.get(o) for o in n.output]
        if outs[0] is None:
            cost.unknown_shapes += 1
            continue
        int8 = n.op_type in _INT_OPS or any(producer.get(i) == "DequantizeLinear" for i in n.input)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type in _MAC_OPS:
            flops = _mac_flops(n.op_type, ins, outs, group)
        else:
            flops = float(sum(math.prod(o) for o in outs if o is not None))
        size = (lambda name: 1) if int8 else (lambda name: itemsize.get(name, 4))
        nbytes = sum(math.prod(shapes[i]) * size(i) for i in n.input if i and shapes.get(i) is not None)
        nbytes += sum(math.prod(shapes[o]) * size(o) for o in n.output if shapes.get(o) is not None)
        cost.flops += flops
        cost.bytes += nbytes
        cost.int8_flops += flops if int8 else 0.0
        cost.nodes += 1
        cost.per_node.append((0.0 if int8 else flops, flops if int8 else 0.0, float(nbytes)))
        cost.ops.append((n.op_type, flops))
        kind = "other"
        if n.op_type in _MAC_OPS:
            kind = "matmul" if "Conv" not in n.op_type else ("dwconv" if group > 1 else "conv")
        cost.classes.append(op_class(kind, int8))
    return cost


_TFL_FREE = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def tflite_cost(path: Path) -> GraphCost:
    """Count FLOPs and bytes of every operator of a TFLite flatbuffer (batch 1), read through LiteRT's own
    interpreter: CONV_2D ``2·|out|·kh·kw·Cin`` (weights OHWI), DEPTHWISE_CONV_2D ``2·|out|·kh·kw``,
    FULLY_CONNECTED and BATCH_MATMUL ``2·|out|·K``, one FLOP per output element otherwise; an operator whose first
    input is int8/uint8 computes in int8 (1-byte elements, the int8 peak); Q/DQ and reshapes are free."""
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # boards with only tflite-runtime
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    cost = GraphCost()
    for op in interp._get_ops_details():  # the public API has no per-operator listing
        name = op["op_name"]
        if name in _TFL_FREE:
            continue
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        outs = [tensors[i] for i in op["outputs"] if i >= 0]
        out = math.prod(outs[0]["shape"]) if outs else 0
        if name == "CONV_2D":
            flops = 2.0 * out * math.prod(ins[1]["shape"][1:])
        elif name == "DEPTHWISE_CONV_2D":
            flops = 2.0 * out * ins[1]["shape"][1] * ins[1]["shape"][2]
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            flops = 2.0 * out * ins[1 if name == "FULLY_CONNECTED" else 0]["shape"][-1]
        else:
            flops = float(sum(math.prod(o["shape"]) for o in outs))
        int8 = bool(ins) and np.dtype(ins[0]["dtype"]).itemsize == 1
        nbytes = sum(math.prod(t["shape"]) * (1 if int8 else np.dtype(t["dtype"]).itemsize) for t in [*ins, *outs])
        cost.flops += flops
        cost.bytes += nbytes
        cost.int8_flops += flops if int8 else 0.0
        cost.nodes += 1
        cost.per_node.append((0.0 if int8 else flops, flops if int8 else 0.0, float(nbytes)))
        cost.ops.append((name, flops))
        kind = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "matmul",
                "BATCH_MATMUL": "matmul"}.get(name, "other")
        cost.classes.append(op_class(kind, int8))
    return cost


#: context length at which a GGUF's per-token decode cost is estimated (the agent's default ``--pp``)
GGUF_ESTIMATE_CONTEXT = 64


def gguf_cost(path: Path, context: int = GGUF_ESTIMATE_CONTEXT) -> GraphCost:
    """What generating one token of a GGUF language model costs at ``context`` cached tokens (batch 1).

    Each 2-D weight is one matrix-vector product: 2 FLOPs per element, its stored bytes read once (quantised
    types count as int8 work, F32/F16 as fp32); the token embedding reads one row; attention reads the F16 KV
    cache and does 4·heads·head_dim FLOPs per cached token and layer.
    """
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def meta(key: str) -> int:
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])

    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    layers, dim = meta(f"{arch}.block_count"), meta(f"{arch}.embedding_length")
    heads, kv_heads = meta(f"{arch}.attention.head_count"), meta(f"{arch}.attention.head_count_kv")
    head_dim = dim // heads
    names = {t.name for t in r.tensors}
    cost = GraphCost()
    for t in r.tensors:
        quantised = t.tensor_type.name not in ("F32", "F16", "BF16")
        if t.name == "token_embd.weight" and "output.weight" in names:  # a lookup, not a product
            flops, nbytes = 0.0, float(t.n_bytes) / int(t.shape[-1])
        elif len(t.shape) >= 2:
            flops, nbytes = 2.0 * int(t.n_elements), float(t.n_bytes)
        else:
            flops, nbytes, quantised = 4.0 * int(t.n_elements), float(t.n_bytes), False
        cost.per_node.append((0.0 if quantised else flops, flops if quantised else 0.0, nbytes))
        cost.classes.append(op_class("decode", quantised))
    for _ in range(layers):  # attention over the cache: scores and weighted sum, K and V read in F16
        flops = 4.0 * heads * head_dim * context
        cost.per_node.append((flops, 0.0, 2.0 * kv_heads * head_dim * context * 2))
        cost.classes.append("decode")
    for f32, i8, nbytes in cost.per_node:
        cost.flops += f32 + i8
        cost.int8_flops += i8
        cost.bytes += nbytes
    cost.nodes = len(cost.per_node)
    return cost


def roofline_by_class(cost: GraphCost, profile: DeviceProfile, threads: int) -> dict[str, float]:
    """Seconds of pure per-node roofline time summed per operator class (the calibration's regressors)."""
    share = min(threads, profile.cores) / profile.cores
    fp32_peak = profile.peak_gflops_fp32 * 1e9 * share
    int8_peak = profile.peak_gops_int8 * 1e9 * share
    bw = profile.mem_bandwidth_gbs * 1e9
    out: dict[str, float] = {}
    classes = cost.classes or ["other"] * len(cost.per_node)
    for (f32, i8, nbytes), cls in zip(cost.per_node, classes, strict=True):
        out[cls] = out.get(cls, 0.0) + max(f32 / fp32_peak + i8 / int8_peak, nbytes / bw)
    return out


def estimate_ms(cost: GraphCost, profile: DeviceProfile, threads: int,
                calibration: dict[str, Any] | None | bool = True) -> dict[str, Any]:
    """Estimated time of ``cost`` on ``profile`` at ``threads`` threads, in ms, with its terms: each class's roofline
    time divided by its calibrated efficiency (``calibration``: True = the built-in file, False/None = the pure
    roofline, or a dict like the file's), plus a dispatch cost per node."""
    share = min(threads, profile.cores) / profile.cores
    fp32_peak = profile.peak_gflops_fp32 * 1e9 * share
    int8_peak = profile.peak_gops_int8 * 1e9 * share
    bw = profile.mem_bandwidth_gbs * 1e9
    compute_s = memory_s = 0.0
    for f32, i8, nbytes in cost.per_node:
        compute_s, memory_s = compute_s + f32 / fp32_peak + i8 / int8_peak, memory_s + nbytes / bw
    calib = load_calibration() if calibration is True else (calibration or None)
    by_class = roofline_by_class(cost, profile, threads)
    roofline_s = sum(by_class.values()) + cost.nodes * DISPATCH_US * 1e-6
    if calib is not None:
        eff = calib["efficiency"]
        dispatch_us = float(calib.get("dispatch_us", DISPATCH_US))
        total_s = sum(t / eff.get(c, 1.0) for c, t in by_class.items()) + cost.nodes * dispatch_us * 1e-6
    else:
        dispatch_us, total_s = DISPATCH_US, roofline_s
    return {"ms": total_s * 1e3, "roofline_ms": roofline_s * 1e3, "compute_ms": compute_s * 1e3,
            "memory_ms": memory_s * 1e3, "bound": "compute" if compute_s >= memory_s else "memory",
            "threads": threads, "dispatch_us_per_node": dispatch_us,
            "calibrated": None if calib is None else calib.get("source", "calibrated"),
            "flops": cost.flops, "int8_flops": cost.int8_flops,
            "bytes": cost.bytes, "nodes": cost.nodes, "unknown_shapes": cost.unknown_shapes}


@TRANSPORTS.register("estimated")
class EstimateTransport(Transport):
    """No device: a roofline estimate from the ONNX graph (or the GGUF's tensors) and the profile's peaks."""

    label = Label.ESTIMATED

    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if job.artifact.suffix == ".gguf":
            cost = gguf_cost(job.artifact)
            extra = {"unit": "ms per generated token", "context": GGUF_ESTIMATE_CONTEXT}
        elif job.artifact.suffix == ".onnx" and job.runtime != "onnxruntime-llm":
            cost = graph_cost(job.artifact)
        elif job.artifact.suffix == ".tflite":
            cost = tflite_cost(job.artifact)
        else:
            why = ("an ONNX decoder, whose shapes depend on the context" if job.runtime == "onnxruntime-llm"
                   else f"a {job.artifact.suffix} file")
            raise AgentError(f"{job.artifact.name}: estimates need an ONNX or TFLite vision graph or a GGUF "
                             f"language model (got {why})")
        est = estimate_ms(cost, self.device.profile, job.threads)
        ms = est["ms"]
        doc = {"schema": "edgedistill.agent/1", "artifact": job.artifact.name,
               "size_bytes": job.artifact.stat().st_size, "threads": job.threads, "batch": 1,
               "latency_ms": {k: ms for k in ("p50", "p90", "p99", "mean", "min")}, "estimate": est,
               "peak_rss_mb": None, **extra}
        return self.annotate(doc)
