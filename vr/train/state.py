"""The training state: what last.pt holds besides the weights, saved and restored exactly.

``TrainState`` is the loop's bookkeeping (best epoch, the metrics and per-class history, the top-k
ranking); ``snapshot`` adds the optimizer, schedule, scaler, RNG and EMA state for last.pt, and
``restore`` puts all of it back, so a resumed run continues the uninterrupted one exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vr.errors import VrError, first_line
from vr.util.console import info, warn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_weights(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


@dataclass
class TrainState:
    epoch: int = 0  # the last completed epoch (the one last.pt holds)
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # metrics.csv rows, epochs 1..epoch
    per_class: list[dict] = field(default_factory=list)  # per_class.csv records
    top: list = field(default_factory=list)  # [[val_acc, epoch], ...] of the --save-top-k files

    def snapshot(self, optimizer, schedule, scaler, ema, world_size: int) -> dict:
        """last.pt's train_state for the epoch just completed."""
        return {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "history": list(self.history), "top_k": self.top, "per_class": list(self.per_class),
                "world_size": world_size, "ema": cpu_weights(ema.module) if ema is not None else None}


def restore(ckpt, *, optimizer, schedule, scaler, ema, save_top_k: int, world_size: int, run_dir: Path) -> TrainState:
    """Put last.pt's training state back into the optimizer, schedule, scaler, RNG and EMA; the
    bookkeeping comes back as a TrainState."""
    from vr.train.logging import read_metrics

    ts, last = ckpt.train_state, run_dir / "last.pt"
    try:
        optimizer.load_state_dict(ts["optimizer"])
    except (ValueError, KeyError) as e:
        raise VrError(f"{last}: the saved optimizer state does not fit ({first_line(e)}); "
                      "was --backbone-lr-mult changed since the run started?") from e
    schedule.load_state_dict(ts["schedule"])
    scaler.load_state_dict(ts["scaler"])
    set_rng_state(ts["rng"])
    if ema is not None:
        if ts.get("ema") is not None:
            ema.module.load_state_dict(ts["ema"])
        else:
            warn(f"{last} has no EMA state (the run had no --ema); the EMA starts from the current weights")
    done = ckpt.epoch
    if "history" in ts:
        history = [dict(r) for r in ts["history"] if r["epoch"] <= done]
    else:  # checkpoints written before the history was kept in last.pt
        history = [r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] <= done]
    state = TrainState(epoch=done, best_acc=float(ts["best_acc"]), best_epoch=int(ts["best_epoch"]), history=history,
                       per_class=[dict(r) for r in ts.get("per_class", []) if r["epoch"] <= done],
                       top=[list(t) for t in ts.get("top_k", [])][:save_top_k])
    was_world = int(ts.get("world_size", 1))
    if was_world != world_size:
        warn(f"resuming with {world_size} process(es) where the run used {was_world}: the batches, "
             "and so the results, differ from an uninterrupted run")
    info(f"resuming {run_dir} after epoch {done} (best val acc {state.best_acc:.4f} at epoch {state.best_epoch})")
    return state
