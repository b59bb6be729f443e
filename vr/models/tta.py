"""Test-time augmentation views, in torch. The ONNX exporter builds the same views in the graph.

Views are cut from the *resized* image (after border crop and resize, before the centre crop):
- ``none``: the centre crop;
- ``flip``: the centre crop and its horizontal mirror;
- ``five-crop``: the centre crop, then top-left, top-right, bottom-left, bottom-right corners;
- ``ten-crop``: the five crops followed by their horizontal mirrors.
Class probabilities (softmax) are averaged over the views.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from vr.models.preprocess import Preprocess

TTA_MODES = ("none", "flip", "five-crop", "ten-crop")


def num_views(mode: str) -> int:
    return {"none": 1, "flip": 2, "five-crop": 5, "ten-crop": 10}[mode]


def tta_views(resized: torch.Tensor, pre: Preprocess, mode: str) -> torch.Tensor:
    """[C, H, W] resized image (any dtype) -> [V, C, S, S] views."""
    s = pre.input_size
    h, w = resized.shape[-2:]
    top, left = pre.crop_offsets(h, w)
    centre = resized[..., top:top + s, left:left + s]
    if mode == "none":
        return centre.unsqueeze(0)
    if mode == "flip":
        return torch.stack([centre, centre.flip(-1)])
    crops = [centre, resized[..., :s, :s], resized[..., :s, w - s:], resized[..., h - s:, :s],
             resized[..., h - s:, w - s:]]
    views = torch.stack(crops)
    if mode == "ten-crop":
        views = torch.cat([views, views.flip(-1)])
    return views


def batch_views(images: list[Image.Image], pre: Preprocess, mode: str) -> torch.Tensor:
    """PIL RGB images -> normalised [N, V, C, S, S] float32 views."""
    crop_only = mode in ("none", "flip")
    out = []
    for img in images:
        x = pre.to_uint8(img, crop=crop_only)
        out.append(tta_views(x, pre, mode))
    return pre.normalize(torch.stack(out).flatten(0, 1)).unflatten(0, (len(images), -1))


@torch.inference_mode()
def predict_views(model: nn.Module, views: torch.Tensor, autocast=None) -> torch.Tensor:
    """[N, V, C, S, S] -> [N, classes] probabilities averaged over the V views (float32)."""
    n, v = views.shape[:2]
    x = views.flatten(0, 1)
    if autocast is not None:
        with autocast:
            logits = model(x)
    else:
        logits = model(x)
    return logits.float().softmax(-1).unflatten(0, (n, v)).mean(1)
