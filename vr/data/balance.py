"""Class imbalance: per-class counts, inverse-frequency loss weights, a class-balanced sampler."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def class_counts(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    return torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=num_classes)[:num_classes]


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Loss weight per class, proportional to 1 / (its train images), normalised to mean 1 over
    the classes that have images; a class without train images gets 0 (it is never a target)."""
    n = class_counts(labels, num_classes).double()
    inv = torch.where(n > 0, 1.0 / n.clamp(min=1), torch.zeros_like(n))
    present = n > 0
    return (inv / inv[present].mean()).float()


class BalancedSampler(Sampler[int]):
    """Each epoch draws ``len(labels)`` indices with replacement, every class equally likely, as
    one list from a generator seeded by (seed, epoch) alone, so every rank draws the same list;
    rank r then takes items r, r + W, ... (the list is padded to a multiple of W by drawing more).

    So the epoch length per rank is that of DistributedSampler, and the draws depend only on
    (seed, epoch): a resumed run sees the batches an uninterrupted one would have seen.
    """

    def __init__(self, labels: Sequence[int], num_classes: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        counts = class_counts(labels, num_classes).double()
        per_class = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
        self.weights = per_class[torch.as_tensor(list(labels), dtype=torch.int64)]
        self.n = len(labels)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.num_samples = math.ceil(self.n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        """This epoch's draw over all ranks (before sharding)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.world_size
        return torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.num_samples
