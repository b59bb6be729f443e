"""The run folder's checkpoints: best.pt, the --save-top-k epochNNN.pt files and last.pt, written in
the crash-safe order (best and top-k, then last.pt, then the logs; evicted top-k files last), so
a kill at any instant leaves a metrics.csv that lists no epoch last.pt lacks and no top-k file
that last.pt does not know."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vr.models.checkpoint import Checkpoint, save_checkpoint
from vr.util.phases import mark

_TOPK_RE = re.compile(r"^epoch(\d+)\.pt$")


def topk_name(epoch: int) -> str:
    return f"epoch{epoch:03d}.pt"


def update_top_k(top: list, k: int, epoch: int, acc: float) -> tuple[list, list[int], bool]:
    """Rank by val acc (ties: the earlier epoch stays). Returns (new list, evicted epochs, kept)."""
    ranked = sorted([list(t) for t in top] + [[acc, epoch]], key=lambda t: (-t[0], t[1]))
    keep, drop = ranked[:k], ranked[k:]
    return keep, [int(e) for _, e in drop], any(int(e) == epoch for _, e in keep)


@dataclass
class Checkpointer:
    """Writes one epoch's checkpoints; ``make(epoch, metrics, weights, train_state)`` builds a
    Checkpoint of this run."""

    run_dir: Path
    make: Callable[..., Checkpoint]
    save_top_k: int = 0

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    def forget_unknown_top_k(self, top: list) -> None:
        """On resume: delete top-k files of epochs last.pt does not know (a crash between writes)."""
        keep = {int(e) for _, e in top}
        for f in self.run_dir.glob("epoch*.pt"):
            m = _TOPK_RE.match(f.name)
            if m and int(m.group(1)) not in keep:
                f.unlink(missing_ok=True)

    def save_epoch(self, epoch: int, metrics: dict, *, improved: bool, kept: bool, eval_weights: Callable[[], dict],
                   train_weights: dict, train_state: dict, after_last: Callable[[], None], evicted: list[int]) -> None:
        """best.pt (if improved) and the epoch's top-k file (if kept), then last.pt, then
        ``after_last()`` (the logs), then the evicted top-k files."""
        if improved or kept:
            weights = eval_weights()
            if improved:
                save_checkpoint(self.best, self.make(epoch, metrics, weights, None))
            if kept:
                save_checkpoint(self.run_dir / topk_name(epoch), self.make(epoch, metrics, weights, None))
        # last.pt after best.pt and the top-k files, before metrics.csv: it is the record a resume
        # starts from (metrics.csv is rebuilt from its history).
        mark("best.pt / top-k")
        save_checkpoint(self.last, self.make(epoch, metrics, train_weights, train_state))
        mark("last.pt")
        after_last()
        for e in evicted:
            (self.run_dir / topk_name(e)).unlink(missing_ok=True)
