"""The parity gate: the exported model must predict what the PyTorch checkpoint predicts.

Both sides see the same decoded images (:func:`vr.data.images.load_rgb`). PyTorch runs the
checkpoint's eval preprocessing (PIL) and the TTA views of :mod:`vr.models.tta`; the export runs
through its vr.runtime predictor, exactly as `vr eval` and `vr submit` will run it (raw images
batched by size, or host-resized where that is probed identical). The gate compares the class
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vr.errors import VrError

TIE_TOL = 1e-3  # PyTorch's top two within this: either answer is a coin flip, not a disagreement


@dataclass
class GateImages:
    images: list  # PIL RGB images
    names: list[str]
    labels: list[int] | None  # class indices in the checkpoint's order, when the folder has them
    source: str  # what was used, in words


@dataclass
class ParityResult:
    n: int
    agree: int  # same top-1
    ties: int  # different top-1, but PyTorch's top two within TIE_TOL
    max_abs_diff: float
    mean_abs_diff: float
    worst: str  # name of the image with the largest difference
    torch_correct: int | None = None
    export_correct: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        """Top-1 agreement, near-ties counted as agreeing."""
        return (self.agree + self.ties) / self.n

    @property
    def passed(self) -> bool:
        return not self.failures


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def _spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (keeps every class of a sorted ImageFolder)."""
    if len(items) <= count:
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def _has_class_folders(root: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())


def folder_images(root: str | Path, classes, count: int, what: str) -> GateImages:
    """Up to ``count`` decoded images of an ImageFolder or a flat folder."""
    from vr.data.folders import scan_flat_folder, scan_image_folder
    from vr.data.images import UnreadableImage, load_rgb
    from vr.util.console import warn

    root = Path(root)
    if not root.is_dir():
        raise VrError(f"{what} folder not found: {root}")
    labels: list[int] | None
    if _has_class_folders(root):
        scan = scan_image_folder(root, verify=False, what=what)
        picked = _spread(scan.samples, count)
        paths = [p for p, _ in picked]
        known = set(classes.names)
        if all(name in known for name in scan.classes.names):
            labels = [classes.index(scan.classes.names[i]) for _, i in picked]
        else:
            labels = None
    else:
        paths, _ = scan_flat_folder(root, verify=False, what=what)
        paths = _spread(paths, count)
        labels = None
    images, names, kept = [], [], []
    for i, p in enumerate(paths):
        try:
            images.append(load_rgb(p))
        except UnreadableImage as e:
            warn(f"parity gate: skipping {e}")
            continue
        names.append(str(p))
        kept.append(i)
    if not images:
        raise VrError(f"{what} folder {root} holds no readable images")
    if labels is not None:
        labels = [labels[i] for i in kept]
    return GateImages(images, names, labels, f"{len(images)} images from {root}")


def structured_image(rng: np.random.Generator, w: int, h: int, grid: tuple[int, int], shapes: int, min_div: int,
                     blur: float, noise: float):
    """A smooth picture: a low-frequency colour field, ``shapes`` ellipses and rectangles (sides
    from 1/min_div of the image), a Gaussian blur and Gaussian noise of ``noise`` grey levels, so
    resampling differences stay natural."""
    from PIL import Image, ImageDraw, ImageFilter

    coarse = rng.integers(0, 256, (*grid, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1 = x0 + int(rng.integers(w // min_div + 1, w // 2 + 2))
        y1 = y0 + int(rng.integers(h // min_div + 1, h // 2 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=blur))
    if not noise:
        return img
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def odd_size(base: int, scale: float, aspect: float) -> tuple[int, int]:
    """(w, h) with the shorter side ``base * scale`` and the aspect w/h, both sides odd."""
    short = max(9, int(base * scale) | 1)
    return (int(short * aspect) | 1, short) if aspect >= 1 else (short, int(short / aspect) | 1)


def synthetic_images(pre, n: int = 12, seed: int = 0) -> GateImages:
    """Smooth random pictures of varied sizes and both orientations, some smaller and some much
    larger than the resize size, odd sides included."""
    rng = np.random.default_rng(seed)
    # (scale of the shorter side relative to the resize size, aspect w/h)
    shapes = [(0.55, 1.0), (0.8, 0.75), (1.0, 1.33), (1.0, 1.0), (1.35, 0.62), (1.7, 1.5), (2.3, 0.8),
              (3.1, 1.25), (0.9, 2.2), (1.2, 0.45), (4.2, 0.7), (0.65, 1.77)]
    images, names = [], []
    for i in range(n):
        w, h = odd_size(pre.resize_size, *shapes[i % len(shapes)])
        grid = (int(rng.integers(3, 7)), int(rng.integers(3, 7)))
        images.append(structured_image(rng, w, h, grid, 4, 8, max(0.6, min(w, h) / 150), 4.0))
        names.append(f"generated_{i}_{w}x{h}")
    return GateImages(images, names, None, f"{n} generated images (no --verify folder and no val folder)")


def checkpoint_val_dir(ckpt) -> Path | None:
    data = (ckpt.config or {}).get("data")
    if not data:
        return None
    val = Path(str(data)) / "val"
    return val if val.is_dir() else None


def gate_images(ckpt, verify: Path | None, count: int) -> GateImages:
    """--verify DIR when given, else the checkpoint's val folder when it still exists, else a
    generated set."""
    if verify is not None:
        return folder_images(verify, ckpt.classes, count, "--verify")
    val = checkpoint_val_dir(ckpt)
    if val is not None:
        g = folder_images(val, ckpt.classes, count, "val")
        g.source += " (the checkpoint's val folder)"
        return g
    return synthetic_images(ckpt.preprocess, n=min(count, 12))


# ---------------------------------------------------------------------------------------------
# Running both sides
# ---------------------------------------------------------------------------------------------
def torch_probs(model, pre, images: Sequence, tta: str, batch_size: int = 8) -> np.ndarray:
    """PyTorch reference: PIL preprocessing + torch TTA views, [N, C] float32."""
    from vr.models.tta import batch_views, predict_views

    out = []
    for i in range(0, len(images), batch_size):
        views = batch_views(list(images[i:i + batch_size]), pre, tta)
        out.append(predict_views(model, views).numpy())
    return np.concatenate(out).astype(np.float32)


def ensemble_torch_probs(models: Sequence, pres: Sequence, weights: Sequence[float], orders: Sequence,
                         images: Sequence, tta: str) -> np.ndarray:
    """PyTorch reference of an ensemble (or of one model): sum_i w_i * torch_probs of member i with
    its own preprocessing, each member's columns put in the first member's class order."""
    total = None
    for model, pre, w, order in zip(models, pres, weights, orders):
        p = torch_probs(model, pre, images, tta).astype(np.float64)
        if order is not None:
            p = p[:, order]
        total = w * p if total is None else total + w * p
    return total.astype(np.float32)


@dataclass(frozen=True)
class GateBars:
    """What an export must meet. ``atol``: the largest |Δp| (None: unbounded, INT8); ``max_drop``:
    the most top-1 accuracy may fall (INT8; without labels the agreement must then be at least
    1 - max_drop, which bounds the accuracy change as tightly)."""

    atol: float | None
    min_agreement: float
    max_drop: float | None = None


FP16_ATOL = 0.05  # half precision moves probabilities more than the preprocessing does
INT8_MAX_DROP = 0.01


def gate_bars(precision: str, atol: float, min_agreement: float) -> GateBars:
    """fp32: --atol and --min-agreement; fp16/bf16: top-1 agreement >= min(--min-agreement, 99.5%)
    and |Δp| <= max(--atol, FP16_ATOL); int8: top-1 accuracy within 1 point of PyTorch's."""
    if precision in ("fp16", "bf16"):
        return GateBars(max(atol, FP16_ATOL), min(min_agreement, 0.995))
    if precision == "int8":
        return GateBars(None, 0.0, INT8_MAX_DROP)
    return GateBars(atol, min_agreement)


def compare(ref: np.ndarray, got: np.ndarray, names: Sequence[str], labels: Sequence[int] | None,
            atol: float | None, min_agreement: float, max_drop: float | None = None) -> ParityResult:
    if ref.shape != got.shape:
        r = ParityResult(len(names), 0, 0, float("inf"), float("inf"), "-")
        r.failures.append(f"output shape {tuple(got.shape)} differs from PyTorch's {tuple(ref.shape)}")
        return r
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    per_image = diff.max(axis=1)
    a_ref, a_got = ref.argmax(1), got.argmax(1)
    same = a_ref == a_got
    rows = np.arange(len(ref))
    tie = ~same & (ref[rows, a_ref] - ref[rows, a_got] <= TIE_TOL)
    if not np.isfinite(got).all():
        per_image = np.where(np.isfinite(got).all(1), per_image, np.inf)
    worst = int(per_image.argmax())
    r = ParityResult(
        n=len(ref), agree=int(same.sum()), ties=int(tie.sum()),
        max_abs_diff=float(per_image.max()), mean_abs_diff=float(diff.mean()),
        worst=str(names[worst]))
    if labels is not None:
        lab = np.asarray(labels)
        r.torch_correct, r.export_correct = int((a_ref == lab).sum()), int((a_got == lab).sum())
    if atol is not None and not r.max_abs_diff <= atol:
        r.failures.append(f"max probability difference {r.max_abs_diff:.4g} > --atol {atol:g} (worst: {Path(r.worst).name})")
    if r.agreement < min_agreement:
        r.failures.append(f"top-1 agreement {r.agreement:.2%} < --min-agreement {min_agreement:.2%}")
    if max_drop is not None:
        if r.torch_correct is not None:
            drop = (r.torch_correct - r.export_correct) / r.n
            if drop > max_drop + 1e-12:
                r.failures.append(f"top-1 accuracy {r.export_correct / r.n:.2%} is {100 * drop:.2f} points below "
                                  f"PyTorch's {r.torch_correct / r.n:.2%} (at most {100 * max_drop:g} allowed)")
        elif r.agreement < 1 - max_drop:
            r.failures.append(f"top-1 agreement {r.agreement:.2%} < {1 - max_drop:.0%} (no labels to measure the "
                              f"accuracy drop, which this bounds to {100 * max_drop:g} point)")
    return r


def print_result(r: ParityResult, what: str, source: str) -> None:
    from rich.table import Table

    from vr.util.console import console

    t = Table(title=f"parity gate: PyTorch vs {what}", title_justify="left", show_header=True)
    t.add_column("check")
    t.add_column("value", justify="right")
    t.add_column("result")
    t.add_row("images", str(r.n), source)
    ties = f" + {r.ties} near-ties" if r.ties else ""
    t.add_row("top-1 agreement", f"{r.agreement:.2%}", f"{r.agree}/{r.n} same{ties}")
    t.add_row("max |Δprob|", f"{r.max_abs_diff:.2e}", f"mean {r.mean_abs_diff:.1e}; worst {Path(r.worst).name}")
    if r.torch_correct is not None:
        t.add_row("accuracy", f"{r.export_correct / r.n:.2%}", f"PyTorch {r.torch_correct / r.n:.2%}")
    t.add_row("verdict", "PASS" if r.passed else "FAIL", "; ".join(r.failures))
    console.print(t)


def cpu_predictor(path: Path, precision: str, scratch: Path):
    """The ONNX Runtime CPU predictor of a temporary graph, and what it is in words. A precision
    ONNX Runtime cannot execute on the CPU (bf16) runs as its fp32 emulation (vr.export.precision:
    the same weights, every low-precision tensor rounded at each op boundary), said so: the gate then
    measures the precision's rounding, not TensorRT's accumulation."""
    from vr.export.precision import emulated_for_gate, runnable_on_ort_cpu
    from vr.runtime.load import load_predictor
    from vr.runtime.metadata import read_metadata

    if runnable_on_ort_cpu(precision):
        return load_predictor(path, device="cpu", runtime="onnxruntime"), "ONNX Runtime (CPU)"
    import onnx

    emulated = scratch / f"emulated.{precision}.onnx"
    onnx.save(emulated_for_gate(onnx.load(str(path)), precision), str(emulated))
    return (load_predictor(emulated, device="cpu", runtime="onnxruntime", metadata=read_metadata(path)),
            f"ONNX Runtime (CPU) on the {precision} graph emulated in fp32 (no {precision} CPU kernels)")


def check_parity(predictor, ref: np.ndarray, gate: GateImages, what: str, bars: GateBars) -> ParityResult:
    """Score the gate images with ``predictor`` (vr.runtime: the same code eval and submit run),
    compare with ``ref``, print the table; VrError on failure."""
    from vr.runtime.base import check_finite

    got = check_finite(predictor.predict(gate.images), predictor.path, gate.names)
    r = compare(ref, got, gate.names, gate.labels, bars.atol, bars.min_agreement, bars.max_drop)
    print_result(r, what, gate.source)
    if not r.passed:
        raise VrError(f"parity gate failed for {what}: {'; '.join(r.failures)}. Nothing was written.")
    return r
