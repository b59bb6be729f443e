"""The one predictor interface, and the host-side preparers that run in DataLoader workers.

Every predictor has ``classes`` (ClassMap), ``runtime``, ``provider`` (what actually ran, read back
from the runtime), ``tta``, and works in two steps so that image decoding and host-side
preprocessing can run in DataLoader workers:

- ``preparer(img)``: PIL RGB image -> the array the runtime takes (picklable, cheap to ship);
- ``run(prepared)``: list of prepared items -> float32 probabilities [N, C].

``predict(images)`` does both. The parity gate, eval, submit, predict, verify and the benchmarks
only ever see this interface.

Graphs (ONNX Runtime, TensorRT: ``GraphPredictor``) take uint8 [N, H, W, 3] RGB images and hold
the preprocessing and the TTA themselves; images in one batch must share a size, so ``run``
groups its items by size. To make such groups large, the host may do the resize (and, for the
centre-crop views, trim the long side) itself when that is exactly equivalent: the graph's resize
is then the identity. Equivalence is not assumed but measured when the model is loaded: the
graph's output on random images fed raw and host-resized must agree to 1e-6, else the raw images
are fed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from vr.data.classes import ClassMap
from vr.errors import VrError
from vr.models.preprocess import Preprocess

HOST_RESIZE_TOLERANCE = 1e-6
# The most pixels a graph's ONNX Resize op may be asked to make of one image (it makes the whole
# resized image before the crop): beyond, one line instead of an allocation failure.
MAX_RESIZED_PIXELS = 64_000_000


# --- host-side preparation (picklable: runs in DataLoader workers) ----------------------------
@dataclass(frozen=True)
class TorchViews:
    """PIL image -> uint8 [V, 3, S, S] TTA views (normalised later, on the model's device)."""

    pre: Preprocess
    tta: str

    def __call__(self, img: Image.Image):
        from vr.models.tta import tta_views

        x = self.pre.to_uint8(img, crop=self.tta in ("none", "flip"))
        return tta_views(x, self.pre, self.tta).contiguous()


@dataclass(frozen=True)
class RawRGB:
    """PIL image -> uint8 [H, W, 3], as is: the graph does all the preprocessing."""

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))

    def shape_for(self, h: int, w: int) -> tuple:
        """The shape ``__call__`` gives an h x w image (so batches can be made of one size)."""
        return (h, w, 3)


def compact_long_side(arr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Trim a resized [H, W, 3] image to R or R+1 along each side longer than R = resize_size,
    keeping the centre crop where it was: the parity of the trimmed length matches the original
    so ``(L - S) // 2 - start == (L' - S) // 2`` exactly. The graph's resize of the result is the
    identity (shorter side already R, longer side R * L' / R = L')."""
    r = pre.resize_size
    slices = []
    for length in arr.shape[:2]:
        if length <= r + 1:
            slices.append(slice(None))
            continue
        keep = r if (length - r) % 2 == 0 else r + 1
        start = (length - keep) // 2
        slices.append(slice(start, start + keep))
    return arr[slices[0], slices[1]]


@dataclass(frozen=True)
class HostResize:
    """PIL image -> uint8 [H', W', 3] already border-cropped and resized on the host (and, for the
    centre-crop views, trimmed to R or R+1 on the long side) so that most images share a size."""

    pre: Preprocess
    compact: bool

    def __call__(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(self.pre.resized(img), dtype=np.uint8)
        if self.compact:
            arr = compact_long_side(arr, self.pre)
        return np.ascontiguousarray(arr)

    def shape_for(self, h: int, w: int) -> tuple:
        bl, bt, br, bb = self.pre.border_box(h, w)
        h, w = self.pre.canvas_hw(bb - bt, br - bl)
        if self.compact:
            r = self.pre.resize_size
            h, w = (n if n <= r + 1 else (r if (n - r) % 2 == 0 else r + 1) for n in (h, w))
        return (h, w, 3)


# --- the interface --------------------------------------------------------------------------
@dataclass
class Predictor:
    path: Path
    classes: ClassMap
    tta: str
    batch_size: int
    runtime: str = ""
    provider: str = ""
    preprocess: Preprocess | None = None
    preparer: Callable[[Image.Image], Any] = field(default_factory=RawRGB)
    host_preprocess: str = "none"
    notes: list[str] = field(default_factory=list)
    execution_providers: list[str] = field(default_factory=list)  # everything the session runs on, in order
    param_count: int | None = None  # None: unknown (a graph exported without the count)
    precision: str = "fp32"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def param_counts(self) -> list[int | None]:
        """Parameters per member (one entry for a single model), for the --max-params budget."""
        return [self.param_count]

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> float32 probabilities [N, C], in batches of ``batch_size``."""
        out = np.zeros((len(images), self.num_classes), dtype=np.float32)
        for i in range(0, len(images), self.batch_size):
            chunk = [img if img.mode == "RGB" else img.convert("RGB") for img in images[i:i + self.batch_size]]
            out[i:i + len(chunk)] = self.run([self.preparer(img) for img in chunk])
        return out

    def describe(self) -> dict:
        return {"path": str(self.path), "runtime": self.runtime, "provider": self.provider, "tta": self.tta,
                "precision": self.precision, "execution_providers": list(self.execution_providers or [self.provider]),
                "host_preprocess": self.host_preprocess, "num_classes": self.num_classes,
                "param_count": self.param_count}

    def check_probs(self, probs: np.ndarray, n: int) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (n, self.num_classes):
            raise VrError(f"{self.path} returned an output of shape {tuple(probs.shape)}, expected "
                          f"({n}, {self.num_classes}) for its {self.num_classes} class names")
        return probs


def check_finite(probs: np.ndarray, model: str | Path, names: Sequence[str | Path]) -> np.ndarray:
    """Probabilities with a NaN or an infinity are one line naming the model, how many images and
    the first of them: a broken export, weights or runtime, never a score."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        first = names[int(np.flatnonzero(bad)[0])]
        raise VrError(f"{model} gave NaN or infinite probabilities for {int(bad.sum())} of {len(probs)} image(s), "
                      f"e.g. {first}: its weights or its runtime are broken")
    return probs


def check_baked_tta(path: Path, requested: str | None, baked: str) -> str:
    if requested is not None and requested != baked:
        raise VrError(f"{path.name} was exported with TTA {baked!r}, which is part of its graph; --tta {requested} "
                      f"cannot change it: leave --tta out or re-export with --tta {requested}")
    return baked


def int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


class GraphPredictor(Predictor):
    """Shared by the graph runtimes: uint8 [N, H, W, 3] in, probabilities out. A backend sets
    ``max_batch`` (0: any), ``static_batch`` (the one batch size a fixed-batch graph takes, else 0)
    and implements ``run_array``."""

    max_batch: int = 0
    static_batch: int = 0
    metadata: dict | None = None

    def init_graph(self, path: Path, meta: dict, tta: str | None, batch_size: int, runtime: str) -> None:
        """The Predictor fields every graph takes from its metadata."""
        Predictor.__init__(self, path, ClassMap(tuple(meta["class_names"])), check_baked_tta(path, tta, meta["tta"]),
                           batch_size, runtime=runtime,
                           preprocess=Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else None,
                           param_count=int_or_none(meta.get("param_count")), precision=meta.get("precision", "fp32"))
        self.metadata = meta

    def param_counts(self) -> list[int | None]:
        """An ensemble graph's members one by one (its metadata lists them), else the total."""
        members = (self.metadata or {}).get("members")
        counts = [int_or_none(m.get("param_count")) for m in members if isinstance(m, dict)] \
            if isinstance(members, list) else []
        return counts if counts and None not in counts else [self.param_count]

    def run_array(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(prepared), self.num_classes), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, arr in enumerate(prepared):
            groups.setdefault(arr.shape, []).append(i)
        step = self.static_batch or self.max_batch or self.batch_size
        for shape in groups:
            self.check_size(shape)
        for idx in groups.values():
            for j in range(0, len(idx), step):
                part = idx[j:j + step]
                batch = np.stack([prepared[k] for k in part])
                if self.static_batch and len(part) < self.static_batch:  # fill a fixed batch, keep the real rows
                    batch = np.concatenate([batch, np.repeat(batch[-1:], self.static_batch - len(part), axis=0)])
                probs = np.asarray(self.run_array(batch))[: len(part)]
                out[part] = self.check_probs(probs, len(part))
        return out

    def check_size(self, shape: tuple) -> None:
        """A graph resizing with the ONNX Resize op makes the whole resized image: refuse one whose
        resized size is absurd (a 1 x 5000 strip resizes to 256 x 1,280,000) in one line. The MatMul
        resize computes only what the crop needs, so its memory grows with the side alone."""
        pre, impl = self.preprocess, (self.metadata or {}).get("resize_impl")
        if pre is None or impl == "matmul" or len(shape) != 3:
            return
        h, w = shape[:2]
        bl, bt, br, bb = pre.border_box(h, w)
        nh, nw = pre.resized_hw(bb - bt, br - bl)
        if nh * nw > MAX_RESIZED_PIXELS:
            raise VrError(f"a {h}x{w} image would be resized to {nh}x{nw} ({nh * nw / 1e6:.0f} Mpx) inside "
                          f"{self.path.name}, over the {MAX_RESIZED_PIXELS / 1e6:.0f} Mpx vr feeds a graph: crop the "
                          f"image, or export with --resize-impl matmul (its memory grows only with the image side)")

    def choose_host_preprocess(self, allow: bool) -> None:
        """Use HostResize when the graph gives the same output for it as for raw images.

        Probed on random images (downscaled landscape and portrait, and upscaled); any difference
        above HOST_RESIZE_TOLERANCE keeps the raw images, so that what is measured is the graph
        as it runs when deployed, its own resize included.
        """
        pre = self.preprocess
        self.preparer, self.host_preprocess = RawRGB(), "none: raw images, batched by size"
        if not allow or pre is None or pre.border_crop > 0:
            return
        members = (self.metadata or {}).get("members") or []
        if len({json.dumps(m.get("preprocess"), sort_keys=True) for m in members if isinstance(m, dict)}) > 1:
            # Each member of the ensemble graph resizes to its own size: no one host resize fits all.
            self.host_preprocess = "none: raw images, batched by size (the ensemble's members preprocess differently)"
            return
        candidate = HostResize(pre, compact=self.tta in ("none", "flip"))
        rng = np.random.default_rng(0)
        r = pre.resize_size
        for h, w in ((2 * r + 7, 3 * r + 4), (3 * r + 5, 2 * r + 2), (r // 2 + 5, r // 2 + 8)):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            try:
                raw = self.run([np.asarray(img)])
                host = self.run([candidate(img)])
            except VrError as e:  # e.g. a probe size outside a TensorRT optimisation profile
                self.host_preprocess = f"none: raw images, batched by size (probe failed: {e})"
                return
            diff = float(np.abs(np.asarray(raw, dtype=np.float64) - host).max())
            if not diff <= HOST_RESIZE_TOLERANCE:
                self.host_preprocess = (f"none: raw images, batched by size (the graph's resize differs from "
                                        f"PIL's: probe diff {diff:.2g})")
                return
        self.preparer = candidate
        self.host_preprocess = "resize on host (probed: identical graph output)"
