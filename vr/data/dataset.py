"""A map-style dataset over (path, label) samples."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from vr.data.images import UnreadableImage, load_rgb
from vr.util.console import warn


class ImageDataset(Dataset):
    def __init__(self, samples: list[tuple[Path, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = load_rgb(path)
        except UnreadableImage as e:
            # Only reachable with --no-verify-images: keep the epoch going with a neighbour.
            warn(f"skipping unreadable image {e}")
            return self[(i + 1) % len(self.samples)]
        return self.transform(img), label
