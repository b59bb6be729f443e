"""Run a predictor over image files: decoding and host preprocessing in worker processes
(vr.runtime.decode), the model in the main process, timed per batch. Images for a graph (ONNX, TensorRT), whose batches
must share one size, are batched by the size they will have, read from the file headers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vr.data.images import UnreadableImage, load_rgb
from vr.errors import VrError
from vr.runtime.base import Predictor
from vr.util.phases import mark


@dataclass
class PredictionRun:
    probs: np.ndarray  # [N, C] float32, in the order of the paths
    batch_seconds: list[float] = field(default_factory=list)  # model time of each batch
    batch_sizes: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0  # whole loop: waiting for decoded images included, warm-up excluded
    member_probs: np.ndarray | None = None  # [M, N, C] for an ensemble: each member's own probabilities

    @property
    def images_per_second(self) -> float:
        n = int(sum(self.batch_sizes))
        return float(n / self.wall_seconds) if self.wall_seconds > 0 else 0.0

    def latency_ms(self) -> dict:
        """Model time per batch (decoding excluded), p50 and p95, in milliseconds."""
        ms = np.asarray(self.batch_seconds, dtype=np.float64) * 1000.0
        if ms.size == 0:
            return {"p50": None, "p95": None, "mean": None, "per": "batch", "batches": 0}
        return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3),
                "mean": round(float(ms.mean()), 3), "per": "batch", "batches": int(ms.size),
                "batch_size": int(max(self.batch_sizes))}

    def timing(self) -> dict:
        model_s = float(sum(self.batch_seconds))
        n = int(sum(self.batch_sizes))
        return {"images_per_second": round(self.images_per_second, 2),
                "model_images_per_second": round(n / model_s, 2) if model_s > 0 else 0.0,
                "latency_ms": self.latency_ms(), "wall_seconds": round(self.wall_seconds, 3)}


class ImageFiles:
    """Map-style dataset: index -> (index, prepared item or None, reason it could not be read)."""

    def __init__(self, paths: Sequence[Path], prepare: Callable[[Any], Any]):
        self.paths = list(paths)
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.paths[i])
        except UnreadableImage as e:
            return i, None, str(e)
        return i, self.prepare(img), None


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of the image as load_rgb will return it (EXIF rotation applied), read
    from the file header only; None when the header cannot be read (decoding will say why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
    except Exception:
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def size_batches(paths: Sequence[Path], shape_for: Callable[[int, int], tuple], batch_size: int,
                 threads: int = 4) -> list[list[int]]:
    """Batches of indices in which images share the shape the predictor will be fed: full
    batches of one shape first, then the leftovers of every shape together (the predictor
    still groups those by shape). The caller puts results back by index."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, threads))) as pool:
        sizes = list(pool.map(header_size, paths, chunksize=64))
    groups: dict[Any, list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(shape_for(*hw) if hw is not None else None, []).append(i)
    batches, rest = [], []
    for idx in groups.values():
        full = len(idx) - len(idx) % batch_size
        batches += [idx[j:j + batch_size] for j in range(0, full, batch_size)]
        rest += idx[full:]
    batches += [rest[j:j + batch_size] for j in range(0, len(rest), batch_size)]
    return batches


def predict_files(predictor: Predictor, paths: Sequence[Path], batch_size: int | None = None, workers: int = 0,
                  advance: Callable[[int], None] | None = None) -> PredictionRun:
    """Probabilities for every file; an image that cannot be decoded is an error naming it."""
    from vr.runtime.decode import iter_batches

    bs = batch_size or predictor.batch_size
    shape_for = getattr(predictor.preparer, "shape_for", None)
    if shape_for is not None and len(paths) > bs:  # graph input: batch the images by size
        batches = size_batches(paths, shape_for, bs, threads=max(2, workers))
        mark("image sizes from headers")
    else:
        batches = [list(range(j, min(j + bs, len(paths)))) for j in range(0, len(paths), bs)]
    loader = iter_batches(ImageFiles(paths, predictor.preparer), batches, workers)
    try:
        result = _predict_batches(predictor, paths, loader, advance)
    finally:
        loader.close()  # stops the workers now, also when a batch failed
    mark("predict loop")
    from vr.runtime.base import check_finite

    check_finite(result.probs, predictor.path, paths)
    return result


def _predict_batches(predictor: Predictor, paths: Sequence[Path], loader, advance) -> PredictionRun:
    """The timed loop over the decoded batches (the first one also warms the model up, untimed)."""
    result = PredictionRun(np.zeros((len(paths), predictor.num_classes), dtype=np.float32))
    with_members = getattr(predictor, "run_with_members", None)  # an ensemble: keep each member's vote too
    warm_seconds = 0.0
    start = time.perf_counter()
    for batch in loader:
        bad = [reason for _, item, reason in batch if item is None]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise VrError(f"unreadable image {bad[0]}{more}")
        idx = [i for i, _, _ in batch]
        items = [item for _, item, _ in batch]
        if not result.batch_sizes:  # untimed warm-up: first-call costs (allocation, kernel choice)
            mark("first batch")
            t = time.perf_counter()
            _run(predictor, items[:1], [paths[idx[0]]])
            warm_seconds = time.perf_counter() - t
        t = time.perf_counter()
        if with_members is not None:
            probs, member_probs = _run(with_members, items, [paths[i] for i in idx])
            if result.member_probs is None:
                result.member_probs = np.zeros((len(member_probs), len(paths), predictor.num_classes), np.float32)
            result.member_probs[:, idx] = member_probs
        else:
            probs = _run(predictor, items, [paths[i] for i in idx])
        result.batch_seconds.append(time.perf_counter() - t)
        result.batch_sizes.append(len(items))
        result.probs[idx] = probs
        if advance is not None:
            advance(len(items))
    result.wall_seconds = time.perf_counter() - start - warm_seconds
    return result


def _run(fn, items: list, paths: list[Path]):
    """``fn(items)`` (a predictor or its run_with_members); a runtime failure (out of memory, a
    shape the runtime refuses) is one line naming the batch's images."""
    run = getattr(fn, "run", fn)
    try:
        return run(items)
    except VrError as e:
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        raise VrError(f"{e} (images: {paths[0]}{more})") from e
    except MemoryError as e:
        raise VrError(f"out of memory predicting {paths[0]}{f' and {len(paths) - 1} more' if len(paths) > 1 else ''}: "
                      f"lower --batch-size") from e
