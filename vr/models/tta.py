"""Test-time augmentation views, in torch. The ONNX exporter builds the same views in the graph.

Views are cut from the *resized* image (after border crop and resize, before the centre crop):
- ``none``: the centre crop;
- ``flip``: the centre crop and its horizontal mirror;
- ``five-crop``: the centre crop, then top-left, top-right, bottom-left, bottom-right corners;
- ``ten-crop``: the five crops followed by their horizontal mirrors.
Class probabilities (softmax) are averaged over the views.

The mode names are declared here once; this module imports torch only inside its functions, so
the configs (and the CLI at start-up) can read ``TTA_MODES`` for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vr.models.preprocess import Preprocess

VIEWS = {"none": 1, "flip": 2, "five-crop": 5, "ten-crop": 10}
TTA_MODES = tuple(VIEWS)


def num_views(mode: str) -> int:
    return VIEWS[mode]


def tta_views(resized: "torch.Tensor", pre: "Preprocess", mode: str) -> "torch.Tensor":
    """[C, H, W] resized image (any dtype) -> [V, C, S, S] views."""
    import torch

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


def batch_views(images: "list[Image.Image]", pre: "Preprocess", mode: str) -> "torch.Tensor":
    """PIL RGB images -> normalised [N, V, C, S, S] float32 views."""
    import torch

    crop_only = mode in ("none", "flip")
    out = []
    for img in images:
        x = pre.to_uint8(img, crop=crop_only)
        out.append(tta_views(x, pre, mode))
    return pre.normalize(torch.stack(out).flatten(0, 1)).unflatten(0, (len(images), -1))


def predict_views(model, views: "torch.Tensor", autocast=None) -> "torch.Tensor":
    """[N, V, C, S, S] -> [N, classes] probabilities averaged over the V views (float32)."""
    import torch

    n, v = views.shape[:2]
    x = views.flatten(0, 1)
    with torch.inference_mode():
        if autocast is not None:
            with autocast:
                logits = model(x)
        else:
            logits = model(x)
        return logits.float().softmax(-1).unflatten(0, (n, v)).mean(1)


AUTO = "auto"  # --tta auto: score every mode on labelled images, keep the best


def choose_tta(scores: list[dict]) -> str:
    """The mode with the best accuracy; ties go to the cheapest (fewest views). ``scores``: one
    {"tta", "accuracy", ...} per mode."""
    best = max(s["accuracy"] for s in scores)
    return min((s for s in scores if s["accuracy"] >= best - 1e-12), key=lambda s: VIEWS[s["tta"]])["tta"]


def tta_scores(accuracy_of, n_images: int, source: str) -> list[dict]:
    """Every mode scored by ``accuracy_of(mode) -> (correct, macro F1 or None)``, cheapest first."""
    out = []
    for mode in TTA_MODES:
        correct, f1 = accuracy_of(mode)
        out.append({"tta": mode, "views": VIEWS[mode], "accuracy": correct / n_images, "correct": int(correct),
                    "images": n_images, "macro_f1": f1, "source": source})
    return out


def print_tta_scores(scores: list[dict], chosen: str, what: str) -> None:
    from rich.table import Table

    from vr.util.console import console

    t = Table(title=f"--tta auto for {what}: every mode on {scores[0]['images']} images of {scores[0]['source']}",
              title_justify="left")
    for col in ("TTA", "views", "top-1", "correct", "macro F1", ""):
        t.add_column(col, justify="left" if col in ("TTA", "") else "right")
    for s in scores:
        f1 = "-" if s["macro_f1"] is None else f"{100 * s['macro_f1']:.2f}%"
        t.add_row(s["tta"], str(s["views"]), f"{100 * s['accuracy']:.2f}%", f"{s['correct']}/{s['images']}", f1,
                  "kept" if s["tta"] == chosen else "")
    console.print(t)
