"""One training step, one epoch of them, and validation: the primitives the fit loop drives.

Loss, correct and non-finite counts are kept on the device, so a step never waits for it; under
DDP the sums are all-reduced, so every image counts exactly once.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from vr.train import distributed as D
from vr.train.config import TrainConfig
from vr.train.losses import FocalLoss
from vr.train.optim import LRSchedule
from vr.util.device import Runtime
from vr.util.phases import mark


def build_criterion(cfg: TrainConfig, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The training loss (hard or soft targets). Validation always uses plain cross-entropy."""
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, class_weights, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def evaluate_per_class(model: nn.Module, loader, criterion, rt: Runtime, channels_last: bool,
                       ctx: D.DistContext | None, num_classes: int,
                       prepare: Callable | None = None) -> tuple[float, float, list, list]:
    """Mean loss and accuracy over the loader, and the correct and total counts per true class;
    under DDP each rank holds a disjoint shard and the sums (loss x n, correct, n, per class) are
    added over ranks, so every image counts exactly once. ``prepare`` normalises a uint8 batch on
    the device (Preprocess.normalize)."""
    model.eval()
    sums = torch.zeros(3 + 2 * num_classes, dtype=_acc_dtype(rt.device), device=rt.device)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if prepare is not None and x.dtype == torch.uint8:
                x = prepare(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                logits = model(x)
            hit = logits.argmax(1) == y
            sums[0] += criterion(logits.float(), y) * len(y)
            sums[1] += hit.sum()
            sums[2] += len(y)
            if num_classes:
                _count_per_class(sums[3:], y, hit, num_classes)
    if ctx is not None:
        ctx.all_reduce_sum(sums)
    v = sums.tolist()
    loss_sum, correct, total = v[:3]
    return (loss_sum / max(1.0, total), correct / max(1.0, total), v[3:3 + num_classes],
            v[3 + num_classes:])


def _count_per_class(out: torch.Tensor, y: torch.Tensor, hit: torch.Tensor, num_classes: int) -> None:
    """out[:C] += correct per class, out[C:] += samples per class."""
    out[:num_classes].index_add_(0, y, hit.to(out.dtype))
    out[num_classes:].index_add_(0, y, torch.ones_like(y, dtype=out.dtype))


class TrainStep:
    """One batch: forward, loss, backward, and on the last micro-batch of an accumulation group
    the clip / optimizer / schedule / EMA updates. Loss, correct and non-finite counts are
    accumulated on the device, so a step never waits for the device."""

    def __init__(self, model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 scaler: torch.amp.GradScaler, criterion: nn.Module, rt: Runtime, *, channels_last: bool = False,
                 clip_grad: float | None = None, ema=None, ddp: nn.Module | None = None, num_classes: int = 0,
                 mix: Callable | None = None, prepare: Callable | None = None):
        self.model, self.raw, self.opt, self.schedule = model, raw, optimizer, schedule
        self.scaler, self.criterion, self.rt = scaler, criterion, rt
        self.device = rt.device
        self.channels_last, self.clip_grad, self.ema, self.ddp = channels_last, clip_grad, ema, ddp
        self.mix = mix  # (x, y) -> (x, y): MixUp/CutMix on the device batch, or None
        self.prepare = prepare  # uint8 batch -> normalised float32 on the device (augment.TrainNormalize), or None
        self.num_classes = num_classes
        # clip_grad_norm_ skips parameters without a gradient (frozen ones)
        self.params = list(raw.parameters())
        self.loss_sum = torch.zeros((), dtype=_acc_dtype(self.device), device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.bad = torch.zeros((), dtype=torch.int64, device=self.device)
        self.per_class = torch.zeros(2 * num_classes, dtype=_acc_dtype(self.device), device=self.device)
        self.seen = 0

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad.zero_()
        self.per_class.zero_()
        self.seen = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, update: bool = True, div: int = 1) -> None:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.prepare is not None:
            x = self.prepare(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.ddp is not None and not update:
            with self.ddp.no_sync():  # accumulate locally; gradients are all-reduced on the last micro-batch
                loss, logits = self._forward_backward(x, y, div)
        else:
            loss, logits = self._forward_backward(x, y, div)
        if update:
            if self.clip_grad:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            self.schedule.step()
            if self.ema is not None:
                self.ema.update(self.raw, step=self.schedule.step_num)
        with torch.no_grad():
            loss = loss.detach()
            n = y.shape[0]
            # Under MixUp/CutMix a prediction counts as right when it is the dominant target.
            target = y.argmax(1) if y.is_floating_point() else y
            hit = logits.detach().argmax(1) == target
            self.loss_sum.add_(loss, alpha=n)
            self.correct.add_(hit.sum())
            if self.num_classes:
                _count_per_class(self.per_class, target, hit, self.num_classes)
            self.bad.add_(torch.isfinite(loss).logical_not())
        self.seen += n

    def _forward_backward(self, x, y, div):
        with self.rt.autocast():
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        self.scaler.scale(loss / div if div > 1 else loss).backward()
        return loss, logits


class _NoInterrupt:
    requested = False


def train_epoch(step: TrainStep, batches: Iterable, n_batches: int, *, accum: int = 1,
                ctx: D.DistContext | None = None, interrupt=None, check_every: int = 1,
                on_check: Callable[[int], None] | None = None) -> tuple[str | None, int]:
    """Run one epoch of ``step`` over ``batches``. Every ``check_every`` steps (every step on CPU,
    where reading a number costs nothing) the non-finite-loss count is read, and under DDP the
    ranks agree on stopping (Ctrl-C on any rank, a bad loss on any rank) at the same step.

    Returns (None | "nonfinite" | "interrupt", steps run).
    """
    ctx = ctx or D.DistContext()
    interrupt = interrupt or _NoInterrupt()
    step.reset()
    done = 0
    for i, (x, y) in enumerate(batches):
        if i == 0:
            mark("first batch")
        g0 = i - i % accum
        step(x, y, update=(i + 1) % accum == 0 or i + 1 == n_batches, div=min(accum, n_batches - g0))
        done = i + 1
        check = done % check_every == 0 or done == n_batches
        stop, bad = ctx.any_flags([int(interrupt.requested), int(step.bad.item()) if check else 0])
        if check and on_check is not None:
            on_check(done)
        if bad:
            return "nonfinite", done
        if stop:
            return "interrupt", done
    mark("train steps")
    return None, done
