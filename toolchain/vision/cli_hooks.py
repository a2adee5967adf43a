"""What the vision kind adds to the generic CLI (:mod:`edgedistill.toolchain.cli`): ``export --model`` (any local
timm model + checkpoint, no run needed) and the table of exported artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_model(out: Path, model: str, checkpoint: Path | None, num_classes: int | None, image_size: int,
                 data: str, formats: str | None, variants: str | None, layout: str | None,
                 repro: Path | None, log: Any) -> list[dict[str, Any]]:
    """``edgedistill export --model``: export ``model`` with ``checkpoint`` into ``out``; calibration and parity on
    ``data`` (``digits`` or an image folder). A failed TFLite conversion with ``repro`` writes the smallest failing
    submodule and a repro script there (``log`` says so) before the error."""
    from edgedistill.toolchain.vision.export.tflite import ConversionError
    from edgedistill.toolchain.vision.recipe import DataConfig, ExportConfig
    from edgedistill.toolchain.vision.stages import export_config, export_local

    if checkpoint is None or num_classes is None:
        raise ValueError("--model needs --checkpoint FILE and --num-classes N")
    data_cfg = (DataConfig(image_size=image_size) if data == "digits"
                else DataConfig(kind="imagefolder", root=Path(data), image_size=image_size))
    cfg = export_config(ExportConfig(), formats, variants, layout)
    try:
        return export_local(model, checkpoint, num_classes, cfg, data_cfg, out)
    except ConversionError as err:
        if repro is None:
            raise
        log(f"conversion failed; searching for the smallest failing submodule → {repro}")
        written = err.write_repro(repro)
        raise ValueError(f"{err}\nrepro: {written.with_name('repro.py')} (details in {written})") from err


def artifact_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The exported artifacts as a table: header and rows (rich markup)."""
    body = []
    for a in records:
        p = a["parity"]
        body.append([a["file"], a["format"], a["variant"], f"{p['max_abs_diff']:.2e}", f"{p['top1_agreement']:.4f}",
                     "ok" if p["ok"] else f"[red]fails {p['criterion']}[/red]"])
    return ["artifact", "format", "variant", "max |Δ|", "top-1 agreement", "parity"], body
