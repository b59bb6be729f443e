"""Training augmentation presets (torchvision.transforms.v2) and BatchMix; eval uses Preprocess unchanged."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from vr.models.preprocess import Preprocess

_INTERP = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
           "bicubic": InterpolationMode.BICUBIC}

# geometry: rrc = random resized crop; squash = resize to a square; center = the eval geometry.
PRESETS: dict[str, dict] = {
    "none": dict(geometry="center"),
    # No flip by default: mirroring changes the label of digits, text and signs (opt in with --hflip).
    "light": dict(geometry="rrc"),
    "seed-a": dict(geometry="squash", blur=0.5, hflip=0.5, rotation=15.0),
    "seed-b": dict(geometry="center", hflip=0.5, color_jitter=0.2, translate=0.1, rotation=20.0, random_erasing=0.5),
    # Automatic augmentation policies on top of the random resized crop.
    "randaugment": dict(geometry="rrc", auto="randaugment"),
    "trivialaugment": dict(geometry="rrc", auto="trivialaugment"),
    "augmix": dict(geometry="rrc", auto="augmix"),
}
AUG_KEYS = ("hflip", "vflip", "rotation", "blur", "color_jitter", "translate", "random_erasing")


class BorderCrop:
    """Trim the same fraction from each side as Preprocess does at eval time."""

    def __init__(self, pre: Preprocess):
        self.pre = pre

    def __call__(self, img):
        w, h = img.size
        box = self.pre.border_box(h, w)
        return img if box == (0, 0, w, h) else img.crop(box)


def resolve_augmentation(preset: str, **overrides) -> dict:
    params = {k: 0.0 for k in AUG_KEYS}
    params["auto"] = None
    params.update(PRESETS[preset])
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def build_train_transform(pre: Preprocess, preset: str = "light", *, uint8: bool = False, **overrides) -> T.Compose:
    """PIL RGB image -> normalised CHW float tensor, with augmentation. With ``uint8`` the image
    stays a uint8 tensor (a quarter of the bytes between the loader's processes and to the GPU)
    and TrainNormalize finishes it, batched, on the device; random erasing, which works on the
    normalised image, keeps the float output."""
    p = resolve_augmentation(preset, **overrides)
    interp = _INTERP[pre.interpolation]
    size = pre.input_size
    steps: list = []
    if p["geometry"] == "rrc":
        steps.append(T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp, antialias=True))
        pre_steps = [BorderCrop(pre)]
    elif p["geometry"] == "squash":
        steps.append(T.Resize((size, size), interpolation=interp, antialias=True))
        pre_steps = [BorderCrop(pre)]
    else:
        pre_steps = [pre.geometry]  # border crop + resize + centre crop, exactly as at eval
    if pre.crop_mode == "pad" and p["geometry"] != "center":
        pre_steps = [pre.resized]  # letterboxed as at eval (border crop, canvas), then cropped at random
    if p["hflip"] > 0:
        steps.append(T.RandomHorizontalFlip(p["hflip"]))
    if p["vflip"] > 0:
        steps.append(T.RandomVerticalFlip(p["vflip"]))
    if p["auto"] == "randaugment":
        steps.append(T.RandAugment(interpolation=interp))
    elif p["auto"] == "trivialaugment":
        steps.append(T.TrivialAugmentWide(interpolation=interp))
    elif p["auto"] == "augmix":
        steps.append(T.AugMix(interpolation=interp))
    if p["color_jitter"] > 0:
        j = p["color_jitter"]
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    if p["translate"] > 0 or p["rotation"] > 0:
        t = p["translate"]
        steps.append(T.RandomAffine(degrees=p["rotation"], translate=(t, t) if t > 0 else None, interpolation=InterpolationMode.BILINEAR))
    if p["blur"] > 0:
        steps.append(T.RandomApply([T.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0))], p=p["blur"]))
    if uint8 and not p["random_erasing"] > 0:
        steps += [T.ToImage(), T.ToPureTensor()]
    else:
        steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    if p["random_erasing"] > 0:
        steps.append(T.RandomErasing(p=p["random_erasing"], value=0))
    return T.Compose(pre_steps + steps)


class TrainNormalize:
    """A uint8 batch from build_train_transform(uint8=True) -> the normalised float32 batch the
    per-image transform would have made: the same operations in the same order, so the same
    numbers. A float batch (random erasing on) passes through."""

    def __init__(self, pre: Preprocess):
        self.mean, self.std = list(pre.mean), list(pre.std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        from torchvision.transforms.v2 import functional as F

        return F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)


class BatchMix:
    """MixUp / CutMix on a training batch (torchvision.transforms.v2), applied with probability
    ``prob``; when both are on, CutMix is picked with probability ``switch_prob``.

    Returns soft targets (N, C) for a mixed batch and the hard labels otherwise. Every draw comes
    from a CPU generator seeded by (seed, epoch, rank, batch index), so a resumed run mixes its
    batches exactly as an uninterrupted run would, whatever else drew random numbers.
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, seed: int = 0):
        choices, p = [], []
        if cutmix > 0:
            choices.append(T.CutMix(alpha=cutmix, num_classes=num_classes))
            p.append(switch_prob if mixup > 0 else 1.0)
        if mixup > 0:
            choices.append(T.MixUp(alpha=mixup, num_classes=num_classes))
            p.append(1.0 - switch_prob if cutmix > 0 else 1.0)
        if not choices:
            raise ValueError("BatchMix needs --mixup or --cutmix")
        self.transform = choices[0] if len(choices) == 1 else T.RandomChoice(choices, p=p)
        self.prob, self.seed = prob, seed
        self.epoch = self.rank = self.count = 0

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        self.epoch, self.rank, self.count = epoch, rank, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = ((self.seed * 100_003 + self.epoch) * 1_000_003 + self.rank * 7_919) * 2_147_483_659 + self.count
        self.count += 1
        with torch.random.fork_rng(devices=[]):  # v2 MixUp/CutMix draw from the global CPU RNG
            torch.manual_seed(key % 2**63)
            if self.prob < 1 and torch.rand(()).item() >= self.prob:
                return x, y
            return self.transform(x, y)
