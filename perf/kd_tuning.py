"""Does distillation pay on this data, and does tuning help? Baseline vs untuned KD vs tuned KD (validation and
test), which student ships, the int8 parity before and after the exporter's remedies, and the tuning's wall time,
on the digits demo data and on a generated image-folder of shapes; printed as Markdown for benchmarks/RESULTS.md.

    .venv/bin/python perf/kd_tuning.py [--trials 8] [--out /tmp/kd-tuning]

Each data set runs the pipeline's distill and export stages (`edgedistill distill` / `export`) on a recipe derived
from the built-in vit-to-mobilenet one with shorter budgets and `distill.tune.trials` set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml


def make_shapes(root: Path, per_class: int = 200, size: int = 64, seed: int = 0) -> Path:
    """An image folder of 4 classes (circle, square, triangle, cross) drawn at random size, position, rotation and
    colour over noisy, textured backgrounds: 800 crops of 64×64 like a small photo set, made here."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    for cls in ("circle", "square", "triangle", "cross"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = rng.integers(0, 255, 3)
            arr = np.clip(bg + rng.normal(0, 20, (size, size, 3)) + 20 * np.sin(
                np.linspace(0, rng.uniform(2, 12), size))[None, :, None], 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            d = ImageDraw.Draw(img)
            r = rng.uniform(12, 26)
            cx, cy = rng.uniform(r, size - r, 2)
            col = tuple(int(c) for c in rng.integers(0, 255, 3))
            if cls == "circle":
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
            elif cls == "square":
                a = rng.uniform(0, np.pi / 2)
                pts = [(cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)) for k in range(4)]
                d.polygon(pts, fill=col)
            elif cls == "triangle":
                a = rng.uniform(0, 2 * np.pi)
                pts = [(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3))
                       for k in range(3)]
                d.polygon(pts, fill=col)
            else:
                w = max(2, r / 3)
                d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
                d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
            img.save(root / cls / f"{i:04d}.png")
    return root


def make_photo_crops(root: Path, per_class: int = 120, size: int = 64, seed: int = 0) -> Path:
    """An image folder of real photographs: random crops (48-112 px, resized to ``size``, random flips) of the two
    photos scikit-learn ships (``load_sample_images``: a Chinese temple, a flower), four classes = the left and
    right halves of each photo. 480 crops, as in the issue that asked for this table."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    for p, photo in enumerate(photos):
        h, w, _ = photo.shape
        for half in (0, 1):
            cls = root / f"photo{p}-{'left' if half == 0 else 'right'}"
            cls.mkdir(parents=True, exist_ok=True)
            x0, x1 = (0, w // 2) if half == 0 else (w // 2, w)
            for i in range(per_class):
                s = int(rng.integers(48, 113))
                x = int(rng.integers(x0, max(x0 + 1, x1 - s)))
                y = int(rng.integers(0, h - s))
                crop = Image.fromarray(photo[y:y + s, x:x + s]).resize((size, size))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop.save(cls / f"{i:04d}.png")
    return root


def recipe(name: str, data: dict, trials: int, teacher: dict | None = None) -> dict:
    return {
        "name": name, "seed": 0, "data": data,
        "teacher": teacher or {"name": "vit_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8},
                               "train": {"epochs": 10, "batch_size": 64, "lr": 0.001, "augment": True}},
        "student": {"name": "mobilenetv3_small_100"},
        "distill": {"mode": "offline", "train": {"epochs": 15, "batch_size": 64, "lr": 0.005},
                    "response": {"temperature": 4.0, "alpha": 0.9},
                    "tune": {"trials": trials, "temperature": [1.0, 8.0], "alpha": [0.3, 0.99],
                             "lr": [0.001, 0.02]}},
        "export": {"formats": ["onnx", "tflite"],
                   "onnx": {"variants": ["fp32", "int8_static_u8s8", "int8_static_s8s8", "int8_dynamic"]},
                   "tflite": {"variants": ["fp32", "int8_static", "int8_dynamic"]}},
    }


def run(out: Path, rec: dict) -> tuple[dict, float]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(rec))
    cli = [sys.executable, "-m", "edgedistill.toolchain.cli"]
    t0 = time.perf_counter()
    for cmd in ("distill", "export"):
        subprocess.run([*cli, cmd, "--out", str(out)], check=True)
    return json.loads((out / "manifest.json").read_text()), time.perf_counter() - t0


def rows(name: str, out: Path, manifest: dict) -> list[str]:
    info = manifest["stages"]["distill"]["info"]
    shipped = manifest["stages"]["export"]["info"]
    lines = []
    for role in ("baseline", "kd", "kd-tuned"):
        m = json.loads((out / "students" / f"{role}.json").read_text())
        lines.append(f"| {name} | {role} | {m['val_accuracy']:.4f} | {m['test_accuracy']:.4f} | "
                     f"{'**shipped**' if shipped['shipped'] == role else ''} |")
    t = info["tuning"]
    done = sum(x["state"] == "complete" for x in t["trials"])
    pruned = sum(x["state"] == "pruned" for x in t["trials"])
    lines.append(f"| {name} | tuning | {done} trials completed, {pruned} pruned, {t['tune_seconds']:.0f} s | "
                 f"chosen {t['chosen']} | |")
    return lines


def parity_rows(name: str, out: Path) -> list[str]:
    lines = []
    for a in json.loads((out / "export" / "artifacts.json").read_text()):
        att = (a.get("quantization") or {}).get("attempts")
        if not att:
            continue
        first, last = att[0], att[-1]
        lines.append(f"| {name} | {a['name']} | {first['top1_agreement']:.4f} ({'ok' if first['ok'] else 'fails'}) | "
                     f"{last['top1_agreement']:.4f} ({'ok' if last['ok'] else 'fails'}) | {last['remedy']} | "
                     f"{len(att)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("/tmp/kd-tuning"))
    ap.add_argument("--sets", default="digits,photos", help="comma-separated: digits, photos, shapes")
    a = ap.parse_args()
    folder = {"shapes": lambda: make_shapes(a.out / "shapes-data"),
              "photos": lambda: make_photo_crops(a.out / "photo-data")}
    sets = {"digits": ("digits (labelled_per_class 20)",
                       lambda: {"kind": "digits", "image_size": 32, "labelled_per_class": 20}),
            "photos": ("photo crops (scikit-learn's 2 photos, 4 classes, 480 crops)",
                       lambda: {"kind": "imagefolder", "root": str(folder["photos"]()), "image_size": 32,
                                "val_fraction": 0.15, "test_fraction": 0.25, "labelled_per_class": 30}),
            "shapes": ("shapes (generated, 800 crops)",
                       lambda: {"kind": "imagefolder", "root": str(folder["shapes"]()), "image_size": 32,
                                "val_fraction": 0.15, "test_fraction": 0.25, "labelled_per_class": 30})}
    table, parity, walls = [], [], []
    for key in a.sets.split(","):
        name, data = sets[key]
        out = a.out / f"run-{key}"
        manifest, wall = run(out, recipe(f"tuning-{key}", data(), a.trials))
        table += rows(name, out, manifest)
        parity += parity_rows(name, out)
        walls.append(f"{name}: distill + export {wall / 60:.1f} min")
    print("| data | student | val accuracy | test accuracy | |\n|---|---|---|---|---|")
    print("\n".join(table))
    print("\n| data | int8 artifact | first attempt (top-1 vs PyTorch) | kept | remedy kept | attempts |")
    print("|---|---|---|---|---|---|")
    print("\n".join(parity))
    print("\n" + "; ".join(walls))


if __name__ == "__main__":
    main()
