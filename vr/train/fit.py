"""fit(run): the epoch loop of a TrainRun (vr.train.setup), in one process or as one DDP rank.

Per epoch: reseed and set the phase (--freeze-epochs, MixUp off), train, validate, then the
checkpoints and logs in the crash-safe order of vr.train.checkpointer. Ctrl-C or SIGTERM stops
every rank at the same step with last.pt intact and one resume line; a non-finite loss stops the
run the same way without overwriting the last good checkpoint.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vr.train import distributed as D
from vr.train.checkpointer import update_top_k
from vr.train.freeze import wrap_model
from vr.train.setup import TrainRun
from vr.train.state import cpu_weights
from vr.train.step import _acc_dtype, evaluate_per_class, train_epoch
from vr.util.console import console, info
from vr.util.fmt import params as format_params
from vr.util.phases import mark


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
    """Ctrl-C or SIGTERM: the resume line is printed; exit 130 or 143 (128 + the signal) with
    nothing more (a SystemExit, so the CLI adds no second message)."""

    def __init__(self, code: int = 130, agreed: bool = False):
        super().__init__(code)
        self.agreed = agreed  # all ranks stopped together at the same step


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


def resume_hint(data: Path, run_dir: Path) -> str:
    args = f"train {shlex.quote(str(data))} --config {shlex.quote(str(run_dir / 'config.yaml'))} --resume"
    if D.under_torchrun() and not D.launched_by_vr():
        return f"Resume by rerunning your torchrun command with: -m vr.cli {args}"
    return f"Resume with: vr {args}"


def interrupt_message(run: TrainRun, epoch: int, during: bool, signal_name: str = "") -> str:
    where = f"during epoch {epoch}" if during else f"after epoch {epoch}"
    if signal_name and signal_name != "SIGINT":  # Ctrl-C needs no name; SIGTERM came from elsewhere
        where = f"by {signal_name} {where}"
    if run.state.epoch >= 1:
        return (f"interrupted {where}; {run.checkpointer.last} holds epoch {run.state.epoch}. "
                f"{resume_hint(run.data, run.run_dir)}")
    return f"interrupted {where}; no epoch completed, nothing to resume"


def diverged(run: TrainRun, what: str) -> D.AgreedError:
    keep = (f"{run.checkpointer.last} keeps epoch {run.state.epoch}, the last good one" if run.state.epoch >= 1
            else "before any epoch completed, so there is no checkpoint")
    return D.AgreedError(f"{what}; stopped, {keep}. Try a lower --lr, --clip-grad, or --no-amp")


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


def start_epoch(run: TrainRun, epoch: int) -> None:
    """Shuffling depends only on (seed, epoch), each sample's augmentation on (seed, epoch, index),
    and the rest of the RNG (dropout) is reseeded here: a resumed run sees exactly the batches of
    an uninterrupted one, whatever the number of loader workers. Then the epoch's phase."""
    cfg, step = run.cfg, run.step
    run.loaders.set_epoch(epoch)
    torch.manual_seed(cfg.seed * 100003 + epoch + 7919 * run.ctx.rank)
    if run.freeze.frozen and not run.freeze.frozen_at(epoch):
        run.freeze.set(False)
        step.model, step.ddp = wrap_model(run.raw, run.ctx, run.rt.device.type, cfg.compile)
        info(f"epoch {epoch}: backbone unfrozen, training the whole model")
    mixer = run.opt.mixer
    mixing = mixer is not None and epoch <= cfg.epochs - cfg.mix_off_epochs
    if mixer is not None:
        mixer.set_epoch(epoch, run.ctx.rank)
        if not mixing and epoch == cfg.epochs - cfg.mix_off_epochs + 1:
            info(f"epoch {epoch}: MixUp/CutMix off for the last {cfg.mix_off_epochs} epoch(s)")
    step.mix = mixer if mixing else None
    step.model.train()
    run.freeze.batchnorm_eval()


def train_one_epoch(run: TrainRun, epoch: int, interrupt, progress) -> tuple[str | None, int, int]:
    """The epoch's steps with a progress bar (rank 0); returns train_epoch's (halted, steps) and
    the progress task."""
    step, n_batches = run.step, len(run.loaders.train)
    task = progress.add_task(f"epoch {epoch}/{run.cfg.epochs}", total=n_batches, stats="")

    def on_check(done: int) -> None:
        if run.ctx.is_main:
            s = max(1, step.seen)
            progress.update(task, completed=done, stats=f"loss {step.loss_sum.item() / s:.4f} "
                            f"acc {step.correct.item() / s:.3f} lr {run.opt.schedule.lr:.2e}")

    # A step reads the device only every `check_every` steps (on CPU reading is free).
    check_every = 1 if run.rt.device.type == "cpu" else 25
    halted, done = train_epoch(step, run.loaders.train, n_batches, accum=run.cfg.accum_steps, ctx=run.ctx,
                               interrupt=interrupt, check_every=check_every, on_check=on_check)
    return halted, done, task


def validate(run: TrainRun, epoch: int, seconds_from: float) -> tuple[dict, dict]:
    """Train sums reduced over ranks, the EMA/raw weights evaluated: (metrics.csv row, per-class record)."""
    step, ctx, n = run.step, run.ctx, len(run.classes)
    tr = torch.zeros(3 + 2 * n, dtype=_acc_dtype(run.rt.device), device=run.rt.device)
    tr[0], tr[1], tr[2] = step.loss_sum, step.correct, step.seen
    tr[3:] = step.per_class
    tr = ctx.all_reduce_sum(tr).tolist()
    loss_sum, correct, seen = tr[:3]
    ctx.broadcast_module_state(run.eval_model)
    val_loss, val_acc, val_cc, val_ct = evaluate_per_class(run.eval_model, run.loaders.val, run.opt.val_criterion,
                                                           run.rt, run.cfg.channels_last, ctx, n, run.pre.normalize)
    mark("validation")
    if not math.isfinite(val_loss):  # the epoch's last updates blew the weights up: do not save them
        raise diverged(run, f"val loss became nan or inf at epoch {epoch} (the weights diverged)")
    record = {"epoch": epoch, "train_correct": tr[3:3 + n], "train_total": tr[3 + n:], "val_correct": val_cc,
              "val_total": val_ct}
    schedule = run.opt.schedule
    row = {"epoch": epoch, "train_loss": loss_sum / max(1.0, seen), "train_acc": correct / max(1.0, seen),
           "val_loss": val_loss, "val_acc": val_acc, "lr": schedule.lr, "seconds": time.perf_counter() - seconds_from}
    if run.cfg.backbone_lr_mult != 1.0:
        row["backbone_lr"] = schedule.backbone_lr
    schedule.epoch_end(val_loss)
    return row, record


def end_epoch(run: TrainRun, row: dict, record: dict) -> None:
    """Best / top-k / last.pt and the logs (rank 0), and the state for the next epoch."""
    state, epoch = run.state, row["epoch"]
    metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
    improved = row["val_acc"] > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = row["val_acc"], epoch
    evicted, kept = [], False
    if run.cfg.save_top_k:
        state.top, evicted, kept = update_top_k(state.top, run.cfg.save_top_k, epoch, row["val_acc"])
    state.history = [r for r in state.history if r["epoch"] < epoch] + [row]
    state.per_class = [r for r in state.per_class if r["epoch"] < epoch] + [record]
    if run.ctx.is_main:
        console.print(worst_classes_line(record, run.classes.names), soft_wrap=True, highlight=False, markup=False)
        opt = run.opt

        def logs() -> None:
            run.logger.log_per_class(record)
            run.logger.log(row)

        run.checkpointer.save_epoch(
            epoch, metrics, improved=improved, kept=kept, eval_weights=lambda: cpu_weights(run.eval_model),
            train_weights=cpu_weights(run.raw),
            train_state=state.snapshot(opt.optimizer, opt.schedule, opt.scaler, opt.ema, run.ctx.world_size),
            after_last=logs, evicted=evicted)
    state.epoch = epoch


def _start(run: TrainRun) -> int:
    """The first epoch to run; the freeze phase and the DDP / compile wrappers set up for it."""
    cfg, first = run.cfg, run.state.epoch + 1
    if run.freeze.frozen_at(first):
        run.freeze.set(True)
    if cfg.freeze_epochs:
        if cfg.freeze_epochs >= cfg.epochs:
            from vr.util.console import warn

            warn(f"--freeze-epochs {cfg.freeze_epochs} >= --epochs {cfg.epochs}: the backbone is never "
                 "unfrozen, only the classifier head trains (a linear probe)")
        if run.freeze.frozen:
            info(f"training the classifier head only ({len(run.freeze.head_names)} tensors) until epoch "
                 f"{min(cfg.freeze_epochs, cfg.epochs)}: backbone frozen, its BatchNorm in eval mode")
    run.step.model, run.step.ddp = wrap_model(run.raw, run.ctx, run.rt.device.type, cfg.compile)
    return first


def _epochs(run: TrainRun, interrupt, progress) -> tuple[int, str, str, bool]:
    """Run the epochs; returns (last epoch reached, "early" or "", stop message, ranks agreed)."""
    cfg, state, epoch = run.cfg, run.state, run.state.epoch
    for epoch in range(_start(run), cfg.epochs + 1):
        if cfg.patience and state.best_epoch and epoch - 1 - state.best_epoch >= cfg.patience:
            return epoch - 1, "early", "", False
        t0 = time.perf_counter()
        start_epoch(run, epoch)
        halted, done, task = train_one_epoch(run, epoch, interrupt, progress)
        if halted == "nonfinite":
            raise diverged(run, f"loss became nan or inf at epoch {epoch} (by step {done} of {len(run.loaders.train)})")
        if halted == "interrupt":
            return epoch, "", interrupt_message(run, epoch, True, interrupt.signal_name), True
        row, record = validate(run, epoch, t0)
        progress.update(task, completed=len(run.loaders.train),
                        stats=f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} · "
                              f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
        end_epoch(run, row, record)
        # Ctrl-C during validation or saving: the epoch is complete, stop here together.
        if run.ctx.any_flags([int(interrupt.requested)])[0]:
            return epoch, "", interrupt_message(run, epoch, False, interrupt.signal_name), True
    return epoch, "", "", False


def fit(run: TrainRun) -> TrainResult:
    """Train the run to its last epoch (or early stop); TrainingInterrupted after Ctrl-C or SIGTERM."""
    interrupt = D.GracefulInterrupt()
    progress = _progress() if run.ctx.is_main else _NullProgress()
    t_start = time.perf_counter()
    epoch, stopped, stop_msg, agreed = run.state.epoch, "", "", False
    try:
        with interrupt, progress:
            D.register_worker()  # from here on Ctrl-C and SIGTERM are handled: the launcher may pass them to us
            epoch, stopped, stop_msg, agreed = _epochs(run, interrupt, progress)
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: stop at once
        stop_msg, agreed = interrupt_message(run, run.state.epoch + 1, True, interrupt.signal_name), False
    finally:
        run.loaders.close()
        if run.logger is not None:
            run.logger.close()
    if stop_msg:
        console.print(stop_msg, soft_wrap=True, highlight=False, markup=False)
        raise TrainingInterrupted(interrupt.exit_code, agreed=agreed)
    seconds = time.perf_counter() - t_start
    s = run.state
    if stopped == "early":
        info(f"early stop: val acc has not improved for {run.cfg.patience} epochs "
             f"(best {s.best_acc:.4f} at epoch {s.best_epoch})")
    info(f"[bold]done[/bold]: best val acc {s.best_acc:.4f} at epoch {s.best_epoch} · {seconds:.1f}s · "
         f"{format_params(run.n_params)} params · {run.skipped} skipped files · {run.run_dir}")
    return TrainResult(s.best_acc, s.best_epoch, epoch, seconds, run.n_params, run.skipped, run.run_dir, stopped)
