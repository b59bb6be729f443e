"""THE eval preprocessing definition, shared by training-time eval, export and evaluation.

Geometry, in order, for an image of height H and width W:

1. border crop: trim ``bl = floor(W * border_crop)`` columns from the left and the right and
   ``bt = floor(H * border_crop)`` rows from the top and the bottom;
2. resize (PIL semantics: antialiased when downscaling, rounded to uint8):
   - ``crop_mode="center"``: the shorter side becomes ``resize_size`` and the longer side
     ``floor(resize_size * long / short)``;
   - ``crop_mode="squash"``: the image becomes ``resize_size`` x ``resize_size``;
   - ``crop_mode="pad"`` (letterbox): the longer side becomes ``resize_size`` and the shorter
     ``floor(resize_size * short / long)``; the image is pasted on a ``resize_size`` square canvas
     filled with ``fill = round(255 * mean)`` (so padding normalises to about 0) at
     ``floor((resize_size - side) / 2)``. Nothing of the image is lost and its aspect is kept;
3. centre crop ``input_size`` x ``input_size`` at offset ``floor((side - input_size) / 2)``;
4. scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.

The ONNX exporter builds the same steps as graph ops from :meth:`Preprocess.to_dict`; change
one and you must change the other (tests compare them pixel by pixel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vr.errors import VrError

if TYPE_CHECKING:  # torch is imported where tensors are made: graphs (ONNX, TensorRT) are run without it
    import torch

INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
CROP_MODES = ("center", "squash", "pad")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize_size: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_mode: str = "center"
    border_crop: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.input_size < 8:
            raise VrError(f"image size {self.input_size} is too small (minimum 8)")
        if self.resize_size < self.input_size:
            raise VrError(f"resize size {self.resize_size} is smaller than the crop {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise VrError(f"unknown interpolation {self.interpolation!r}: use {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise VrError(f"unknown crop mode {self.crop_mode!r}: use {', '.join(CROP_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise VrError("mean and std need three values each, std > 0")
        if not 0.0 <= self.border_crop < 0.5:
            raise VrError(f"border crop {self.border_crop} must be in [0, 0.5)")

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    # --- geometry ------------------------------------------------------------------------
    def border_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) after the border crop."""
        bl, bt = int(w * self.border_crop), int(h * self.border_crop)
        return bl, bt, w - bl, h - bt

    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size step 2 resizes an h x w image to (before a pad mode's canvas)."""
        s = self.resize_size
        if self.crop_mode == "squash":
            return s, s
        if self.crop_mode == "pad":
            return (int(s * h / w), s) if h <= w else (s, int(s * w / h))
        if w <= h:
            return int(s * h / w), s
        return s, int(s * w / h)

    def canvas_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size of the image the views are cut from (step 2's output): the pad mode's square."""
        if self.crop_mode == "pad":
            return self.resize_size, self.resize_size
        return self.resized_hw(h, w)

    @property
    def fill(self) -> tuple[int, int, int]:
        """The pad mode's canvas colour: the normalisation mean in 0..255."""
        return tuple(int(round(255.0 * m)) for m in self.mean)

    def pad_offsets(self, nh: int, nw: int) -> tuple[int, int]:
        """(top, left) of a resized nh x nw image on the pad mode's canvas."""
        return (self.resize_size - nh) // 2, (self.resize_size - nw) // 2

    def crop_offsets(self, h: int, w: int) -> tuple[int, int]:
        """(top, left) of the centre crop inside an h x w resized image."""
        return (h - self.input_size) // 2, (w - self.input_size) // 2

    def resized(self, img: Image.Image) -> Image.Image:
        """Steps 1-2: border crop, resize (and the pad mode's canvas): the image the TTA views are cut from."""
        w, h = img.size
        box = self.border_box(h, w)
        if box != (0, 0, w, h):
            img = img.crop(box)
            w, h = img.size
        nh, nw = self.resized_hw(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), INTERPOLATIONS[self.interpolation])
        if self.crop_mode == "pad" and (nh, nw) != (self.resize_size, self.resize_size):
            canvas = Image.new("RGB", (self.resize_size, self.resize_size), self.fill)
            top, left = self.pad_offsets(nh, nw)
            canvas.paste(img, (left, top))
            img = canvas
        return img

    def geometry(self, img: Image.Image) -> Image.Image:
        """Steps 1-3: border crop, resize and centre crop a PIL RGB image (uint8 out)."""
        img = self.resized(img)
        top, left = self.crop_offsets(img.height, img.width)
        return img.crop((left, top, left + self.input_size, top + self.input_size))

    def to_uint8(self, img: Image.Image, crop: bool = True) -> torch.Tensor:
        """HWC uint8 -> CHW uint8 tensor after geometry (or only resize when crop=False)."""
        import torch

        out = self.geometry(img) if crop else self.resized(img)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)

    # --- tensors -------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,255] float NCHW/CHW -> normalised float32."""
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1) * 255.0
        return (x.float() - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image -> normalised CHW float32 tensor."""
        return self.normalize(self.to_uint8(img))


def resolve_preprocess(
    model_name: str | None = None,
    model: torch.nn.Module | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean=None,
    std=None,
    crop_mode: str = "center",
    border_crop: float = 0.0,
) -> Preprocess:
    """Resolve from timm's data config for the model, with any given value overriding it."""
    import timm.data

    cfg = {}
    if model is not None:
        cfg = timm.data.resolve_data_config({}, model=model)
    elif model_name is not None:
        pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
        if pretrained_cfg is not None:
            cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict())
    size = int(img_size or cfg.get("input_size", (3, 224, 224))[-1])
    pct = float(crop_pct if crop_pct is not None else cfg.get("crop_pct", 0.875))
    if not 0.0 < pct <= 1.0:
        raise VrError(f"crop_pct {pct} must be in (0, 1]")
    interp = interpolation or cfg.get("interpolation", "bicubic")
    if interp not in INTERPOLATIONS:
        interp = "bicubic"
    return Preprocess(
        input_size=size,
        resize_size=int(math.floor(size / pct)),
        interpolation=interp,
        mean=tuple(mean) if mean is not None else tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(std) if std is not None else tuple(cfg.get("std", IMAGENET_STD)),
        crop_mode=crop_mode,
        border_crop=border_crop,
    )
