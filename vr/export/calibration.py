"""Calibration images for INT8: a class-balanced sample of a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vr.errors import VrError


def calibration_sample(root: str | Path, count: int) -> list[Path]:
    """A class-balanced sample (round robin over the classes) of an ImageFolder, or ``count``
    images spread over a flat folder."""
    from vr.data.classes import natural_key
    from vr.data.folders import list_images, scan_flat_folder

    root = Path(root)
    if not root.is_dir():
        raise VrError(f"calibration folder not found: {root}")
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: natural_key(d.name))
    if not dirs:
        paths, _ = scan_flat_folder(root, verify=True, what="calibration")
        idx = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
        return [paths[i] for i in sorted(set(idx.tolist()))]
    per_class = [list_images(d) for d in dirs]
    rng = np.random.default_rng(0)
    for files in per_class:
        rng.shuffle(files)
    out: list[Path] = []
    depth = 0
    while len(out) < count and any(depth < len(f) for f in per_class):
        out += [f[depth] for f in per_class if depth < len(f)][: count - len(out)]
        depth += 1
    if not out:
        raise VrError(f"calibration folder {root} holds no images")
    return out
