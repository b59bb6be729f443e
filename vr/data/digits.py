"""`vr data digits`: scikit-learn's real handwritten digits as a competition-style folder."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from vr.errors import VrError
from vr.util.io import atomic_path, atomic_write_bytes


def write_digits(out: str | Path, size: int = 32, val_frac: float = 0.15, test_frac: float = 0.15,
                 seed: int = 0, overwrite: bool = False) -> dict[str, int]:
    """Write OUT/train/<digit>/, OUT/val/<digit>/, OUT/test/ (flat) and OUT/test_labels.csv.

    1,797 real 8x8 scans, upscaled to ``size`` px greyscale PNGs, split per class.
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise VrError(f"{out} already exists and is not empty (use --overwrite)")
        for sub in ("train", "val", "test"):
            shutil.rmtree(out / sub, ignore_errors=True)
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    truth: list[tuple[str, str]] = []
    test_items: list[tuple[np.ndarray, str]] = []
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_val, n_test = round(len(idx) * val_frac), round(len(idx) * test_frac)
        parts = {"val": idx[:n_val], "test": idx[n_val:n_val + n_test], "train": idx[n_val + n_test:]}
        for split in ("train", "val"):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in parts[split]:
                _save(images[i], folder / f"{i:04d}.png", size)
                counts[split] += 1
        test_items += [(images[i], str(label)) for i in parts["test"]]
    # Test images get shuffled anonymous names so that nothing leaks the label.
    (out / "test").mkdir(parents=True, exist_ok=True)
    for n, j in enumerate(rng.permutation(len(test_items))):
        img, label = test_items[j]
        name = f"{n:04d}"
        _save(img, out / "test" / f"{name}.png", size)
        truth.append((name, label))
        counts["test"] += 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_name", "label"])
    w.writerows(truth)
    atomic_write_bytes(out / "test_labels.csv", buf.getvalue().encode())
    return counts


def _save(arr: np.ndarray, path: Path, size: int) -> None:
    img = Image.fromarray(arr, mode="L").resize((size, size), Image.BICUBIC)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
