"""run(config): the epoch loop of `vr train`."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vr.data.dataset import ImageDataset
from vr.data.folders import ClassMap, scan_image_folder
from vr.data.transforms import build_train_transform
from vr.errors import VrError
from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vr.models.factory import count_params, create_model, format_params, weights_preprocess_hints
from vr.models.preprocess import Preprocess, resolve_preprocess
from vr.train.config import TrainConfig
from vr.train.logging import RunLogger, read_metrics
from vr.train.optim import LRSchedule, create_optimizer
from vr.util.console import console, info, warn
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
    if state.get("cuda") and torch.cuda.is_available():
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
        raise VrError(f"model {name} cannot take {size}x{size} images: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)


def _loader(ds, batch_size, shuffle, workers, rt: Runtime, generator=None) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        pin_memory=rt.device.type == "cuda", drop_last=shuffle and len(ds) > batch_size,
        persistent_workers=workers > 0,
    )


def evaluate_loss_acc(model, loader, criterion, rt: Runtime, channels_last: bool) -> tuple[float, float]:
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                logits = model(x)
            loss_sum += criterion(logits.float(), y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    return loss_sum / max(1, total), correct / max(1, total)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console, transient=False)


def run(cfg: TrainConfig) -> TrainResult:
    """Train according to ``cfg``; write the run folder; return the summary."""
    data = Path(cfg.data)
    if not data.is_dir():
        raise VrError(f"data folder not found: {data}")
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise VrError(f"{data} has no {split}/ folder (expected {data}/train/<class>/ and {data}/val/<class>/)")
    run_dir = check_writable_dir(cfg.out)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    resume_ckpt = None
    if cfg.resume:
        if not last_path.is_file():
            raise VrError(f"--resume: no {last_path} to resume from")
        resume_ckpt = load_checkpoint(last_path)
        if resume_ckpt.train_state is None:
            raise VrError(f"{last_path} holds no training state to resume from")
    elif last_path.exists():
        raise VrError(f"{run_dir} already holds a run; add --resume to continue it or pick another --out")

    seed_everything(cfg.seed)
    rt = resolve_runtime(cfg.device, cfg.amp)

    train_scan = scan_image_folder(data / "train", verify=cfg.verify_images, what="train")
    classes = train_scan.classes
    if resume_ckpt is not None and resume_ckpt.classes != classes:
        raise VrError(f"the classes in {data / 'train'} differ from those of the run being resumed")
    val_scan = scan_image_folder(data / "val", classes=classes, verify=cfg.verify_images, what="val",
                                 reference="train/")
    skipped = len(train_scan.skipped) + len(val_scan.skipped)

    model = create_model(cfg.model, len(classes), cfg.drop_rate,
                         pretrained=None if resume_ckpt else cfg.pretrained)
    pre = resume_ckpt.preprocess if resume_ckpt else resolve_run_preprocess(cfg, model)
    check_input_size(model, pre.input_size, cfg.model)
    n_params = count_params(model)
    info(f"{cfg.model}: {format_params(n_params)} params · {len(classes)} classes · "
         f"{len(train_scan.samples)} train / {len(val_scan.samples)} val images · input {pre.input_size}px "
         f"(resize {pre.resize_size}, {pre.interpolation})")

    classes.save(run_dir / "classes.json")
    cfg.replace(data=data.resolve()).save_yaml(run_dir / "config.yaml")

    train_ds = ImageDataset(train_scan.samples, build_train_transform(
        pre, cfg.aug, hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, blur=cfg.blur,
        color_jitter=cfg.color_jitter, translate=cfg.translate, random_erasing=cfg.random_erasing))
    val_ds = ImageDataset(val_scan.samples, pre)
    gen = torch.Generator()
    train_loader = _loader(train_ds, cfg.batch_size, True, cfg.workers, rt, gen)
    val_loader = _loader(val_ds, cfg.batch_size, False, cfg.workers, rt)

    model.to(rt.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, cfg)
    schedule = LRSchedule(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    start_epoch, best_acc, best_epoch = 1, -1.0, 0
    history: list[dict] = []
    if resume_ckpt is not None:
        ts = resume_ckpt.train_state
        model.load_state_dict(resume_ckpt.state_dict)
        optimizer.load_state_dict(ts["optimizer"])
        schedule.load_state_dict(ts["schedule"])
        scaler.load_state_dict(ts["scaler"])
        set_rng_state(ts["rng"])
        start_epoch = resume_ckpt.epoch + 1
        best_acc, best_epoch = float(ts["best_acc"]), int(ts["best_epoch"])
        history = [r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] <= resume_ckpt.epoch]
        info(f"resuming {run_dir} after epoch {resume_ckpt.epoch} (best val acc {best_acc:.4f} at epoch {best_epoch})")
    logger = RunLogger(run_dir, cfg.tensorboard, history)

    def make_ckpt(epoch: int, metrics: dict, train_state: dict | None) -> Checkpoint:
        return Checkpoint(
            model_name=cfg.model, num_classes=len(classes), drop_rate=cfg.drop_rate,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            classes=classes, preprocess=pre, config=cfg.replace(data=data.resolve()).to_dict(),
            epoch=epoch, metrics=metrics, train_state=train_state)

    t_start = time.perf_counter()
    epoch = start_epoch - 1
    try:
        with _progress() as progress:
            for epoch in range(start_epoch, cfg.epochs + 1):
                t0 = time.perf_counter()
                # Each epoch's shuffling and augmentation depend only on (seed, epoch): a resumed
                # run sees exactly the batches the uninterrupted run would have seen.
                gen.manual_seed(cfg.seed * 100003 + epoch)
                torch.manual_seed(cfg.seed * 100003 + epoch)
                model.train()
                task = progress.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(train_loader), stats="")
                seen, correct, loss_sum = 0, 0, 0.0
                for step, (x, y) in enumerate(train_loader):
                    x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with rt.autocast():
                        logits = model(x)
                        loss = criterion(logits.float(), y)
                    if not torch.isfinite(loss):
                        raise VrError(
                            f"loss became {loss.item()} at epoch {epoch}, step {step + 1}; stopped. "
                            f"{'last.pt holds epoch ' + str(epoch - 1) if epoch > 1 else 'no epoch completed'}; "
                            f"try a lower --lr or --no-amp")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.step()
                    n = len(y)
                    seen += n
                    loss_sum += loss.item() * n
                    correct += (logits.argmax(1) == y).sum().item()
                    progress.update(task, advance=1,
                                    stats=f"loss {loss_sum / seen:.4f} acc {correct / seen:.3f} lr {schedule.lr:.2e}")
                val_loss, val_acc = evaluate_loss_acc(model, val_loader, criterion, rt, cfg.channels_last)
                lr_now = schedule.lr
                schedule.epoch_end(val_loss)
                row = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                       "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now,
                       "seconds": time.perf_counter() - t0}
                progress.update(task, stats=f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} · "
                                            f"val loss {val_loss:.4f} acc {val_acc:.4f}")
                metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                improved = val_acc > best_acc
                if improved:
                    best_acc, best_epoch = val_acc, epoch
                    save_checkpoint(best_path, make_ckpt(epoch, metrics, None))
                train_state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                               "scaler": scaler.state_dict(), "rng": rng_state(),
                               "best_acc": best_acc, "best_epoch": best_epoch}
                # last.pt is written after best.pt and before metrics.csv: whatever instant a crash
                # hits, metrics.csv never lists an epoch that last.pt does not hold.
                save_checkpoint(last_path, make_ckpt(epoch, metrics, train_state))
                logger.log(row)
    except KeyboardInterrupt:
        logger.close()
        done = epoch - 1
        console.print(f"interrupted during epoch {epoch}; {last_path} holds epoch {done}. "
                      f"Resume with: vr train {data} --out {run_dir} --resume" if done >= 1 else
                      f"interrupted during epoch {epoch}; no epoch completed, nothing to resume")
        raise
    finally:
        logger.close()
    seconds = time.perf_counter() - t_start
    result = TrainResult(best_acc, best_epoch, epoch, seconds, n_params, skipped, run_dir)
    console.print(f"[bold]done[/bold]: best val acc {best_acc:.4f} at epoch {best_epoch} · {seconds:.1f}s · "
                  f"{format_params(n_params)} params · {skipped} skipped files · {run_dir}")
    return result
