"""Distillation strategies side by side on the demo data, at equal student steps: CE-only, response KD, deep mutual
learning, a 2-teacher ensemble (different seeds) and factor transfer (alone and on top of response KD); validation
and test accuracy, training seconds, and the teachers' own accuracies; printed as Markdown for
benchmarks/RESULTS.md.

    .venv/bin/python perf/strategies_vision.py [--out /tmp/strategies-vision] [--teacher-epochs N] [--epochs N]

Every run is the pipeline's own distill stage (`edgedistill distill --out DIR`) on the built-in vit-to-mobilenet
recipe (loaded with `load_recipe`: its data, teacher, student and distill.train), changed only where a strategy
needs it. The first run trains the teacher and the CE-only, response-KD and mutual students; the others load that
teacher (`teacher.checkpoint`) so every strategy distils from the same one; the ensemble run trains its second
teacher (the same config, seed + 1). Every student gets `distill.train` (same epochs, batch, steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from edgedistill.toolchain.recipe import load_recipe

#: factor transfer's weight here: Kim et al.'s beta = 500 on an element-mean L1 is 500 / (C*H*W) on the per-sample L1
#: this project uses; the demo teacher's blocks.3 factors are 192 × 4 × 4
FACTOR_WEIGHT = round(500 / (192 * 4 * 4), 3)


def base(teacher_epochs: int | None, epochs: int | None) -> dict[str, Any]:
    r = load_recipe("vit-to-mobilenet").model_dump(mode="json")
    r["distill"]["tune"] = {"trials": 0}
    if teacher_epochs:
        r["teacher"]["train"]["epochs"] = teacher_epochs
    if epochs:
        r["distill"]["train"]["epochs"] = epochs
    return r


def variants(r: dict[str, Any], teacher: Path) -> dict[str, dict[str, Any]]:
    """name → recipe; the first trains the teacher the others load."""

    def derived(name: str, **distill: Any) -> dict[str, Any]:
        d = json.loads(json.dumps(r))
        d["name"], d["teacher"]["checkpoint"] = name, str(teacher)
        d["distill"].update(baseline=False, **distill)
        return d

    first = json.loads(json.dumps(r))
    first["name"] = "strategies-response-dml"
    first["distill"]["mutual"] = {"enabled": True}
    ensemble = derived("strategies-ensemble")
    second = {k: v for k, v in r["teacher"].items() if k != "checkpoint"}
    ensemble["ensemble"] = {"teachers": [{**second, "seed": r["seed"] + 1}]}
    return {
        "response-dml": first,
        "ensemble": ensemble,
        "factor": derived("strategies-factor", response={**r["distill"]["response"], "alpha": 0.0},
                          factor={"weight": FACTOR_WEIGHT}),
        "response+factor": derived("strategies-response-factor", factor={"weight": FACTOR_WEIGHT}),
    }


def distill(out: Path, rec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    out.mkdir(parents=True, exist_ok=True)
    rec["distill"]["cache_dir"] = str(out.parent / "cache")
    (out / "recipe.yaml").write_text(yaml.safe_dump(rec, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgedistill.toolchain.cli", "distill", "--out", str(out)], check=True)
    return json.loads((out / "manifest.json").read_text()), time.perf_counter() - t0


def student(out: Path, role: str) -> dict[str, Any]:
    return json.loads((out / "students" / f"{role}.json").read_text())


def row(name: str, m: dict[str, Any], note: str = "") -> str:
    return (f"| {name} | {m['steps']} | {m['val_accuracy']:.4f} | {m['test_accuracy']:.4f} | "
            f"{m['train_seconds']:.0f} | {note} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/strategies-vision"))
    ap.add_argument("--teacher-epochs", type=int, default=None, help="default: the built-in recipe's")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the built-in recipe's)")
    a = ap.parse_args()
    r = base(a.teacher_epochs, a.epochs)
    first_out = a.out / "response-dml"
    recipes = variants(r, first_out / "teacher" / "teacher.safetensors")
    rows, walls, outs = [], [], {}
    for name, rec in recipes.items():
        outs[name] = a.out / name
        _, wall = distill(outs[name], rec)
        walls.append(f"{name} {wall / 60:.1f} min")
    t = json.loads((first_out / "teacher" / "metrics.json").read_text())
    ens = json.loads((outs["ensemble"] / "teacher" / "metrics.json").read_text())["ensemble"]
    mutual = student(first_out, "mutual")
    members = ", ".join(f"{m['test_accuracy']:.4f}" for m in ens["members"])
    para = json.loads((outs["factor"] / "manifest.json").read_text())["stages"]["distill"]["info"]["paraphraser"]
    rows += [row("CE-only (labelled subset)", student(first_out, "baseline")),
             row("response KD (T 4, α 0.9)", student(first_out, "kd")),
             row("deep mutual learning (peer = the teacher, co-trained)", mutual,
                 f"peer after co-training: test {mutual['peer']['test_accuracy']:.4f}"),
             row("response KD on a 2-teacher ensemble (seeds 0, 1; equal weights)", student(outs["ensemble"], "kd"),
                 f"ensemble test {ens['test_accuracy']:.4f} (teachers {members})"),
             row(f"factor transfer + CE (α 0, weight {FACTOR_WEIGHT})", student(outs["factor"], "kd"),
                 f"paraphraser MSE {para['reconstruction_first']:.3g} → {para['reconstruction_last']:.3g}"),
             row(f"response KD + factor transfer (weight {FACTOR_WEIGHT})", student(outs["response+factor"], "kd"))]
    print(f"Teacher {r['teacher']['name']}: test accuracy {t['test_accuracy']:.4f}; student {r['student']['name']}, "
          f"{r['distill']['train']['epochs']} epochs each.\n")
    print("| student | steps | val accuracy | test accuracy | train s | |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nwall (distill stage, incl. teacher training/caching): " + "; ".join(walls))


if __name__ == "__main__":
    main()
