"""Optimizers, the learning-rate schedule (warmup + main schedule, per optimizer step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from vr.models.factory import head_param_names
from vr.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-D tensors).

    With ``backbone_lr_mult != 1`` the classifier head and the rest (the backbone) get groups of
    their own: head groups first at ``lr``, then backbone groups at ``lr * backbone_lr_mult``
    (param_groups[0] stays the head's, the lr logged as ``lr``). Every parameter is included,
    frozen or not, so the groups (and a saved optimizer state) do not depend on --freeze-epochs.
    """
    split = backbone_lr_mult != 1.0
    head = head_param_names(model) if split else set()
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        part = "head" if name in head else "backbone"
        buckets.setdefault((part if split else "all", p.ndim > 1), []).append(p)
    groups = []
    for part in (("head", "backbone") if split else ("all",)):
        for decay in (True, False):
            params = buckets.get((part, decay), [])
            if split and not params:
                continue
            g = {"params": params, "weight_decay": weight_decay if decay else 0.0}
            if split:
                g["lr"] = lr * (1.0 if part == "head" else backbone_lr_mult)
                g["name"] = part if decay else f"{part}_no_decay"
            groups.append(g)
    return groups


def _fused_ok(model: nn.Module) -> bool:
    """Fused (single-kernel) optimizer steps exist for float parameters on CPU and CUDA. They do
    the same update as torch's default per-tensor loop, with far fewer kernel launches."""
    params = list(model.parameters())
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) \
        and len({p.device for p in params}) == 1


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Create after the model is on its device (the fused kernels are picked per device). A
    config whose lr defaults are still unset gets them from TrainConfig.resolved."""
    if cfg.lr is None or cfg.backbone_lr_mult is None:
        cfg = cfg.resolved(1)
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.backbone_lr_mult)
    fused = True if _fused_ok(model) else None
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


class LRSchedule:
    """Learning rate = base lr x multiplier(step), set before every optimizer step.

    ``plateau`` drops the multiplier by ``gamma`` after ``patience`` epochs without a lower val
    loss. All state is plain numbers, so it resumes exactly from a checkpoint.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.opt = optimizer
        self.kind = cfg.sched
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = cfg.epochs * self.steps_per_epoch
        self.warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        if self.kind == "onecycle" and self.warmup == 0:
            self.warmup = int(0.3 * self.total)
        self.warmup = min(self.warmup, max(0, self.total - 1))
        self.min_ratio = cfg.min_lr_ratio
        self.step_size, self.gamma, self.patience = cfg.step_size, cfg.gamma, cfg.plateau_patience
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_num = 0
        self.plateau_scale, self.best_loss, self.bad_epochs = 1.0, math.inf, 0
        self._apply()

    def multiplier(self, step: int) -> float:
        if self.kind == "onecycle":
            # Cosine rise from 1/25 to the peak, cosine fall to 1/2.5e4 (torch's OneCycleLR defaults).
            lo, end = 1 / 25, 1 / 25e3
            if step < self.warmup:
                t = step / max(1, self.warmup)
                return lo + (1 - lo) * (1 - math.cos(math.pi * t)) / 2
            t = (step - self.warmup) / max(1, self.total - self.warmup)
            return end + (1 - end) * (1 + math.cos(math.pi * min(1.0, t))) / 2
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            t = (step - self.warmup) / max(1, self.total - self.warmup)
            return self.min_ratio + (1 - self.min_ratio) * (1 + math.cos(math.pi * min(1.0, t))) / 2
        if self.kind == "step":
            return self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
        if self.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def _apply(self) -> None:
        m = self.multiplier(self.step_num)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * m

    def step(self) -> None:
        """Call after each optimizer step."""
        self.step_num += 1
        self._apply()

    def epoch_end(self, val_loss: float) -> None:
        if self.kind != "plateau" or self.step_num < self.warmup:
            return
        if val_loss < self.best_loss - 1e-4:
            self.best_loss, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_scale *= self.gamma
                self.bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The head's lr (the only one without --backbone-lr-mult)."""
        return self.opt.param_groups[0]["lr"]

    @property
    def backbone_lr(self) -> float:
        return self.opt.param_groups[-1]["lr"]

    def state_dict(self) -> dict:
        return {"step_num": self.step_num, "plateau_scale": self.plateau_scale,
                "best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, d: dict) -> None:
        self.step_num = int(d["step_num"])
        self.plateau_scale, self.best_loss, self.bad_epochs = float(d["plateau_scale"]), float(d["best_loss"]), int(d["bad_epochs"])
        self._apply()
