"""TrainConfig: every option of `vr train`, validated, saved as RUN_DIR/config.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import CPU_CHANNELS_LAST_MIN_SIZE, ConfigBase, check, check_choice, option

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "onecycle", "step", "none")
AUG_PRESETS = ("none", "light", "seed-a", "seed-b", "randaugment", "trivialaugment", "augmix")
BALANCE = ("none", "sampler", "weights")
LOSSES = ("ce", "focal")
DEVICES = ("auto", "cpu", "cuda", "mps")

M, O, R, A, H, X = "Model & weights", "Optimisation", "Regularisation", "Augmentation", "Hardware", "Output"
L = "Loss & class balance"


@dataclass
class TrainConfig(ConfigBase):
    data: Path = option(help="Dataset folder holding train/<class>/ and val/<class>/ image folders.", argument=True)
    # --- model & weights
    model: str = option("resnet50", "timm model name (torchvision names such as resnet152 work too).", group=M)
    pretrained: Optional[str] = option(None, "Local weights file (.pth/.pt/.safetensors), or 'timm' for timm's offline cache. Nothing is downloaded.", group=M)
    img_size: Optional[int] = option(None, "Square input size for the network (default: the model's own).", group=M)
    crop_pct: Optional[float] = option(None, "Eval centre-crop fraction: images are resized to img_size/crop_pct, then centre-cropped (default: the model's).", group=M)
    interpolation: Optional[str] = option(None, "Resize interpolation (default: the model's).", choices=("bilinear", "bicubic", "nearest"), group=M)
    mean: Optional[tuple[float, float, float]] = option(None, "Normalisation mean, three values (default: the model's, or the weights file's).", group=M)
    std: Optional[tuple[float, float, float]] = option(None, "Normalisation std, three values (default: the model's, or the weights file's).", group=M)
    crop_mode: str = option("center", "center: shorter side to the resize size, then the centre crop (keeps the middle of wide or tall images); squash: resize to a square, ignoring the aspect; pad: letterbox, the longer side to the resize size on a square canvas of the mean colour, then the centre crop (keeps the whole image undistorted). vr data check says which fits your images.", choices=("center", "squash", "pad"), group=M)
    border_crop: float = option(0.0, "Fraction trimmed from each side of every image before resizing (train and eval).", group=M)
    init_from: Optional[Path] = option(None, "Start a NEW run from the weights of a vr checkpoint (another run's best.pt or last.pt), e.g. to fine-tune at a larger --img-size. Not a resume: fresh optimizer and schedule, epoch 1. The --model and the class list must match the checkpoint's; its mean/std are kept unless --mean/--std are given; --pretrained is ignored.", group=M)
    max_params: Optional[str] = option(None, "Parameter budget, e.g. 100M, 25.5M, 500K: refuse to train a larger model (default: no limit).", group=M)
    # --- optimisation
    epochs: int = option(10, "Number of epochs.", group=O)
    batch_size: int = option(32, "Batch size per process.", group=O)
    opt: str = option("adamw", "Optimizer.", choices=OPTIMIZERS, group=O)
    lr: Optional[float] = option(None, "Peak learning rate (the head's, with --backbone-lr-mult). Default: 1e-3 when fine-tuning from --pretrained weights (the backbone gets 1e-4, see --backbone-lr-mult), else 3e-4; both suit AdamW, SGD wants about 0.01.", group=O)
    weight_decay: float = option(0.05, "Weight decay (not applied to biases and norm layers).", group=O)
    momentum: float = option(0.9, "SGD momentum.", group=O)
    sched: str = option("cosine", "Learning-rate schedule.", choices=SCHEDULERS, group=O)
    warmup_epochs: float = option(1.0, "Linear warmup length in epochs (onecycle: its rising phase).", group=O)
    min_lr_ratio: float = option(0.01, "cosine: final lr as a fraction of the peak.", group=O)
    step_size: int = option(10, "step: epochs between lr drops.", group=O)
    gamma: float = option(0.1, "step/plateau: lr multiplier at each drop.", group=O)
    plateau_patience: int = option(2, "plateau: epochs without val-loss improvement before a drop.", group=O)
    accum_steps: int = option(1, "Accumulate gradients over this many batches per optimizer step (effective batch = batch-size x accum-steps x processes).", group=O)
    clip_grad: Optional[float] = option(None, "Clip the global gradient norm to this value (default: no clipping).", group=O)
    patience: int = option(0, "Early stopping: stop after this many epochs without a higher val accuracy (0 = off).", group=O)
    backbone_lr_mult: Optional[float] = option(None, "Learning rate of everything but the classifier head, as a multiple of --lr; the head gets --lr. Default: 0.1 when fine-tuning from --pretrained weights (the new head learns fast, the pretrained backbone moves gently), else 1. The schedule scales both; metrics.csv logs the head lr (lr) and, when this is not 1, backbone_lr.", group=O)
    freeze_epochs: int = option(0, "Train only the classifier head for the first N epochs (backbone frozen, its BatchNorm statistics fixed), then everything. N >= --epochs trains the head alone (a linear probe), with a warning.", group=O)
    # --- regularisation
    drop_rate: float = option(0.0, "Dropout before the classifier (the seed reports used 0.5).", group=R)
    label_smoothing: float = option(0.1, "Label smoothing for the cross-entropy loss.", group=R)
    ema: Optional[bool] = option(None, "Keep an exponential moving average (EMA) of the weights. When on, validation, metrics.csv's val columns, best.pt and the --save-top-k files use the EMA weights; last.pt holds the training weights plus the EMA for --resume. Default: on when fine-tuning from --pretrained weights, else off.", flag="--ema/--no-ema", group=R)
    ema_decay: Optional[float] = option(None, "EMA decay per optimizer step (the ceiling when --ema-warmup is on). Default: from the run's length, within [0.9, 0.9998]: without the warm-up ramp 1 - 1 / (optimizer steps), an average over about the whole run that starts at the pretrained weights; with it 1 - 1 / (0.2 x optimizer steps), about the last fifth of the run (a short run must not average mostly its first steps). The value used is saved in config.yaml.", group=R)
    ema_warmup: Optional[bool] = option(None, "Ramp the EMA decay up as 1 - (1 + step)^(-2/3), capped at --ema-decay, so the average forgets its starting weights quickly. Default: on when training from scratch (random starting weights), off when fine-tuning from --pretrained weights (the average keeps a share of them, which regularises a short fine-tune on little data).", flag="--ema-warmup/--no-ema-warmup", group=R)
    # --- loss & class balance
    loss: str = option("ce", "Training loss: ce (cross-entropy) or focal (cross-entropy scaled by (1 - p)^gamma per class, which down-weights easy examples). Both take --label-smoothing, class weights and mixed targets; at --focal-gamma 0 focal equals ce. Val loss is always plain cross-entropy with --label-smoothing, so runs compare.", choices=LOSSES, group=L)
    focal_gamma: float = option(2.0, "focal: the focusing exponent gamma (0 = cross-entropy).", group=L)
    balance: str = option("none", "Class imbalance: none; sampler (draw every class equally often in expectation, with replacement; epoch length unchanged); weights (loss weights inversely proportional to the train class frequency, mean 1).", choices=BALANCE, group=L)
    # --- augmentation
    aug: str = option("light", "Preset: none; light (random resized crop; add --hflip 0.5 where mirroring keeps the label); seed-a (resize, blur k=3, flip, rotation); seed-b (resize + centre crop, flip, colour jitter, affine, rotation 20, random erasing); randaugment, trivialaugment, augmix (torchvision's RandAugment, TrivialAugmentWide, AugMix after the random resized crop).", choices=AUG_PRESETS, group=A)
    hflip: Optional[float] = option(None, "Horizontal flip probability (overrides the preset).", group=A)
    vflip: Optional[float] = option(None, "Vertical flip probability (overrides the preset).", group=A)
    rotation: Optional[float] = option(None, "Random rotation range in degrees (overrides the preset).", group=A)
    blur: Optional[float] = option(None, "Probability of a 3x3 Gaussian blur (overrides the preset).", group=A)
    color_jitter: Optional[float] = option(None, "Colour jitter strength for brightness/contrast/saturation (overrides the preset).", group=A)
    translate: Optional[float] = option(None, "Random affine translation as a fraction of the size (overrides the preset).", group=A)
    random_erasing: Optional[float] = option(None, "Random erasing probability (overrides the preset).", group=A)
    mixup: float = option(0.0, "MixUp Beta(alpha, alpha) on training batches (0 = off; 0.2-0.4 is usual). Train accuracy under mixing counts the dominant (argmax) target.", group=A)
    cutmix: float = option(0.0, "CutMix Beta(alpha, alpha) on training batches (0 = off; 1.0 is usual).", group=A)
    mix_prob: float = option(1.0, "Probability that a training batch is mixed at all (with --mixup/--cutmix).", group=A)
    mix_switch_prob: float = option(0.5, "With both --mixup and --cutmix: probability of CutMix rather than MixUp for a mixed batch.", group=A)
    mix_off_epochs: int = option(0, "Turn MixUp/CutMix off for the last N epochs (train on clean images at the end).", group=A)
    # --- hardware
    device: str = option("auto", "auto = CUDA, else MPS, else CPU.", choices=DEVICES, group=H)
    amp: bool = option(True, "Mixed precision (bf16, or fp16 + GradScaler on GPUs without bf16). Always off on CPU.", group=H)
    channels_last: Optional[bool] = option(None, "Use the channels_last (NHWC) memory format. Default: on when training on the CPU at 64 px and up (oneDNN's NHWC convolutions measured 1.07-1.63x faster per step there, no gain at 32 px: 0.96-1.03x), else off; on a GPU turn it on with AMP for faster convolutions (not measured by vr).", flag="--channels-last/--no-channels-last", group=H)
    compile: bool = option(False, "torch.compile the model for training (the first steps are slow while it compiles; mostly a GPU win).", group=H)
    nproc_per_node: int = option(1, "Processes on this machine. Above 1, vr re-launches itself through torchrun and trains with DDP (NCCL on GPU, one process per GPU; gloo on CPU). --batch-size is per process. For several machines run torchrun yourself (see README).", group=H)
    sync_bn: bool = option(False, "With DDP: synchronise BatchNorm statistics across processes (SyncBatchNorm; GPU only).", group=H)
    workers: int = option(2, "DataLoader worker processes.", group=H)
    seed: int = option(0, "Random seed.", group=H)
    # --- output
    out: Path = option(Path("runs/train"), "Run folder for checkpoints, metrics and curves.", group=X)
    resume: bool = option(False, "Continue the run in --out from its last.pt (model, optimizer, schedule, scaler, EMA, epoch, best metric, RNG).", group=X)
    save_top_k: int = option(0, "Also keep the k best checkpoints by val accuracy as epochNNN.pt, besides best.pt (0 = off).", group=X)
    tensorboard: bool = option(True, "Write TensorBoard event files.", group=X)
    verify_images: bool = option(True, "Decode every image once before training and skip unreadable ones.", group=X)
    data_check: bool = option(True, "Before a new run trains, check the data as `vr data check` does (class balance, what the eval crop keeps of your images, duplicates across train/val, odd image modes), print the findings that call for a flag and save RUN/data_check.json.", group=X)

    def __post_init__(self):
        check(self.epochs > 0, f"--epochs must be positive (got {self.epochs})")
        check(self.batch_size > 0, f"--batch-size must be positive (got {self.batch_size})")
        check(self.lr is None or self.lr > 0, f"--lr must be positive (got {self.lr})")
        check(self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        check_choice("optimizer", self.opt, OPTIMIZERS)
        check_choice("scheduler", self.sched, SCHEDULERS)
        check_choice("augmentation preset", self.aug, AUG_PRESETS)
        check_choice("device", self.device.split(":")[0], DEVICES)
        check(self.warmup_epochs >= 0, "--warmup-epochs must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1]")
        check(self.step_size > 0, "--step-size must be positive")
        check(0 < self.gamma <= 1, "--gamma must be in (0, 1]")
        check(0 <= self.drop_rate < 1, f"--drop-rate must be in [0, 1) (got {self.drop_rate})")
        check(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        check(self.img_size is None or 8 <= self.img_size <= 4096, f"--img-size must be in [8, 4096] (got {self.img_size})")
        check(0 <= self.border_crop < 0.5, "--border-crop must be in [0, 0.5)")
        check(self.workers >= 0, "--workers must be >= 0")
        check(self.accum_steps >= 1, f"--accum-steps must be >= 1 (got {self.accum_steps})")
        check(self.clip_grad is None or self.clip_grad > 0, f"--clip-grad must be positive (got {self.clip_grad})")
        check(self.patience >= 0, f"--patience must be >= 0 (got {self.patience})")
        check(self.save_top_k >= 0, f"--save-top-k must be >= 0 (got {self.save_top_k})")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, f"--ema-decay must be in (0, 1) (got {self.ema_decay})")
        check(self.nproc_per_node >= 1, f"--nproc-per-node must be >= 1 (got {self.nproc_per_node})")
        check_choice("--balance", self.balance, BALANCE)
        check_choice("--loss", self.loss, LOSSES)
        check(self.focal_gamma >= 0, f"--focal-gamma must be >= 0 (got {self.focal_gamma})")
        check(self.mixup >= 0, f"--mixup alpha must be >= 0 (got {self.mixup})")
        check(self.cutmix >= 0, f"--cutmix alpha must be >= 0 (got {self.cutmix})")
        check(0 <= self.mix_prob <= 1, f"--mix-prob is a probability in [0, 1] (got {self.mix_prob})")
        check(0 <= self.mix_switch_prob <= 1, f"--mix-switch-prob is a probability in [0, 1] (got {self.mix_switch_prob})")
        check(self.mix_off_epochs >= 0, f"--mix-off-epochs must be >= 0 (got {self.mix_off_epochs})")
        check(self.backbone_lr_mult is None or self.backbone_lr_mult > 0,
              f"--backbone-lr-mult must be positive (got {self.backbone_lr_mult})")
        check(self.freeze_epochs >= 0,
              f"--freeze-epochs must be >= 0 (got {self.freeze_epochs})")
        if self.max_params is not None:
            from vr.models.budget import parse_param_budget

            parse_param_budget(self.max_params)
        for name in ("hflip", "vflip", "blur", "random_erasing"):
            v = getattr(self, name)
            check(v is None or 0 <= v <= 1, f"--{name.replace('_', '-')} is a probability in [0, 1]")

    @property
    def fine_tune(self) -> bool:
        """A fine-tune from --pretrained weights (with --init-from those are ignored)."""
        return bool(self.pretrained) and not self.init_from

    def resolved(self, steps_per_epoch: int, device_type: str = "cpu", input_size: int = 224) -> "TrainConfig":
        """The config with its run-dependent defaults made concrete (what config.yaml records):
        FINE_TUNE or SCRATCH for the options left unset, the EMA decay from the number of
        optimizer steps, and the memory format from the device and input size."""
        import math

        base = FINE_TUNE if self.fine_tune else SCRATCH
        cfg = self.replace(**{k: v for k, v in base.items() if getattr(self, k) is None})
        if cfg.channels_last is None:  # measured on CPU only (docs/benchmarks.md); GPUs keep the user's choice
            cfg = cfg.replace(channels_last=device_type == "cpu" and input_size >= CPU_CHANNELS_LAST_MIN_SIZE)
        if cfg.ema_decay is None:
            steps = max(1, math.ceil(steps_per_epoch / cfg.accum_steps) * cfg.epochs)
            span = 0.2 * steps if cfg.ema_warmup else steps
            cfg = cfg.replace(ema_decay=round(min(0.9998, max(0.9, 1.0 - 1.0 / span)), 6))
        return cfg

    def with_run_defaults(self, saved: dict) -> "TrainConfig":
        """For --resume: the run-dependent defaults left unset take the values the run was started
        with (its checkpoint's config), so it continues as it began whatever this version's
        defaults are; options given explicitly still win."""
        fill = {k: saved[k] for k in RESOLVED if getattr(self, k) is None and saved.get(k) is not None}
        return self.replace(**fill)

    def defaults_note(self, resolved: "TrainConfig") -> Optional[str]:
        """One line naming the fine-tune defaults ``resolved`` filled in (None when none was)."""
        if not self.fine_tune or all(getattr(self, k) is not None for k in FINE_TUNE):
            return None
        r = resolved
        parts = [f"head lr {r.lr:g}, backbone {r.lr * r.backbone_lr_mult:g}"]
        if r.ema:
            parts.append(f"validation and best.pt use an EMA of the weights (decay {r.ema_decay:g}"
                         + (", starting at the pretrained weights: it lags the training weights in the first "
                            "epochs)" if not r.ema_warmup else ")"))
        return ("fine-tune defaults (from --pretrained): " + "; ".join(parts)
                + " (--lr, --backbone-lr-mult, --no-ema change them)")

    def differences(self, saved: dict, ignore: frozenset = frozenset()) -> list[str]:
        """The settings (as "name: saved there, now here") on which a run folder's config.yaml and
        this config describe different runs; the data folder is compared as a resolved path, the
        output-only settings (and ``ignore``) are left out. config.yaml records the run-dependent
        defaults resolved (``resolved``); one that depends on the number of batches is left out too
        (the data and the other settings decide it)."""
        few, many = self.resolved(1).to_dict(), self.resolved(10**6).to_dict()
        now = {k: v for k, v in few.items() if v == many[k]}
        skip = OUTPUT_ONLY | ignore | {"data"}
        diffs = [f"{k}: {saved[k]!r} there, {now[k]!r} now" for k in now
                 if k in saved and k not in skip and saved[k] != now[k]]
        if saved.get("data") and Path(str(saved["data"])).resolve() != Path(self.data).resolve():
            diffs.insert(0, f"data: {saved['data']} there, {Path(self.data).resolve()} now")
        return diffs


# The defaults of the options left unset (None above), for a fine-tune from --pretrained weights
# and for a run from scratch or --init-from. Measured in docs/benchmarks.md ("Defaults over 3
# seeds"): on hymenoptera the fine-tune set lifts the 3-seed mean of the best val accuracy from
# 93.90% (lr 3e-4 everywhere, a 1-epoch head warm-up, no EMA) to 95.86%.
FINE_TUNE = {"lr": 1e-3, "backbone_lr_mult": 0.1, "ema": True, "ema_warmup": False}
SCRATCH = {"lr": 3e-4, "backbone_lr_mult": 1.0, "ema": False, "ema_warmup": True}

# Every option TrainConfig.resolved fills in when left unset.
RESOLVED = (*FINE_TUNE, "ema_decay", "channels_last")

# Settings that change where and how a run writes or how fast it runs, not what it trains.
OUTPUT_ONLY = frozenset({"out", "resume", "channels_last", "nproc_per_node", "workers", "tensorboard", "verify_images", "data_check",
                         "save_top_k", "max_params"})
