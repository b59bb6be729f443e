"""The golden set every export carries, so a model can be checked on any machine without data.

``vr export`` stores in the model's metadata (key ``golden``) a few input images as PNG (smooth
synthetic pictures by default; ``--golden DIR`` adds real ones), PyTorch's fp32 probabilities for
them, and the tolerance the model must meet on them: the precision's bound, widened to twice what
the gated artefact itself measured at export when that is larger (an INT8 graph on synthetic,
off-distribution pictures moves further than on real ones). A ``graph_sha256`` of the graph
(weights included, metadata excluded) lets ``vr verify`` tell a changed file from a drifting
runtime. ``vr verify MODEL`` and ``vr export --trt`` (on the fresh engine) run ``check_golden``.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from vr.errors import VrError

GOLDEN_ATOL = {"fp32": 0.01, "fp16": 0.05, "bf16": 0.05, "int8": 0.15}


def synthetic_golden(pre, n: int = 4, seed: int = 1) -> tuple[list, list[str]]:
    """Smooth structured pictures (colour fields, shapes, no noise: small PNGs) in both
    orientations, smaller and larger than the resize size, odd sides included."""
    from vr.export.parity import odd_size, structured_image

    rng = np.random.default_rng(seed)
    shapes = [(1.0, 1.33), (1.35, 0.62), (0.8, 1.0), (1.15, 1.77)]
    images, names = [], []
    for i in range(n):
        w, h = odd_size(pre.resize_size, *shapes[i % len(shapes)])
        images.append(structured_image(rng, w, h, (4, 4), 5, 6, 1.0, 0.0))
        names.append(f"golden_{i}_{w}x{h}")
    return images, names


def real_golden(folder: Path, count: int) -> tuple[list, list[str]]:
    """``count`` images spread over a folder (ImageFolder or flat), for --golden DIR."""
    from vr.export.calibration import calibration_sample
    from vr.data.images import load_rgb

    paths = calibration_sample(folder, count)
    return [load_rgb(p) for p in paths], [p.name for p in paths]


def png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def golden_images(golden: dict) -> list:
    from PIL import Image

    try:
        return [Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB") for s in golden["images"]]
    except Exception as e:  # a damaged metadata entry
        raise VrError(f"the golden set's images cannot be decoded ({type(e).__name__})") from e


def build_golden(images: Sequence, names: Sequence[str], expected: np.ndarray, source: str) -> dict:
    return {"images": [png_b64(im) for im in images], "names": list(names),
            "expected": np.round(np.asarray(expected, dtype=np.float64), 7).tolist(), "source": source}


def with_tolerance(golden: dict, precision: str, measured: float) -> dict:
    """The golden set with its tolerance: the precision's bound, or twice what was measured on the
    exported artefact at export if that is more."""
    atol = max(GOLDEN_ATOL.get(precision, GOLDEN_ATOL["fp32"]), 2.0 * float(measured))
    return {**golden, "precision": precision, "atol": round(atol, 6), "measured_at_export": round(float(measured), 7)}


def graph_sha256(model) -> str:
    """sha256 of the graph (nodes and weights), not of the metadata that carries it."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def add_to_onnx(path: Path, extra: dict) -> None:
    """Add metadata keys to the .onnx at ``path`` (a temporary file not yet committed) in place,
    with the graph hash."""
    import onnx

    from vr.runtime.metadata import encode

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(encode({**extra, "graph_sha256": graph_sha256(model)}))
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
