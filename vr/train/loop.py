"""run(config): the epoch loop of `vr train`, in one process or as one DDP rank under torchrun.

Crash safety, in order of writes at the end of each epoch: best.pt and the --save-top-k files,
then last.pt (weights + full training state + the metrics history), then metrics.csv. Every
write is atomic, and a resumed run rebuilds metrics.csv from the history inside last.pt, so
``kill -9`` at any instant loses at most the epoch in progress and metrics.csv never repeats or
skips an epoch.
"""

from __future__ import annotations

import math
import random
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vr.data.balance import BalancedSampler, class_weights
from vr.data.dataset import ImageDataset
from vr.data.folders import scan_image_folder
from vr.train.augment import BatchMix, build_train_transform
from vr.errors import VrError
from vr.models.budget import check_param_budget, model_param_count, parse_param_budget
from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vr.models.factory import (check_model_name, count_params, create_model, format_params, head_param_names,
                               weights_preprocess_hints)
from vr.models.preprocess import Preprocess, resolve_preprocess
from vr.train import distributed as D
from vr.train.config import TrainConfig
from vr.util.manifest import write_manifest
from vr.train.logging import RunLogger, read_metrics
from vr.train.losses import FocalLoss
from vr.train.optim import LRSchedule, create_optimizer
from vr.util.console import console, err_console, info, warn
from vr.util.device import Runtime, resolve_runtime
from vr.util.io import check_writable_dir


@dataclass
class TrainResult:
    best_acc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    params: int
    skipped: int
    run_dir: Path
    stopped: str = ""  # "" (ran all epochs) or "early" (--patience)


class TrainingInterrupted(SystemExit):
    """Ctrl-C: the resume line is printed; exit 130 with nothing more (a SystemExit, so the CLI
    adds no second message)."""

    def __init__(self, agreed: bool = False):
        super().__init__(130)
        self.agreed = agreed  # all ranks stopped together at the same step


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


def resolve_run_preprocess(cfg: TrainConfig, model: nn.Module) -> Preprocess:
    hints = weights_preprocess_hints(cfg.pretrained)
    return resolve_preprocess(
        model=model, img_size=cfg.img_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
        mean=cfg.mean if cfg.mean is not None else hints.get("mean"),
        std=cfg.std if cfg.std is not None else hints.get("std"),
        crop_mode=cfg.crop_mode, border_crop=cfg.border_crop,
    )


def check_input_size(model: nn.Module, size: int, name: str) -> None:
    """Fail early, in one line, when the architecture cannot take this image size."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise VrError(f"model {name} cannot take {size}x{size} images: {str(e).splitlines()[0]}") from e
    finally:
        model.train(was_training)


class EpochSeeded(Dataset):
    """Sample ``i`` of epoch ``e`` is augmented from an RNG seeded by (seed, e, i).

    So the augmentation of every sample is the same whatever the worker count, the number of
    processes or where a run was resumed; the epoch lives in shared memory so persistent
    DataLoader workers see it change.
    """

    def __init__(self, ds: Dataset, seed: int):
        self.ds, self.seed = ds, seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        s = ((self.seed * 100_003 + int(self.epoch)) * 2_147_483_659 + i) % 2**63
        if torch.utils.data.get_worker_info() is not None:
            torch.manual_seed(s)
            return self.ds[i]
        with torch.random.fork_rng(devices=[]):  # keep the main process's stream (dropout) intact
            torch.manual_seed(s)
            return self.ds[i]


def _loader(ds, batch_size: int, rt: Runtime, workers: int, *, train: bool, sampler=None,
            generator=None) -> DataLoader:
    n = len(sampler) if sampler is not None else len(ds)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        generator=generator, pin_memory=rt.device.type == "cuda", drop_last=train and n > batch_size,
        persistent_workers=workers > 0, worker_init_fn=D.ignore_sigint_in_worker if workers > 0 else None,
    )


def build_criterion(cfg: TrainConfig, class_weights: torch.Tensor | None = None) -> nn.Module:
    """The training loss (hard or soft targets). Validation always uses plain cross-entropy."""
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, class_weights, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def evaluate(model: nn.Module, loader, criterion, rt: Runtime, channels_last: bool,
             ctx: D.DistContext | None = None) -> tuple[float, float]:
    """Mean loss and accuracy over the loader; under DDP each rank holds a disjoint shard and
    the sums (loss x n, correct, n) are added over ranks, so every image counts exactly once."""
    return evaluate_per_class(model, loader, criterion, rt, channels_last, ctx, 0)[:2]


def evaluate_per_class(model: nn.Module, loader, criterion, rt: Runtime, channels_last: bool,
                       ctx: D.DistContext | None, num_classes: int) -> tuple[float, float, list, list]:
    """evaluate(), plus the correct and total counts per true class (reduced over ranks too)."""
    model.eval()
    sums = torch.zeros(3 + 2 * num_classes, dtype=_acc_dtype(rt.device), device=rt.device)
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
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


# Kept for callers of the earlier name.
def evaluate_loss_acc(model, loader, criterion, rt: Runtime, channels_last: bool) -> tuple[float, float]:
    return evaluate(model, loader, criterion, rt, channels_last)


class TrainStep:
    """One batch: forward, loss, backward, and on the last micro-batch of an accumulation group
    the clip / optimizer / schedule / EMA updates. Loss, correct and non-finite counts are
    accumulated on the device, so a step never waits for the device."""

    def __init__(self, model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                 scaler: torch.amp.GradScaler, criterion: nn.Module, rt: Runtime, *, channels_last: bool = False,
                 clip_grad: float | None = None, ema=None, ddp: nn.Module | None = None, num_classes: int = 0,
                 mix: Callable | None = None):
        self.model, self.raw, self.opt, self.schedule = model, raw, optimizer, schedule
        self.scaler, self.criterion, self.rt = scaler, criterion, rt
        self.device = rt.device
        self.channels_last, self.clip_grad, self.ema, self.ddp = channels_last, clip_grad, ema, ddp
        self.mix = mix  # (x, y) -> (x, y): MixUp/CutMix on the device batch, or None
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
    return None, done


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console, transient=False)


def check_paths(cfg: TrainConfig) -> tuple[Path, Path]:
    """The checks that need no model or images: data layout, run folder, resume state."""
    data = Path(cfg.data)
    if not data.is_dir():
        raise VrError(f"data folder not found: {data}")
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise VrError(f"{data} has no {split}/ folder (expected {data}/train/<class>/ and {data}/val/<class>/)")
    run_dir = check_writable_dir(cfg.out)
    last_path = run_dir / "last.pt"
    if cfg.resume and not last_path.is_file():
        raise VrError(f"--resume: no {last_path} to resume from")
    if not cfg.resume and last_path.exists():
        raise VrError(f"{run_dir} already holds a run; add --resume to continue it or pick another --out")
    return data, run_dir


def check_budget(cfg: TrainConfig, data: Path) -> int | None:
    """--max-params, before any image is read: the model is counted on the meta device, for as
    many classes as data/train has class folders. Returns the budget (None: no budget)."""
    budget = parse_param_budget(cfg.max_params)
    if budget is None:
        return None
    n = sum(1 for d in (data / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if n:  # none: the scan reports it
        check_param_budget(model_param_count(cfg.model, n), budget, cfg.model)
    return budget


def load_init_checkpoint(cfg: TrainConfig) -> Checkpoint | None:
    """--init-from: a vr checkpoint of the same architecture (its weights start a new run)."""
    if cfg.init_from is None or cfg.resume:
        return None
    ck = load_checkpoint(cfg.init_from)
    if ck.model_name != cfg.model:
        raise VrError(f"--init-from {cfg.init_from} holds a {ck.model_name} but --model is {cfg.model}: "
                      "the architecture must match")
    return ck


def check_init_classes(ck: Checkpoint, classes) -> None:
    if tuple(ck.classes.names) == tuple(classes.names):
        return
    def names(xs: list[str]) -> str:
        return ", ".join(map(repr, xs[:5])) + (" ..." if len(xs) > 5 else "")

    only_ck = [c for c in ck.classes.names if c not in classes.names]
    only_data = [c for c in classes.names if c not in ck.classes.names]
    what = [f"only in the checkpoint: {names(only_ck)}"] if only_ck else []
    if only_data:
        what.append(f"only in train/: {names(only_data)}")
    if not what:
        what.append("same names in another order")
    raise VrError(f"--init-from {ck.path}: its classes differ from the data's ({'; '.join(what)})")


def _precheck_launch(cfg: TrainConfig) -> None:
    check_paths(cfg)
    check_model_name(cfg.model)
    check_budget(cfg, Path(cfg.data))
    load_init_checkpoint(cfg)
    dev = (cfg.device or "auto").lower()
    gpu = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    if dev == "mps":
        raise VrError("--nproc-per-node needs CUDA GPUs or the CPU; MPS is not supported")
    if gpu:
        if not torch.cuda.is_available():
            raise VrError(f"--device {cfg.device} was asked for but no CUDA GPU is visible to torch")
        if torch.cuda.device_count() < cfg.nproc_per_node:
            raise VrError(f"--nproc-per-node {cfg.nproc_per_node} needs as many GPUs; "
                          f"{torch.cuda.device_count()} visible")
    elif cfg.sync_bn:
        raise VrError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernels); drop it on CPU")


def _resume_hint(data: Path, run_dir: Path) -> str:
    args = f"train {shlex.quote(str(data))} --config {shlex.quote(str(run_dir / 'config.yaml'))} --resume"
    if D.under_torchrun() and not D.launched_by_vr():
        return f"Resume by rerunning your torchrun command with: -m vr.cli {args}"
    return f"Resume with: vr {args}"


_TOPK_RE = re.compile(r"^epoch(\d+)\.pt$")


def topk_name(epoch: int) -> str:
    return f"epoch{epoch:03d}.pt"


def update_top_k(top: list, k: int, epoch: int, acc: float) -> tuple[list, list[int], bool]:
    """Rank by val acc (ties: the earlier epoch stays). Returns (new list, evicted epochs, kept)."""
    ranked = sorted([list(t) for t in top] + [[acc, epoch]], key=lambda t: (-t[0], t[1]))
    keep, drop = ranked[:k], ranked[k:]
    return keep, [int(e) for _, e in drop], any(int(e) == epoch for _, e in keep)


def run(cfg: TrainConfig) -> TrainResult | None:
    """Train according to ``cfg``; write the run folder; return the summary.

    With ``nproc_per_node > 1`` outside torchrun, re-launch through torchrun and return None;
    a non-zero exit of the workers is raised as SystemExit (they have reported it already).
    """
    if cfg.nproc_per_node > 1 and not D.under_torchrun():
        _precheck_launch(cfg)
        code = D.launch(cfg)
        if code:
            raise SystemExit(code)
        return None

    import signal
    import threading

    restore_int = None
    if D.under_torchrun() and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        restore_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher ignores it for us
    ctx, device = D.setup(cfg.device)
    clean = False
    try:
        result = _run(cfg, ctx, device)
        clean = True
        return result
    except (TrainingInterrupted, D.AgreedError) as e:
        agreed = isinstance(e, D.AgreedError) or e.agreed
        code = e.code if isinstance(e, TrainingInterrupted) else 2
        if ctx.enabled and agreed:
            clean = True
            if D.launched_by_vr():
                # Exit 0 so torchrun does not report a "failure"; the launcher exits with `code`.
                if ctx.is_main:
                    if isinstance(e, VrError):
                        from rich.markup import escape

                        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
                    D.write_status(code)
                return None
            if not ctx.is_main:
                raise SystemExit(code) from None  # rank 0 reports it
        raise
    except VrError as e:
        if ctx.enabled and not ctx.is_main:
            D.unquiet(ctx)
            raise VrError(f"rank {ctx.rank}: {e}") from e
        raise
    except BaseException:
        D.unquiet(ctx)
        raise
    finally:
        D.teardown(ctx, clean)
        if restore_int is not None:
            signal.signal(signal.SIGINT, restore_int)


def _run(cfg: TrainConfig, ctx: D.DistContext, device: str) -> TrainResult:
    data, run_dir = ctx.on_main(lambda: check_paths(cfg))
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if ctx.enabled and cfg.nproc_per_node > 1 and cfg.nproc_per_node != ctx.local_world_size:
        warn(f"--nproc-per-node {cfg.nproc_per_node} is ignored under torchrun, which started "
             f"{ctx.local_world_size} processes on this machine")

    def load_resume():
        if not cfg.resume:
            return None
        ck = load_checkpoint(last_path)
        if ck.train_state is None:
            raise VrError(f"{last_path} holds no training state to resume from")
        if ck.model_name != cfg.model:
            raise VrError(f"{last_path} is a {ck.model_name} run but --model is {cfg.model}; resume with "
                          f"--config {run_dir / 'config.yaml'} to reuse the run's options")
        return ck

    resume_ckpt = ctx.agree(load_resume)
    budget = ctx.on_main(lambda: check_budget(cfg, data))
    init_ckpt = ctx.agree(lambda: load_init_checkpoint(cfg))

    seed_everything(cfg.seed)
    rt = resolve_runtime(device, cfg.amp, verbose=ctx.is_main)
    if ctx.enabled:
        info(f"DDP: {ctx.world_size} processes ({ctx.backend}) x batch {cfg.batch_size} = "
             f"global batch {ctx.world_size * cfg.batch_size}")

    def scan():
        train_scan = scan_image_folder(data / "train", verify=cfg.verify_images, what="train")
        if resume_ckpt is not None and resume_ckpt.classes != train_scan.classes:
            raise VrError(f"the classes in {data / 'train'} differ from those of the run being resumed")
        if init_ckpt is not None:
            check_init_classes(init_ckpt, train_scan.classes)
        val_scan = scan_image_folder(data / "val", classes=train_scan.classes, verify=cfg.verify_images,
                                     what="val", reference="train/")
        return train_scan, val_scan

    # Rank 0 scans (and decodes every image once); the others get the same lists.
    train_scan, val_scan = ctx.on_main(scan)
    classes = train_scan.classes
    skipped = len(train_scan.skipped) + len(val_scan.skipped)

    def build():
        if cfg.sync_bn and rt.device.type != "cuda":
            raise VrError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernels); drop it on CPU")
        from_ck = resume_ckpt is not None or init_ckpt is not None
        m = create_model(cfg.model, len(classes), cfg.drop_rate, pretrained=None if from_ck else cfg.pretrained)
        if resume_ckpt is not None:
            p = resume_ckpt.preprocess
        elif init_ckpt is not None:  # the weights were trained with its normalisation
            p = resolve_run_preprocess(cfg.replace(
                pretrained=None, mean=cfg.mean if cfg.mean is not None else init_ckpt.preprocess.mean,
                std=cfg.std if cfg.std is not None else init_ckpt.preprocess.std), m)
        else:
            p = resolve_run_preprocess(cfg, m)
        check_input_size(m, p.input_size, cfg.model)
        if resume_ckpt is not None:
            m.load_state_dict(resume_ckpt.state_dict)
        elif init_ckpt is not None:
            try:
                m.load_state_dict(init_ckpt.state_dict)
            except RuntimeError as e:
                raise VrError(f"--init-from {cfg.init_from} does not fit {cfg.model}: "
                              f"{str(e).splitlines()[-1].strip() or str(e).splitlines()[0]}") from e
        return m, p

    raw, pre = ctx.agree(build)
    n_params = count_params(raw)
    check_param_budget(n_params, budget, cfg.model)
    if init_ckpt is not None:
        info(f"initialised from {cfg.init_from} (epoch {init_ckpt.epoch}, input {init_ckpt.preprocess.input_size}px); "
             "a new run: fresh optimizer and schedule" + ("; --pretrained ignored" if cfg.pretrained else ""))
    info(f"{cfg.model}: {format_params(n_params)} params"
         f"{f' (budget {format_params(budget)})' if budget is not None else ''} · {len(classes)} classes · "
         f"{len(train_scan.samples)} train / {len(val_scan.samples)} val images · input {pre.input_size}px "
         f"(resize {pre.resize_size}, {pre.interpolation})")
    if cfg.sync_bn and not ctx.enabled:
        warn("--sync-bn only matters with several processes (--nproc-per-node); ignored")

    saved_cfg = cfg.replace(data=data.resolve(), resume=False)
    if ctx.is_main:
        classes.save(run_dir / "classes.json")
        saved_cfg.save_yaml(run_dir / "config.yaml")
        write_manifest(run_dir, saved_cfg.to_dict(), providers={
            "device": str(rt.device), "precision": str(rt.amp_dtype or "fp32"),
            "processes": ctx.world_size if ctx.enabled else 1, "backend": ctx.backend if ctx.enabled else None})

    train_ds = EpochSeeded(ImageDataset(train_scan.samples, build_train_transform(
        pre, cfg.aug, hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, blur=cfg.blur,
        color_jitter=cfg.color_jitter, translate=cfg.translate, random_erasing=cfg.random_erasing)), cfg.seed)
    val_ds = ImageDataset(val_scan.samples, pre)
    # The shuffle of epoch e is a permutation seeded by (seed, e) alone, in one process as in DDP
    # (a DataLoader generator would not do: persistent workers skip a draw from it after epoch 1).
    labels = [y for _, y in train_scan.samples]
    if cfg.balance == "sampler":
        # One class-balanced draw of the epoch, the same on every rank, then sharded rank::world.
        train_sampler = BalancedSampler(labels, len(classes), rank=ctx.rank, world_size=ctx.world_size,
                                        seed=cfg.seed * 100003)
    else:
        train_sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                           seed=cfg.seed * 100003)
    val_sampler = D.ShardSampler(len(val_ds), ctx.rank, ctx.world_size) if ctx.enabled else None
    # The loader's own generator only seeds worker processes (unused: see EpochSeeded); a private
    # one keeps it from drawing on the global RNG.
    train_loader = _loader(train_ds, cfg.batch_size, rt, cfg.workers, train=True, sampler=train_sampler,
                           generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = _loader(val_ds, cfg.batch_size, rt, cfg.workers, train=False, sampler=val_sampler)

    raw.to(rt.device)
    if cfg.channels_last:
        raw.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.enabled:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
    optimizer = create_optimizer(raw, cfg)  # all parameters, frozen or not (see param_groups)
    n_batches = len(train_loader)
    accum = cfg.accum_steps
    schedule = LRSchedule(optimizer, cfg, math.ceil(n_batches / accum))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    loss_weights = None
    if cfg.balance == "weights":
        loss_weights = class_weights(labels, len(classes))
        info("class weights (inverse frequency, mean 1): min "
             f"{loss_weights[loss_weights > 0].min().item():.3g}, max {loss_weights.max().item():.3g}")
    criterion = build_criterion(cfg, loss_weights) if loss_weights is not None else build_criterion(cfg)
    if isinstance(criterion, nn.Module):
        criterion.to(rt.device)
    # Validation: plain cross-entropy whatever the training loss, so val curves compare across runs.
    val_criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mixer = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixer = BatchMix(len(classes), mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mix_prob,
                         switch_prob=cfg.mix_switch_prob, seed=cfg.seed)
    head_names = head_param_names(raw) if cfg.freeze_epochs else set()
    # BatchNorm layers outside the head: in eval mode (running statistics fixed) while frozen.
    frozen_bn = [m for name, m in raw.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and not any(h.startswith(name + ".") for h in head_names)]

    trainable = [(n, p) for n, p in raw.named_parameters() if p.requires_grad and n not in head_names]

    def set_frozen(frozen: bool) -> None:
        for _, prm in trainable:
            prm.requires_grad_(not frozen)

    start_epoch, best_acc, best_epoch = 1, -1.0, 0
    history: list[dict] = []
    per_class_history: list[dict] = []
    top: list = []
    if resume_ckpt is not None:
        ts = resume_ckpt.train_state
        try:
            optimizer.load_state_dict(ts["optimizer"])
        except (ValueError, KeyError) as e:
            raise VrError(f"{last_path}: the saved optimizer state does not fit ({str(e).splitlines()[0]}); "
                          "was --backbone-lr-mult changed since the run started?") from e
        schedule.load_state_dict(ts["schedule"])
        scaler.load_state_dict(ts["scaler"])
        set_rng_state(ts["rng"])
        if ema is not None:
            if ts.get("ema") is not None:
                ema.module.load_state_dict(ts["ema"])
            else:
                warn(f"{last_path} has no EMA state (the run had no --ema); the EMA starts from the current weights")
        start_epoch = resume_ckpt.epoch + 1
        best_acc, best_epoch = float(ts["best_acc"]), int(ts["best_epoch"])
        top = [list(t) for t in ts.get("top_k", [])][: cfg.save_top_k]
        if "history" in ts:
            history = [dict(r) for r in ts["history"] if r["epoch"] <= resume_ckpt.epoch]
        else:  # checkpoints written before the history was kept in last.pt
            history = [r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] <= resume_ckpt.epoch]
        per_class_history = [dict(r) for r in ts.get("per_class", []) if r["epoch"] <= resume_ckpt.epoch]
        was_world = int(ts.get("world_size", 1))
        if was_world != ctx.world_size:
            warn(f"resuming with {ctx.world_size} process(es) where the run used {was_world}: the batches, "
                 "and so the results, differ from an uninterrupted run")
        info(f"resuming {run_dir} after epoch {resume_ckpt.epoch} (best val acc {best_acc:.4f} at epoch {best_epoch})")
        if ctx.is_main:  # top-k files from epochs that last.pt does not know (a crash between writes)
            keep = {int(e) for _, e in top}
            for f in run_dir.glob("epoch*.pt"):
                m = _TOPK_RE.match(f.name)
                if m and int(m.group(1)) not in keep:
                    f.unlink(missing_ok=True)

    def wrap() -> tuple[nn.Module, nn.Module | None]:
        """DDP (and torch.compile) around ``raw``. DDP registers the parameters that require a
        gradient when it is built, so it is rebuilt when --freeze-epochs ends."""
        ddp_, model_ = None, raw
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ddp_ = model_ = DDP(raw, device_ids=[ctx.local_rank] if rt.device.type == "cuda" else None)
        if cfg.compile:
            model_ = torch.compile(model_)
        return model_, ddp_

    frozen = start_epoch <= cfg.freeze_epochs
    if frozen:
        set_frozen(True)
    if cfg.freeze_epochs:
        if cfg.freeze_epochs >= cfg.epochs:
            warn(f"--freeze-epochs {cfg.freeze_epochs} >= --epochs {cfg.epochs}: the backbone is never "
                 "unfrozen, only the classifier head trains (a linear probe)")
        if frozen:
            info(f"training the classifier head only ({len(head_names)} tensors) until epoch "
                 f"{min(cfg.freeze_epochs, cfg.epochs)}: backbone frozen, its BatchNorm in eval mode")
    train_model, ddp = wrap()
    step = TrainStep(train_model, raw, optimizer, schedule, scaler, criterion, rt, channels_last=cfg.channels_last,
                     clip_grad=cfg.clip_grad, ema=ema, ddp=ddp, num_classes=len(classes))
    logger = RunLogger(run_dir, cfg.tensorboard, history, per_class_history, classes.names) if ctx.is_main else None
    eval_model = ema.module if ema is not None else raw

    def weights(module: nn.Module) -> dict:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    def make_ckpt(epoch: int, metrics: dict, state_dict: dict, train_state: dict | None) -> Checkpoint:
        return Checkpoint(
            model_name=cfg.model, num_classes=len(classes), drop_rate=cfg.drop_rate, state_dict=state_dict,
            classes=classes, preprocess=pre, config=saved_cfg.to_dict(), epoch=epoch, metrics=metrics,
            train_state=train_state)

    # A step reads the device only every `check_every` steps (on CPU reading is free).
    check_every = 1 if rt.device.type == "cpu" else 25
    interrupt = D.GracefulInterrupt()
    progress = _progress() if ctx.is_main else _NullProgress()
    t_start = time.perf_counter()
    saved_epoch = start_epoch - 1  # the epoch last.pt holds
    epoch = start_epoch - 1
    stopped = ""
    stop_msg, agreed = "", False
    try:
        with interrupt, progress:
            D.register_worker()  # from here on Ctrl-C is handled: the launcher may pass it to us
            for epoch in range(start_epoch, cfg.epochs + 1):
                if cfg.patience and best_epoch and epoch - 1 - best_epoch >= cfg.patience:
                    stopped = "early"
                    epoch -= 1
                    break
                t0 = time.perf_counter()
                # Shuffling depends only on (seed, epoch), each sample's augmentation on (seed, epoch,
                # index) and the rest of the RNG (dropout) is reseeded here: a resumed run sees exactly
                # the batches of an uninterrupted one, whatever the number of loader workers.
                train_sampler.set_epoch(epoch)
                train_ds.set_epoch(epoch)
                torch.manual_seed(cfg.seed * 100003 + epoch + 7919 * ctx.rank)
                if frozen and epoch > cfg.freeze_epochs:
                    frozen = False
                    set_frozen(False)
                    train_model, ddp = wrap()
                    step.model, step.ddp = train_model, ddp
                    info(f"epoch {epoch}: backbone unfrozen, training the whole model")
                mixing = mixer is not None and epoch <= cfg.epochs - cfg.mix_off_epochs
                if mixer is not None:
                    mixer.set_epoch(epoch, ctx.rank)
                    if not mixing and epoch == cfg.epochs - cfg.mix_off_epochs + 1:
                        info(f"epoch {epoch}: MixUp/CutMix off for the last {cfg.mix_off_epochs} epoch(s)")
                step.mix = mixer if mixing else None
                train_model.train()
                if frozen:
                    for m in frozen_bn:
                        m.eval()
                task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=n_batches, stats="")

                def on_check(done: int) -> None:
                    if ctx.is_main:
                        s = max(1, step.seen)
                        progress.update(task, completed=done, stats=f"loss {step.loss_sum.item() / s:.4f} "
                                        f"acc {step.correct.item() / s:.3f} lr {schedule.lr:.2e}")

                halted, done = train_epoch(step, train_loader, n_batches, accum=accum, ctx=ctx, interrupt=interrupt,
                                           check_every=check_every, on_check=on_check)
                if halted == "nonfinite":
                    keep = (f"{last_path} keeps epoch {saved_epoch}, the last good one" if saved_epoch >= 1
                            else "before any epoch completed, so there is no checkpoint")
                    raise D.AgreedError(
                        f"loss became nan or inf at epoch {epoch} (by step {done} of {n_batches}); stopped, {keep}. "
                        f"Try a lower --lr, --clip-grad, or --no-amp")
                if halted == "interrupt":
                    stop_msg, agreed = _interrupt_message(epoch, saved_epoch, last_path, data, run_dir, True), True
                    break

                n_cls = len(classes)
                tr = torch.zeros(3 + 2 * n_cls, dtype=_acc_dtype(rt.device), device=rt.device)
                tr[0], tr[1], tr[2] = step.loss_sum, step.correct, step.seen
                tr[3:] = step.per_class
                tr = ctx.all_reduce_sum(tr).tolist()
                train_loss_sum, train_correct, seen = tr[:3]
                ctx.broadcast_module_state(eval_model)
                val_loss, val_acc, val_cc, val_ct = evaluate_per_class(
                    eval_model, val_loader, val_criterion, rt, cfg.channels_last, ctx, n_cls)
                if not math.isfinite(val_loss):  # the epoch's last updates blew the weights up: do not save them
                    keep = (f"{last_path} keeps epoch {saved_epoch}, the last good one" if saved_epoch >= 1
                            else "before any epoch completed, so there is no checkpoint")
                    raise D.AgreedError(
                        f"val loss became nan or inf at epoch {epoch} (the weights diverged); stopped, {keep}. "
                        f"Try a lower --lr, --clip-grad, or --no-amp")
                per_class = {"epoch": epoch, "train_correct": tr[3:3 + n_cls], "train_total": tr[3 + n_cls:],
                             "val_correct": val_cc, "val_total": val_ct}
                lr_now = schedule.lr
                backbone_lr_now = schedule.backbone_lr
                schedule.epoch_end(val_loss)
                row = {"epoch": epoch, "train_loss": train_loss_sum / max(1.0, seen),
                       "train_acc": train_correct / max(1.0, seen), "val_loss": val_loss, "val_acc": val_acc,
                       "lr": lr_now, "seconds": time.perf_counter() - t0}
                if cfg.backbone_lr_mult != 1.0:
                    row["backbone_lr"] = backbone_lr_now
                progress.update(task, completed=n_batches,
                                stats=f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} · "
                                      f"val loss {val_loss:.4f} acc {val_acc:.4f}")
                if ctx.is_main:
                    console.print(worst_classes_line(per_class, classes.names), soft_wrap=True, highlight=False,
                                  markup=False)
                metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                improved = val_acc > best_acc
                if improved:
                    best_acc, best_epoch = val_acc, epoch
                evicted: list[int] = []
                kept = False
                if cfg.save_top_k:
                    top, evicted, kept = update_top_k(top, cfg.save_top_k, epoch, val_acc)
                if ctx.is_main:
                    best_weights = weights(eval_model) if (improved or kept) else None
                    if improved:
                        save_checkpoint(best_path, make_ckpt(epoch, metrics, best_weights, None))
                    if kept:
                        save_checkpoint(run_dir / topk_name(epoch), make_ckpt(epoch, metrics, best_weights, None))
                    train_state = {
                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state(), "best_acc": best_acc,
                        "best_epoch": best_epoch, "history": logger.rows[:] + [row], "top_k": top,
                        "per_class": [r for r in logger.per_class if r["epoch"] < epoch] + [per_class],
                        "world_size": ctx.world_size, "ema": weights(ema.module) if ema is not None else None,
                    }
                    # last.pt after best.pt and the top-k files, before metrics.csv: it is the record
                    # a resume starts from (metrics.csv is rebuilt from its history).
                    save_checkpoint(last_path, make_ckpt(epoch, metrics, weights(raw), train_state))
                    saved_epoch = epoch
                    logger.log_per_class(per_class)
                    logger.log(row)
                    for e in evicted:
                        (run_dir / topk_name(e)).unlink(missing_ok=True)
                else:
                    saved_epoch = epoch
                # Ctrl-C during validation or saving: the epoch is complete, stop here together.
                if ctx.any_flags([int(interrupt.requested)])[0]:
                    stop_msg, agreed = _interrupt_message(epoch, saved_epoch, last_path, data, run_dir, False), True
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        stop_msg, agreed = _interrupt_message(epoch, saved_epoch, last_path, data, run_dir, True), False
    finally:
        if logger is not None:
            logger.close()
    if stop_msg:
        console.print(stop_msg, soft_wrap=True, highlight=False, markup=False)
        raise TrainingInterrupted(agreed=agreed)
    seconds = time.perf_counter() - t_start
    if stopped == "early":
        info(f"early stop: val acc has not improved for {cfg.patience} epochs "
             f"(best {best_acc:.4f} at epoch {best_epoch})")
    result = TrainResult(best_acc, best_epoch, epoch, seconds, n_params, skipped, run_dir, stopped)
    info(f"[bold]done[/bold]: best val acc {best_acc:.4f} at epoch {best_epoch} · {seconds:.1f}s · "
         f"{format_params(n_params)} params · {skipped} skipped files · {run_dir}")
    return result


def worst_classes_line(record: dict, names, k: int = 5) -> str:
    """The k classes with the lowest val accuracy, with their train accuracy (under MixUp/CutMix:
    against the dominant target)."""
    ranked = sorted((record["val_correct"][c] / record["val_total"][c], c)
                    for c in range(len(names)) if record["val_total"][c])
    parts = []
    for acc, c in ranked[:k]:
        tn = record["train_total"][c]
        train = f"{record['train_correct'][c] / tn:.2f}" if tn else "-"
        parts.append(f"{names[c]} {acc:.2f}/{train}")
    return f"  epoch {record['epoch']} worst classes (val/train acc): {' · '.join(parts)}"


def _interrupt_message(epoch: int, saved_epoch: int, last_path: Path, data: Path, run_dir: Path,
                       during: bool) -> str:
    where = f"during epoch {epoch}" if during else f"after epoch {epoch}"
    if saved_epoch >= 1:
        return f"interrupted {where}; {last_path} holds epoch {saved_epoch}. {_resume_hint(data, run_dir)}"
    return f"interrupted {where}; no epoch completed, nothing to resume"
