"""Int8 quantisation of ONNX graphs through ``onnxruntime.quantization``, shared by every pipeline kind.

- ``int8_dynamic``: weights int8, activations quantised at run time (MatMul-heavy graphs, LLM decoders).
- ``int8_static_u8s8`` / ``int8_static_s8s8``: static QDQ, activations uint8 / int8, weights int8 per channel,
  calibrated (MinMax, percentile or entropy) on inputs the caller provides.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from edgedistill.core.fileio import atomic_path
from edgedistill.runtimes.inputs import ArrayFeed
from edgedistill.toolchain.progress import make_progress

#: calibration methods (onnxruntime.quantization.CalibrationMethod) and the options each takes
CALIBRATION = {"minmax": ("MinMax", {}), "percentile": ("Percentile", {"CalibPercentile": 99.99}),
               "entropy": ("Entropy", {})}


def first_conv(model_path: Path) -> str | None:
    """The name of the graph's first Conv node (the stem that sees raw inputs), if any."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    return next((n.name for n in m.graph.node if n.op_type == "Conv"), None)


def last_linear(model_path: Path) -> str | None:
    """The name of the graph's last Gemm/MatMul/Conv node (the classifier head), if any."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    return next((n.name for n in reversed(m.graph.node) if n.op_type in ("Gemm", "MatMul", "Conv")), None)


def equal_batch(n: int, most: int = 8) -> int:
    """The largest batch size up to ``most`` that divides ``n`` images into batches of one size.

    onnxruntime's histogram calibrators (percentile, entropy) keep one output array per batch and ``np.asarray``
    the list (``HistogramCollector.collect_value`` / ``collect_absolute_value``), which needs every batch to have
    the same shape. Fixed batches of 8 left a smaller last batch whenever ``n`` was not a multiple of 8, and they
    raised "inhomogeneous shape after 1 dimensions" (measured: the 335 training images of a 480-photo ImageFolder
    gave 41 batches of 8 and one of 7). MinMax reduces each batch on its own and never noticed. The batching does
    not change the result (the same values are collected: identical scales and zero points at batch 1 and 8 for
    each method); batch 1 for every count was measured 1.2-2.4x slower, hence the largest divisor.
    """
    if n < 1:
        raise ValueError(f"equal_batch: needs at least one calibration image, got {n}")
    return next(b for b in range(min(n, most), 0, -1) if n % b == 0)


def quantize(fp32_path: Path, variant: str, path: Path, calibration: np.ndarray | None = None,
             input_name: str = "input", reduce_range: bool = False, exclude: tuple[str, ...] = (),
             method: str = "minmax") -> Path:
    """Quantise ``fp32_path`` into ``path`` as ``variant``; static variants need ``calibration`` batches of the
    graph's input ``input_name`` (images ``(N, 3, S, S)``).

    ``reduce_range`` quantises static weights to 7 bits, for x86 CPUs without VNNI where 8-bit u8×s8 products
    saturate (:func:`edgedistill.devices.profile.int8_saturates`); the results are then the same on every ISA.
    ``exclude`` names nodes left in float (e.g. the stem convolution, which sees raw pixels). ``method`` picks the
    static calibration: ``minmax`` (the default), ``percentile`` (99.99: outliers do not stretch the range) or
    ``entropy`` (KL-optimal thresholds).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        with atomic_path(path) as tmp:
            if variant == "int8_dynamic":
                quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
            elif variant in ("int8_static_u8s8", "int8_static_s8s8"):
                if calibration is None:
                    raise ValueError(f"{variant}: static quantisation needs calibration images")
                act = QuantType.QUInt8 if variant == "int8_static_u8s8" else QuantType.QInt8
                # batches of one size: a short last batch crashed the percentile/entropy calibrators (equal_batch)
                feed = ArrayFeed(calibration, input_name, batch=equal_batch(len(calibration)))
                with make_progress() as prog:
                    task = prog.add_task(f"calibrating {variant}", total=len(feed), status="")
                    feed.on_next = lambda: prog.advance(task)
                    calib_name, calib_opts = CALIBRATION[method]
                    quantize_static(str(pre), str(tmp), feed, quant_format=QuantFormat.QDQ, activation_type=act,
                                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                                    nodes_to_exclude=list(exclude),
                                    calibrate_method=getattr(CalibrationMethod, calib_name),
                                    extra_options=calib_opts)
            else:
                raise ValueError(f"unknown ONNX variant {variant!r}")
    return path
