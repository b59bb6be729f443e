"""Checkpoints: one self-describing file (model spec, weights, classes, preprocessing, config).

Everything in a checkpoint is a tensor, number, string, list or dict, so it loads with
``torch.load(weights_only=True)``: a shared checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vr
from vr.data.classes import ClassMap
from vr.errors import VrError, first_line
from vr.models.preprocess import Preprocess
from vr.util.io import atomic_path, file_sha256  # noqa: F401  (file_sha256: re-exported for callers)

FORMAT = "vr-checkpoint"
FORMAT_VERSION = 1


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True and a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise VrError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise VrError(
            f"refusing to load {path}: it holds Python objects other than weights, which could run "
            f"code (only weights_only checkpoints are loaded). {first_line(e)}"
        ) from e
    except Exception as e:
        raise VrError(f"cannot read checkpoint {path}: {type(e).__name__}: {first_line(e)}") from e


@dataclass
class Checkpoint:
    model_name: str
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    classes: ClassMap
    preprocess: Preprocess
    drop_rate: float = 0.0
    config: dict = field(default_factory=dict)
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    train_state: dict | None = None  # optimizer, scheduler, scaler, EMA, RNG: only in last.pt
    path: Path | None = None

    def to_dict(self) -> dict:
        d = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vr_version": vr.__version__,
            "model": {"name": self.model_name, "num_classes": self.num_classes, "drop_rate": self.drop_rate},
            "state_dict": self.state_dict,
            "classes": list(self.classes.names),
            "preprocess": self.preprocess.to_dict(),
            "config": self.config,
            "epoch": self.epoch,
            "metrics": self.metrics,
        }
        if self.train_state is not None:
            d["train_state"] = self.train_state
        return d


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write atomically: a crash mid-write, or a full disk, leaves the previous file intact."""
    with atomic_path(path) as tmp:
        # Through a Python file, so that a failed write (a full disk) is an OSError, which
        # atomic_path reports in one line; torch's C++ writer turns it into an opaque
        # "[enforce fail at inline_container.cc]" RuntimeError, raised while handling the OSError.
        with open(tmp, "wb") as f:
            try:
                torch.save(ckpt.to_dict(), f)
            except RuntimeError as e:
                cause = e.__context__
                while cause is not None and not isinstance(cause, OSError):
                    cause = cause.__context__
                if cause is None:
                    raise
                raise cause from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    d = safe_torch_load(path, map_location)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise VrError(f"{path} is not a vr checkpoint (use --pretrained for plain weight files)")
    try:
        m = d["model"]
        return Checkpoint(
            model_name=m["name"],
            num_classes=int(m["num_classes"]),
            drop_rate=float(m.get("drop_rate", 0.0)),
            state_dict=d["state_dict"],
            classes=ClassMap(tuple(d["classes"])),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            config=d.get("config", {}),
            epoch=int(d.get("epoch", 0)),
            metrics=d.get("metrics", {}),
            train_state=d.get("train_state"),
            path=Path(path),
        )
    except (KeyError, TypeError) as e:
        raise VrError(f"{path} is a damaged vr checkpoint (missing {e})") from e


