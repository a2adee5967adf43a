"""An ImageFolder of real photographs, made offline: RGB crops of scikit-learn's two sample photos.

scikit-learn (a dependency) ships ``china.jpg`` and ``flower.jpg`` (427×640 JPEG photographs). Each photo's left
and right halves are one class each (4 classes); every image is a random ``size``×``size`` crop of its half, saved
as PNG. Used by the int8 remedy-ladder tests and, from the command line, for a by-hand ``edgedistill run``::

    python -m tests.photo_fixtures OUT [--per-class 120] [--size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_photo_folder(root: Path, per_class: int = 120, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png``: ``per_class`` random ``size``×``size`` RGB crops for each of 4 classes
    (left/right half of each scikit-learn sample photo). Deterministic for a given ``seed``; returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    for name, img in zip(("china", "flower"), photos.images, strict=True):
        h, w, _ = img.shape
        for side, (x0, x1) in (("left", (0, w // 2)), ("right", (w // 2, w))):
            d = root / f"{name}-{side}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                y = int(rng.integers(0, h - size + 1))
                x = int(rng.integers(x0, x1 - size + 1))
                Image.fromarray(img[y:y + size, x:x + size]).save(d / f"{i:04d}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=120)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_photo_folder(a.out, a.per_class, a.size, a.seed))


if __name__ == "__main__":
    main()
