"""Everything a training run is built from, checked before the first step: the run folder, the
resume / --init-from checkpoints, the budget, the data scan, the model and its Preprocess, the
loaders, the optimizer, schedule, loss, MixUp and EMA, and the training state. ``setup`` returns
them as one TrainRun, which ``vr.train.fit.fit`` trains (tests reach every part through it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vr.data.folders import scan_image_folder
from vr.errors import VrError, first_line
from vr.models.budget import check_param_budget, model_param_count, parse_param_budget
from vr.models.checkpoint import Checkpoint, load_checkpoint
from vr.models.factory import check_model_name, count_params, create_model, weights_preprocess_hints
from vr.models.preprocess import Preprocess, resolve_preprocess
from vr.train import distributed as D
from vr.train.augment import TrainNormalize
from vr.train.checkpointer import Checkpointer
from vr.train.config import TrainConfig
from vr.train.data import Loaders, build_loaders
from vr.train.freeze import FreezePhase
from vr.train.logging import RunLogger
from vr.train.optim import LRSchedule, create_optimizer
from vr.train.state import TrainState, restore, seed_everything
from vr.train.step import TrainStep, build_criterion
from vr.util.console import info, warn
from vr.util.device import Runtime, resolve_runtime
from vr.util.fmt import params as format_params
from vr.util.io import check_writable_dir
from vr.util.phases import mark


# --- checks that need no model and no image -------------------------------------------------------
def check_paths(cfg: TrainConfig) -> tuple[Path, Path]:
    """The data layout, the run folder and the resume state."""
    data = Path(cfg.data)
    if not data.is_dir():
        raise VrError(f"data folder not found: {data}")
    for split in ("train", "val"):
        if not (data / split).is_dir():
            raise VrError(f"{data} has no {split}/ folder (expected {data}/train/<class>/ and {data}/val/<class>/)")
    check_run_outputs(cfg, data)
    run_dir = check_writable_dir(cfg.out)
    last_path = run_dir / "last.pt"
    if cfg.resume and not last_path.is_file():
        raise VrError(f"--resume: no {last_path} to resume from")
    if not cfg.resume and last_path.exists():
        raise VrError(f"{run_dir} already holds a run; add --resume to continue it or pick another --out")
    return data, run_dir


def check_run_outputs(cfg: TrainConfig, data: Path) -> None:
    """The run folder (vr.util.paths): not inside the data folder (it would become a class), not a
    folder another command owns, and none of its files an input (--pretrained, --init-from, the
    --config file; a resumed run's own last.pt and config.yaml are its to rewrite)."""
    from vr.util.paths import OWNED, check_folder_owner, check_outputs, config_inputs

    out = Path(cfg.out)
    inputs = [("the --config file", p) for _, p in config_inputs(cfg)
              if not (cfg.resume and p.name == "config.yaml" and p.resolve().parent == out.resolve())]
    if cfg.pretrained and Path(cfg.pretrained).exists():
        inputs.append(("the --pretrained weights", Path(cfg.pretrained)))
    if cfg.init_from is not None and not cfg.resume:
        inputs.append(("the --init-from checkpoint", Path(cfg.init_from)))
    files = [("--out", out)] + [("the run file", out / n) for n in OWNED["train"] if "*" not in n]
    check_outputs(files, inputs, [("the data folder", data)])
    check_folder_owner(out, "train")


def elastic_resume(cfg: TrainConfig) -> bool:
    """Whether this process is a torchrun restart (``--max-restarts``) of the run its --out
    folder holds, so that it continues from last.pt as with --resume. A folder holding a run
    of other settings is one VrError, never a silent resume."""
    n = D.restart_count()
    run_dir = Path(cfg.out)
    last = run_dir / "last.pt"
    if cfg.resume or n == 0 or not last.is_file():
        return False
    try:
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise VrError(f"torchrun restart {n}: {run_dir} holds a last.pt but no readable config.yaml, so it may "
                      "be another run; add --resume to continue it or pick another --out") from e
    diffs = cfg.differences(saved if isinstance(saved, dict) else {})
    if diffs:
        raise VrError(f"torchrun restart {n}: {run_dir} holds a run with other settings ({'; '.join(diffs[:3])}), "
                      "so it is not resumed; delete it or pick another --out")
    info(f"torchrun restart {n}: continuing the run in {run_dir} from its last.pt (same settings; as with --resume)")
    return True


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


def load_resume(cfg: TrainConfig, run_dir: Path) -> Checkpoint | None:
    if not cfg.resume:
        return None
    last = run_dir / "last.pt"
    ck = load_checkpoint(last)
    if ck.train_state is None:
        raise VrError(f"{last} holds no training state to resume from")
    if ck.model_name != cfg.model:
        raise VrError(f"{last} is a {ck.model_name} run but --model is {cfg.model}; resume with "
                      f"--config {run_dir / 'config.yaml'} to reuse the run's options")
    return ck


def precheck_launch(cfg: TrainConfig) -> None:
    """What the --nproc-per-node launcher checks before it starts torchrun."""
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


# --- data and model -------------------------------------------------------------------------------
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


def scan_data(cfg: TrainConfig, data: Path, resume_ckpt, init_ckpt):
    """train/ and val/ scanned (every image decoded once), checked against the checkpoints. When
    the data check follows (a new run), the decode gathers its facts too (vr.data.facts)."""
    inspect = cfg.data_check and resume_ckpt is None
    train_scan = scan_image_folder(data / "train", verify=cfg.verify_images, what="train", inspect=inspect)
    if resume_ckpt is not None and resume_ckpt.classes != train_scan.classes:
        raise VrError(f"the classes in {data / 'train'} differ from those of the run being resumed")
    if init_ckpt is not None:
        check_init_classes(init_ckpt, train_scan.classes)
    val_scan = scan_image_folder(data / "val", classes=train_scan.classes, verify=cfg.verify_images,
                                 what="val", reference="train/", inspect=inspect)
    return train_scan, val_scan


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
        raise VrError(f"model {name} cannot take {size}x{size} images: {first_line(e)}") from e
    finally:
        model.train(was_training)


def build_model(cfg: TrainConfig, num_classes: int, rt: Runtime, resume_ckpt, init_ckpt) -> tuple[nn.Module, Preprocess]:
    """The model (pretrained, resumed or initialised from a checkpoint) and its Preprocess."""
    if cfg.sync_bn and rt.device.type != "cuda":
        raise VrError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernels); drop it on CPU")
    from_ck = resume_ckpt is not None or init_ckpt is not None
    m = create_model(cfg.model, num_classes, cfg.drop_rate, pretrained=None if from_ck else cfg.pretrained)
    if resume_ckpt is not None:
        pre = resume_ckpt.preprocess
    elif init_ckpt is not None:  # the weights were trained with its normalisation
        pre = resolve_run_preprocess(cfg.replace(
            pretrained=None, mean=cfg.mean if cfg.mean is not None else init_ckpt.preprocess.mean,
            std=cfg.std if cfg.std is not None else init_ckpt.preprocess.std), m)
    else:
        pre = resolve_run_preprocess(cfg, m)
    check_input_size(m, pre.input_size, cfg.model)
    if resume_ckpt is not None:
        m.load_state_dict(resume_ckpt.state_dict)
    elif init_ckpt is not None:
        try:
            m.load_state_dict(init_ckpt.state_dict)
        except RuntimeError as e:
            lines = str(e).splitlines()
            raise VrError(f"--init-from {cfg.init_from} does not fit {cfg.model}: "
                          f"{lines[-1].strip() or lines[0]}") from e
    return m, pre


# --- optimisation -----------------------------------------------------------------------------------
@dataclass
class Optimisation:
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    val_criterion: nn.Module  # plain cross-entropy whatever the training loss, so val curves compare
    mixer: object | None  # BatchMix, or None without --mixup/--cutmix
    ema: object | None  # timm ModelEmaV3, or None without --ema


def build_optimisation(cfg: TrainConfig, raw: nn.Module, labels: list[int], num_classes: int, n_batches: int,
                       rt: Runtime) -> Optimisation:
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
    optimizer = create_optimizer(raw, cfg)  # all parameters, frozen or not (see FreezePhase)
    schedule = LRSchedule(optimizer, cfg, math.ceil(n_batches / cfg.accum_steps))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    loss_weights = None
    if cfg.balance == "weights":
        from vr.data.balance import class_weights

        loss_weights = class_weights(labels, num_classes)
        info("class weights (inverse frequency, mean 1): min "
             f"{loss_weights[loss_weights > 0].min().item():.3g}, max {loss_weights.max().item():.3g}")
    criterion = build_criterion(cfg, loss_weights) if loss_weights is not None else build_criterion(cfg)
    if isinstance(criterion, nn.Module):
        criterion.to(rt.device)
    mixer = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from vr.train.augment import BatchMix

        mixer = BatchMix(num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mix_prob,
                         switch_prob=cfg.mix_switch_prob, seed=cfg.seed)
    return Optimisation(optimizer, schedule, scaler, criterion, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                        mixer, ema)


# --- the run ----------------------------------------------------------------------------------------
@dataclass
class TrainRun:
    cfg: TrainConfig
    ctx: D.DistContext
    rt: Runtime
    data: Path
    run_dir: Path
    classes: object  # ClassMap
    pre: Preprocess
    raw: nn.Module  # the model itself (DDP and torch.compile wrap it in step.model)
    n_params: int
    skipped: int
    loaders: Loaders
    opt: Optimisation
    freeze: FreezePhase
    state: TrainState
    step: TrainStep
    logger: RunLogger | None  # rank 0 only
    checkpointer: Checkpointer
    saved_cfg: TrainConfig

    @property
    def eval_model(self) -> nn.Module:
        """What validation, best.pt and the top-k files use: the EMA weights with --ema."""
        return self.opt.ema.module if self.opt.ema is not None else self.raw


def write_run_files(run_dir: Path, classes, saved_cfg: TrainConfig, rt: Runtime, ctx: D.DistContext) -> None:
    from vr.util.manifest import write_manifest

    classes.save(run_dir / "classes.json")
    saved_cfg.save_yaml(run_dir / "config.yaml")
    write_manifest(run_dir, saved_cfg.to_dict(), providers={
        "device": str(rt.device), "precision": str(rt.amp_dtype or "fp32"),
        "processes": ctx.world_size if ctx.enabled else 1, "backend": ctx.backend if ctx.enabled else None})


def _announce(cfg: TrainConfig, n_params: int, budget, classes, n_train: int, n_val: int, pre: Preprocess,
              init_ckpt) -> None:
    if init_ckpt is not None:
        info(f"initialised from {cfg.init_from} (epoch {init_ckpt.epoch}, input {init_ckpt.preprocess.input_size}px); "
             "a new run: fresh optimizer and schedule" + ("; --pretrained ignored" if cfg.pretrained else ""))
    info(f"{cfg.model}: {format_params(n_params)} params"
         f"{f' (budget {format_params(budget)})' if budget is not None else ''} · {len(classes)} classes · "
         f"{n_train} train / {n_val} val images · input {pre.input_size}px "
         f"(resize {pre.resize_size}, {pre.interpolation})")


def setup(cfg: TrainConfig, ctx: D.DistContext, device: str) -> TrainRun:
    """Check, scan and build everything; VrError (on every rank together under DDP) if anything
    is wrong. Rank 0 scans the data (the others receive the lists) and writes the run files."""
    data, run_dir = ctx.on_main(lambda: check_paths(cfg))
    if ctx.enabled and cfg.nproc_per_node > 1 and cfg.nproc_per_node != ctx.local_world_size:
        warn(f"--nproc-per-node {cfg.nproc_per_node} is ignored under torchrun, which started "
             f"{ctx.local_world_size} processes on this machine")
    resume_ckpt = ctx.agree(lambda: load_resume(cfg, run_dir))
    if resume_ckpt is not None and isinstance(resume_ckpt.config, dict):
        cfg = cfg.with_run_defaults(resume_ckpt.config)  # the run's own lr / EMA / format, not today's defaults
    budget = ctx.on_main(lambda: check_budget(cfg, data))
    init_ckpt = ctx.agree(lambda: load_init_checkpoint(cfg))
    seed_everything(cfg.seed)
    rt = resolve_runtime(device, cfg.amp, verbose=ctx.is_main)
    if ctx.enabled:
        info(f"DDP: {ctx.world_size} processes ({ctx.backend}) x batch {cfg.batch_size} = "
             f"global batch {ctx.world_size * cfg.batch_size}")
    mark("setup checks")
    train_scan, val_scan = ctx.on_main(lambda: scan_data(cfg, data, resume_ckpt, init_ckpt))
    mark("data scan (+ --verify-images)")
    classes = train_scan.classes
    raw, pre = ctx.agree(lambda: build_model(cfg, len(classes), rt, resume_ckpt, init_ckpt))
    n_params = count_params(raw)
    check_param_budget(n_params, budget, cfg.model)
    _announce(cfg, n_params, budget, classes, len(train_scan.samples), len(val_scan.samples), pre, init_ckpt)
    mark("model load")
    if cfg.sync_bn and not ctx.enabled:
        warn("--sync-bn only matters with several processes (--nproc-per-node); ignored")
    loaders = build_loaders(cfg, train_scan.samples, val_scan.samples, len(classes), pre, rt, ctx)
    given, cfg = cfg, cfg.resolved(len(loaders.train), rt.device.type, pre.input_size)  # the run-dependent defaults, made concrete
    if ctx.is_main and resume_ckpt is None and (note := given.defaults_note(cfg)):
        info(note)
    saved_cfg = cfg.replace(data=data.resolve(), resume=False)
    if ctx.is_main:
        write_run_files(run_dir, classes, saved_cfg, rt, ctx)
        mark("run files (config, manifest)")
        if cfg.data_check and resume_ckpt is None:
            from vr.data.check import run_data_check

            run_data_check(data, pre.input_size, pre.resize_size, pre.crop_mode, out_json=run_dir / "data_check.json",
                           border_crop=pre.border_crop, workers=cfg.workers or None)
            mark("data check")
    raw.to(rt.device)
    if cfg.channels_last:
        raw.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.enabled:
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    opt = build_optimisation(cfg, raw, [y for _, y in train_scan.samples], len(classes), len(loaders.train), rt)
    freeze = FreezePhase(raw, cfg.freeze_epochs)
    checkpointer = Checkpointer(run_dir, lambda epoch, metrics, weights, ts: Checkpoint(
        model_name=cfg.model, num_classes=len(classes), drop_rate=cfg.drop_rate, state_dict=weights, classes=classes,
        preprocess=pre, config=saved_cfg.to_dict(), epoch=epoch, metrics=metrics, train_state=ts), cfg.save_top_k)
    state = TrainState()
    if resume_ckpt is not None:
        state = restore(resume_ckpt, optimizer=opt.optimizer, schedule=opt.schedule, scaler=opt.scaler, ema=opt.ema,
                        save_top_k=cfg.save_top_k, world_size=ctx.world_size, run_dir=run_dir)
        if ctx.is_main:
            checkpointer.forget_unknown_top_k(state.top)
    step = TrainStep(raw, raw, opt.optimizer, opt.schedule, opt.scaler, opt.criterion, rt,
                     channels_last=cfg.channels_last, clip_grad=cfg.clip_grad, ema=opt.ema, num_classes=len(classes),
                     prepare=TrainNormalize(pre))
    logger = RunLogger(run_dir, cfg.tensorboard, state.history, state.per_class, classes.names) if ctx.is_main else None
    mark("optimiser, state, logger")
    return TrainRun(cfg, ctx, rt, data, run_dir, classes, pre, raw, n_params,
                    len(train_scan.skipped) + len(val_scan.skipped), loaders, opt, freeze, state, step, logger,
                    checkpointer, saved_cfg)
