"""ONNX export with the eval preprocessing and test-time augmentation inside the graph.

The exported model takes what a decoder gives: ``images``, uint8 ``[N, H, W, 3]`` RGB, with N, H and
W dynamic (all images of one batch share a size). It returns ``probs``, float32 ``[N, C]``: the
softmax probabilities averaged over the TTA views. Inside, in the order of
:mod:`vr.models.preprocess`:

1. border crop, ``floor(side * border_crop)`` from each edge (integer arithmetic on the runtime
   shape);
2. resize as PIL does it: two 1-D passes, each rounded to uint8 (Clip + Round), with PIL's
   antialiasing filter when downscaling. The new size is computed in the graph from ``Shape``,
   never traced from an example. Pillow < 13 always resizes the width first; Pillow >= 13
   (python-pillow/Pillow#9549) resizes the height first when ``h - nh > 2 * (w - nw)`` and the
   height shrinks. The exporter probes the installed Pillow and builds the same rule in;
3. the TTA views cut from the resized image (``none``: the centre crop at
   ``floor((side - S) / 2)``), as :func:`vr.models.tta.tta_views` cuts them;
4. normalisation, exactly ``(x - 255 * mean) / (255 * std)`` in float32;
5. the backbone (exported with the TorchScript exporter), softmax, and the mean over the views.

An ensemble (:func:`build_ensemble_onnx`) is one graph with the same input and output: the
``images`` input feeds each member's own steps 1-5 (nodes ``pre/m<i>/...`` and ``net/m<i>/...``),
and ``probs`` is the weighted sum of the members' outputs (nodes ``ens/...``).

Two implementations of the resize exist (``resize_impl``):

- ``"resize"``: ONNX ``Resize`` (opset 18, ``antialias=1``, ``half_pixel``, ``cubic_coeff_a=-0.5``).
  Fast on ONNX Runtime; not every runtime implements ``antialias`` (TensorRT 10 rejects it).
- ``"matmul"``: PIL's own filter weights (triangle / Keys cubic a=-0.5, stretched when
  downscaling, renormalised at the borders, quantised to PIL's 22 fractional bits) computed in the
  graph from the runtime sizes with Range/arithmetic, applied as one MatMul per axis. Only plain
  ops, so TensorRT can build it; dense, so it costs ``O(H * W * new_side)`` per pass.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from vr.errors import VrError, first_line
from vr.export.config import MAX_OPSET, MIN_OPSET, RESIZE_IMPLS
from vr.models.preprocess import Preprocess
from vr.models.tta import TTA_MODES, num_views
from vr.runtime import metadata as vr_meta
from vr.runtime.metadata import INPUT_CONTRACT, INPUT_NAME, OUTPUT_NAME

PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2 fractional bits for 8-bit images


# ---------------------------------------------------------------------------------------------
# A small graph builder
# ---------------------------------------------------------------------------------------------
class _Builder:
    """Append ONNX nodes with unique names; constants become initializers."""

    def __init__(self, prefix: str = "pre/"):
        import onnx  # noqa: F401  (fail early with the import error, not half way)

        self.prefix = prefix
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0

    def const(self, value, dtype, hint: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64, "i64")

    def i64_scalar(self, value: int) -> str:
        return self.const(value, np.int64, "i64s")

    def f32(self, value, hint: str = "f32") -> str:
        return self.const(value, np.float32, hint)

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self._name(op_type), **attrs))
        return out

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def scalar(self, x: str) -> str:
        """[1] -> [] (Range wants scalars)."""
        return self.op("Squeeze", x, self.i64(0))

    def dim(self, shape: str, axis: int) -> str:
        """One entry of a shape as an int64 [1] tensor."""
        return self.op("Slice", shape, self.i64(axis), self.i64(axis + 1))


# ---------------------------------------------------------------------------------------------
# Preprocessing subgraph
# ---------------------------------------------------------------------------------------------
def _border_fraction(border_crop: float) -> tuple[int, int] | None:
    """``border_crop`` as p/q such that (side * p) // q == int(side * border_crop) for every side
    up to 65536 (so the graph needs integer arithmetic only); None if no small fraction does."""
    frac = Fraction(str(border_crop)).limit_denominator(10000)
    p, q = frac.numerator, frac.denominator
    sides = np.arange(1, 65537, dtype=np.int64)
    exact = (sides * float(border_crop)).astype(np.int64)  # IEEE double, truncated: int(side * border_crop)
    return (p, q) if np.array_equal(sides * p // q, exact) else None


def _border_amount(g: _Builder, side: str, border_crop: float) -> str:
    pq = _border_fraction(border_crop)
    if pq is not None:
        p, q = pq
        return g.op("Div", g.op("Mul", side, g.i64(p)), g.i64(q))
    # An unusual fraction: float64 arithmetic, as Python computes int(side * border_crop).
    from onnx import TensorProto

    prod = g.op("Mul", g.op("Cast", side, to=TensorProto.DOUBLE), g.const([border_crop], np.float64))
    return g.op("Cast", g.op("Floor", prod), to=TensorProto.INT64)


def _resized_hw(g: _Builder, h: str, w: str, pre: Preprocess) -> tuple[str, str]:
    """In-graph twin of Preprocess.resized_hw (int64 [1] tensors)."""
    s = g.i64(pre.resize_size)
    if pre.crop_mode == "squash":
        return s, s
    if pre.crop_mode == "pad":  # the longer side becomes s (h <= w: the width)
        landscape = g.op("LessOrEqual", h, w)
        nh = g.op("Where", landscape, g.op("Div", g.op("Mul", s, h), w), s)
        nw = g.op("Where", landscape, s, g.op("Div", g.op("Mul", s, w), h))
        return nh, nw
    portrait = g.op("LessOrEqual", w, h)  # w <= h: width becomes s
    # Positive int64 Div truncates == floor(s * long / short), exactly like int(s * h / w).
    nh = g.op("Where", portrait, g.op("Div", g.op("Mul", s, h), w), s)
    nw = g.op("Where", portrait, s, g.op("Div", g.op("Mul", s, w), h))
    return nh, nw


def _letterbox(g: _Builder, x: str, nh: str, nw: str, pre: Preprocess) -> str:
    """[N, 3, nh, nw] -> [N, 3, R, R]: the image on the pad mode's canvas of colour ``pre.fill``,
    at Preprocess.pad_offsets. Pad fills one constant, so the image is shifted by the fill, padded
    with 0 and shifted back: exact for the whole numbers 0..255."""
    r = g.i64(pre.resize_size)
    top, left = g.op("Div", g.op("Sub", r, nh), g.i64(2)), g.op("Div", g.op("Sub", r, nw), g.i64(2))
    bottom, right = g.op("Sub", g.op("Sub", r, nh), top), g.op("Sub", g.op("Sub", r, nw), left)
    zeros = g.i64(0, 0)
    pads = g.op("Concat", zeros, top, left, zeros, bottom, right, axis=0)
    fill = g.f32(np.asarray(pre.fill, np.float32).reshape(1, 3, 1, 1), "fill")
    return g.op("Add", g.op("Pad", g.op("Sub", x, fill), pads, g.f32(0.0), mode="constant"), fill)


def _round_u8(g: _Builder, x: str, half_up: bool) -> str:
    x = g.op("Clip", x, g.f32(0.0), g.f32(255.0))
    if half_up:
        return g.op("Floor", g.op("Add", x, g.f32(0.5)))
    return g.op("Round", x)


def _resize_op(g: _Builder, x: str, sizes: str, interpolation: str) -> str:
    """One antialiased ONNX Resize to the 4-D ``sizes`` (only one axis changes per call)."""
    return g.op("Resize", x, "", "", sizes, mode="linear" if interpolation == "bilinear" else "cubic", antialias=1,
                coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.5, exclude_outside=1)


def _nearest_index(g: _Builder, n_in: str, n_out: str, double: bool, out_idx: str | None = None) -> str:
    """PIL NEAREST's source indices (Geometry.c, ImagingScaleAffine): with a = n_in / n_out in
    double, x = a / 2 and then x += a per output pixel, index = (int) x. ``double``: rebuilt with
    CumSum in the same order of additions, so the indices are PIL's exactly. Otherwise (runtimes
    without float64) integer arithmetic, floor((2i + 1) * n_in / (2 * n_out)), which differs from
    PIL only where that quotient is an exact integer and PIL's accumulated rounding lands below it."""
    from onnx import TensorProto

    if double:
        t = TensorProto.DOUBLE
        a = g.op("Div", g.op("Cast", n_in, to=t), g.op("Cast", n_out, to=t))  # [1]
        half = g.op("Mul", a, g.const([0.5], np.float64))
        steps = g.op("Concat", half, g.op("Expand", a, g.op("Sub", n_out, g.i64(1))), axis=0)  # [n_out]
        idx = g.op("Cast", g.op("Floor", g.op("CumSum", steps, g.i64_scalar(0))), to=TensorProto.INT64)
        if out_idx is not None:  # the sum runs over every output (PIL's order); only the needed ones are kept
            idx = g.op("Gather", idx, out_idx, axis=0)
    else:
        i = out_idx if out_idx is not None else g.op("Range", g.i64_scalar(0), g.scalar(n_out), g.i64_scalar(1))
        num = g.op("Mul", g.op("Add", g.op("Mul", i, g.i64(2)), g.i64(1)), n_in)
        idx = g.op("Div", num, g.op("Mul", n_out, g.i64(2)))
    return g.op("Min", idx, g.op("Sub", n_in, g.i64(1)))


def _pil_weights(g: _Builder, n_in: str, n_out: str, interpolation: str, out_idx: str | None = None) -> str:
    """PIL's resampling matrix [n_in, n_out] for one axis (Resample.c precompute_coeffs +
    normalize_coeffs_8bpc), computed in float32 from the runtime sizes; with ``out_idx`` only those
    output columns [n_in, K] (each column is computed on its own, so they are the same numbers)."""
    from onnx import TensorProto

    fin = g.op("Cast", n_in, to=TensorProto.FLOAT)
    fout = g.op("Cast", n_out, to=TensorProto.FLOAT)
    scale = g.op("Div", fin, fout)  # [1]
    i = g.op("Cast", g.op("Range", g.i64_scalar(0), g.scalar(n_in), g.i64_scalar(1)), to=TensorProto.FLOAT)
    o = out_idx if out_idx is not None else g.op("Range", g.i64_scalar(0), g.scalar(n_out), g.i64_scalar(1))
    center = g.op("Mul", g.op("Add", g.op("Cast", o, to=TensorProto.FLOAT), g.f32(0.5)), scale)  # [n_out]
    pos = g.op("Unsqueeze", g.op("Add", i, g.f32(0.5)), g.i64(1))  # [n_in, 1]
    diff = g.op("Sub", pos, g.op("Unsqueeze", center, g.i64(0)))  # [n_in, n_out]
    fscale = g.op("Max", scale, g.f32([1.0]))
    ss = g.op("Div", g.f32([1.0]), fscale)
    x = g.op("Abs", g.op("Mul", diff, ss))
    if interpolation == "bilinear":
        w = g.op("Relu", g.op("Sub", g.f32(1.0), x))
    else:  # bicubic, a = -0.5
        a = -0.5
        x2 = g.op("Mul", x, x)
        near = g.op("Add", g.op("Mul", g.op("Sub", g.op("Mul", x, g.f32(a + 2.0)), g.f32(a + 3.0)), x2), g.f32(1.0))
        far = g.op("Mul", g.op("Sub", g.op("Mul", g.op("Add", g.op("Mul", g.op("Sub", x, g.f32(5.0)), x),
                                                             g.f32(8.0)), x), g.f32(4.0)), g.f32(a))
        zero = g.f32(0.0)
        w = g.op("Where", g.op("Less", x, g.f32(1.0)), near, g.op("Where", g.op("Less", x, g.f32(2.0)), far, zero))
    total = g.op("ReduceSum", w, g.i64(0), keepdims=1)
    total = g.op("Where", g.op("Equal", total, g.f32(0.0)), g.f32(1.0), total)
    w = g.op("Div", w, total)
    # Quantise like normalize_coeffs_8bpc: round half away from zero to 1/2^22.
    one = g.f32(float(1 << PIL_PRECISION_BITS))
    mag = g.op("Floor", g.op("Add", g.op("Mul", g.op("Abs", w), one), g.f32(0.5)))
    return g.op("Div", g.op("Mul", mag, g.op("Sign", w)), one)


def pil_height_first() -> bool:
    """Whether the installed Pillow resizes the height first when it shrinks much more than the
    width (Pillow >= 13). Probed, not read from the version: the graph must match this Pillow."""
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (97, 61, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    full = np.asarray(im.resize((46, 46), Image.BILINEAR))
    width_first = np.asarray(im.resize((46, 97), Image.BILINEAR).resize((46, 46), Image.BILINEAR))
    height_first = np.asarray(im.resize((61, 46), Image.BILINEAR).resize((46, 46), Image.BILINEAR))
    if np.array_equal(full, height_first) and not np.array_equal(full, width_first):
        return True
    if np.array_equal(full, width_first):
        return False
    from vr.util.console import warn

    warn("this Pillow resizes neither width-first nor height-first: the exported resize may differ from PIL's")
    return False


def _height_first(g: _Builder, h: str, w: str, nh: str, nw: str) -> str:
    """Pillow >= 13's rule as a [1] bool: h - nh > 2 * (w - nw) and nh < h."""
    more = g.op("Greater", g.op("Sub", h, nh), g.op("Mul", g.op("Sub", w, nw), g.i64(2)))
    return g.op("And", more, g.op("Less", nh, h))


def _matmul_passes(g: _Builder, x: str, ww: str, wht: str, height_first: bool) -> str:
    def rnd(t: str) -> str:
        return _round_u8(g, t, half_up=True)

    if height_first:
        return rnd(g.op("MatMul", rnd(g.op("MatMul", wht, x)), ww))
    return rnd(g.op("MatMul", wht, rnd(g.op("MatMul", x, ww))))


def _needed_outputs(g: _Builder, n_out: str, size: int, tta: str) -> tuple[str, str]:
    """The output positions along one axis that the views read, as (int64 [K] indices, K): the
    centre window [c, c + S) for none/flip, the start, centre and end windows for five/ten-crop.
    Computing only these keeps the resize's memory linear in the image side (a 1 x 5000 image
    would otherwise resize to 256 x 1,280,000)."""
    s = g.i64(size)
    c = g.op("Div", g.op("Sub", n_out, s), g.i64(2))
    starts = [c] if tta in ("none", "flip") else [g.i64(0), c, g.op("Sub", n_out, s)]
    parts = [g.op("Range", g.scalar(st), g.scalar(g.op("Add", st, s)), g.i64_scalar(1)) for st in starts]
    idx = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=0)
    return idx, g.i64(size * len(starts))


def _resize(g: _Builder, x: str, h: str, w: str, nh: str, nw: str, n: str, pre: Preprocess, impl: str,
            height_first_rule: bool, tta: str = "none") -> tuple[str, str, str]:
    """x: float NCHW [N, 3, h, w] -> (resized, its height, its width) in two rounded 1-D passes, in
    Pillow's order. The MatMul and nearest paths compute only the rows and columns the views read
    (laid out so that the views' offsets, computed from the returned sizes, find them: see
    _needed_outputs); the ONNX Resize op makes the whole [N, 3, nh, nw]."""
    interp = pre.interpolation
    compact = impl == "matmul" or interp == "nearest"
    if compact and pre.crop_mode != "pad":  # pad letterboxes the whole (bounded) resized image
        (hi, kh), (wi, kw) = _needed_outputs(g, nh, pre.input_size, tta), _needed_outputs(g, nw, pre.input_size, tta)
    else:
        (hi, kh), (wi, kw) = (None, nh), (None, nw)
    if interp == "nearest":  # PIL's NEAREST: one affine pass, no filter, no rounding -> two Gathers
        x = g.op("Gather", x, _nearest_index(g, w, nw, impl == "resize", wi), axis=3)
        return g.op("Gather", x, _nearest_index(g, h, nh, impl == "resize", hi), axis=2), kh, kw
    rule = height_first_rule
    if impl == "resize":
        three = g.i64(3)
        mid_h, mid_w = h, nw  # width first
        if rule:
            hf = _height_first(g, h, w, nh, nw)
            mid_h, mid_w = g.op("Where", hf, nh, h), g.op("Where", hf, w, nw)
        x = _round_u8(g, _resize_op(g, x, g.op("Concat", n, three, mid_h, mid_w, axis=0), interp), half_up=False)
        x = _round_u8(g, _resize_op(g, x, g.op("Concat", n, three, nh, nw, axis=0), interp), half_up=False)
        return x, nh, nw
    # matmul: exact PIL weights; x @ Ww resizes the width, Wh^T @ x the height.
    ww = _pil_weights(g, w, nw, interp, wi)
    wht = g.op("Transpose", _pil_weights(g, h, nh, interp, hi), perm=[1, 0])
    if not rule:
        return _matmul_passes(g, x, ww, wht, False), kh, kw
    # Both orders, then Where: no control flow (If is poorly supported by TensorRT), and both
    # results have the same shape. Costs a second pair of MatMuls, cheap on a GPU. The order is
    # decided by the full sizes (nh, nw), as Pillow decides it.
    return g.op("Where", _height_first(g, h, w, nh, nw), _matmul_passes(g, x, ww, wht, True),
                _matmul_passes(g, x, ww, wht, False)), kh, kw


def _hflip(g: _Builder, x: str) -> str:
    return g.op("Slice", x, g.i64(-1), g.i64(np.iinfo(np.int64).min), g.i64(3), g.i64(-1))


def preprocess_model(pre: Preprocess, tta: str = "none", *, opset: int = 18, static_batch: int | None = None,
                     resize_impl: str = "resize", normalize: bool = True, output_name: str = "views",
                     height_first_rule: bool | None = None, prefix: str = "pre/"):
    """The preprocessing graph: ``images`` uint8 [N, H, W, 3] -> ``views`` float32
    [N * V, 3, S, S] (image-major: all V views of image 0, then of image 1, ...).

    ``normalize=False`` leaves the views in [0, 255] (tests compare them with PIL pixel by pixel).
    ``height_first_rule`` (default: probe the installed Pillow) builds Pillow 13's pass order in.
    ``prefix`` names the nodes ("pre/", "pre/m0/" for an ensemble member).
    """
    import onnx
    from onnx import TensorProto, helper

    if tta not in TTA_MODES:
        raise VrError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_MODES)}")
    if resize_impl not in RESIZE_IMPLS:
        raise VrError(f"unknown resize implementation {resize_impl!r}: use one of {', '.join(RESIZE_IMPLS)}")
    g = _Builder(prefix)
    # uint8 is read once, by the Cast: TensorRT takes uint8 only at the network input, cast at once.
    x = g.op("Cast", INPUT_NAME, to=TensorProto.FLOAT)
    shape = g.op("Shape", x)
    n, h, w = g.dim(shape, 0), g.dim(shape, 1), g.dim(shape, 2)
    # 1. border crop, on NHWC.
    if pre.border_crop > 0:
        bt, bl = _border_amount(g, h, pre.border_crop), _border_amount(g, w, pre.border_crop)
        h2, w2 = g.op("Sub", h, g.op("Mul", bt, g.i64(2))), g.op("Sub", w, g.op("Mul", bl, g.i64(2)))
        x = g.op("Slice", x, g.op("Concat", bt, bl, axis=0),
                 g.op("Concat", g.op("Add", bt, h2), g.op("Add", bl, w2), axis=0), g.i64(1, 2))
        h, w = h2, w2
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])  # [N, 3, h, w]
    # 2. resize (a no-op size is skipped by PIL; in the graph it is an exact identity).
    nh, nw = _resized_hw(g, h, w, pre)
    if height_first_rule is None:
        height_first_rule = pil_height_first()
    x, nh, nw = _resize(g, x, h, w, nh, nw, n, pre, resize_impl, height_first_rule, tta)
    if pre.crop_mode == "pad":
        x = _letterbox(g, x, nh, nw, pre)
        nh = nw = g.i64(pre.resize_size)
    # 3. views.
    s = pre.input_size
    top = g.op("Div", g.op("Sub", nh, g.i64(s)), g.i64(2))
    left = g.op("Div", g.op("Sub", nw, g.i64(s)), g.i64(2))
    axes = g.i64(2, 3)

    def crop(t: str, l: str) -> str:
        starts = g.op("Concat", t, l, axis=0)
        return g.op("Slice", x, starts, g.op("Add", starts, g.i64(s, s)), axes)

    centre = crop(top, left)
    if tta == "none":
        views = [centre]
    elif tta == "flip":
        views = [centre, _hflip(g, centre)]
    else:
        zero = g.i64(0)
        bottom, right = g.op("Sub", nh, g.i64(s)), g.op("Sub", nw, g.i64(s))
        views = [centre, crop(zero, zero), crop(zero, right), crop(bottom, zero), crop(bottom, right)]
        if tta == "ten-crop":
            views += [_hflip(g, v) for v in views]
    if len(views) == 1:
        x = views[0]
    else:
        x = g.op("Concat", *[g.op("Unsqueeze", v, g.i64(1)) for v in views], axis=1)  # [N, V, 3, S, S]
        x = g.op("Reshape", x, g.i64(-1, 3, s, s))
    # 4. normalisation, the same float32 constants as Preprocess.normalize.
    if normalize:
        mean = (np.asarray(pre.mean, np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        std = (np.asarray(pre.std, np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        x = g.op("Div", g.op("Sub", x, g.f32(mean, "mean255")), g.f32(std, "std255"))
    g.nodes.append(helper.make_node("Identity", [x], [output_name], name=f"{prefix}output"))
    batch = static_batch if static_batch else "batch"
    nviews = static_batch * num_views(tta) if static_batch else "batch_views"
    graph = helper.make_graph(
        g.nodes, "vr_preprocess",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, "height", "width", 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [nviews, 3, s, s])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="vr")
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------
_LOGITS_NAME = "logits"  # the backbone's output, before the float32 softmax and view mean


def _backbone_wrapper(model):
    import torch
    from torch import nn

    class Logits(nn.Module):
        """[M, 3, S, S] normalised views -> [M, C] float32 logits (softmax and the view mean are
        ONNX nodes of their own, :func:`_postprocess_model`, so that they stay float32 whatever
        precision the backbone is converted to)."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).float()

    # A fresh nn.Module starts in training mode: exporting it like that would run BatchNorm in
    # training mode and overwrite the backbone's running statistics.
    return Logits(model).eval()


def backbone_model(model, pre: Preprocess, tta: str, *, opset: int = 18, static_batch: int | None = None):
    """Export ``model`` with the TorchScript exporter: ``x`` float32 [N * V, 3, S, S] normalised
    views -> ``logits`` float32 [N * V, C]."""
    import onnx
    import torch

    v = num_views(tta)
    was_training = model.training  # before wrapping: the wrapper's .eval() reaches the backbone
    wrapper = _backbone_wrapper(model)
    n = static_batch or 2
    example = torch.zeros(n * v, 3, pre.input_size, pre.input_size)
    buf = io.BytesIO()
    dynamic = None if static_batch else {"x": {0: "batch_views"}, _LOGITS_NAME: {0: "batch_views"}}
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=[_LOGITS_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
    except Exception as e:
        raise VrError(f"cannot export {type(model).__name__} to ONNX opset {opset}: "
                      f"{type(e).__name__}: {first_line(e)}") from e
    finally:
        model.train(was_training)
    return onnx.load_from_string(buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------
def build_metadata(ckpt, tta: str, opset: int, resize_impl: str, height_first_rule: bool | None = None,
                   param_count: int | None = None, precision: str = "fp32", detail: dict | None = None) -> dict[str, str]:
    """One checkpoint's metadata_props (vr.runtime.metadata.build_metadata, as strings)."""
    rule = pil_height_first() if height_first_rule is None else height_first_rule
    return vr_meta.encode(vr_meta.build_metadata(ckpt, tta=tta, opset=opset, resize_impl=resize_impl,
                                                 height_first=rule, param_count=param_count, precision=precision,
                                                 precision_detail=detail))


def build_ensemble_metadata(ckpts, weights, param_counts, tta: str, opset: int, resize_impl: str,
                            height_first_rule: bool | None = None, precision: str = "fp32",
                            detail: dict | None = None) -> dict[str, str]:
    """An ensemble's metadata_props (vr.runtime.metadata.build_ensemble_metadata, as strings)."""
    rule = pil_height_first() if height_first_rule is None else height_first_rule
    return vr_meta.encode(vr_meta.build_ensemble_metadata(ckpts, weights, param_counts, tta=tta, opset=opset,
                                                          resize_impl=resize_impl, height_first=rule,
                                                          precision=precision, precision_detail=detail))


def _precision_detail(info) -> dict | None:
    """What the precision conversion did (tool, calibration, layers kept float...), for the metadata."""
    infos = [info] if isinstance(info, dict) else list(info)
    if all(i.get("precision", "fp32") == "fp32" for i in infos):
        return None
    from vr.export.precision import precision_metadata

    return json.loads(precision_metadata(info).get("precision_detail", "null"))


def _postprocess_model(views: int, num_classes: int, opset: int, ir_version: int, prefix: str, output_name: str):
    """``logits`` [N * V, C] -> softmax -> mean over the V views -> [N, C], all float32 (the same ops
    the TorchScript exporter wrote for ``softmax(-1)`` and ``reshape(-1, V, C).mean(1)``)."""
    from onnx import TensorProto, helper

    g = _Builder(prefix)
    probs = g.op("Softmax", f"{prefix}{_LOGITS_NAME}", axis=-1)
    per_view = g.op("Reshape", probs, g.i64(-1, views, num_classes))
    g.nodes.append(helper.make_node("ReduceMean", [per_view, g.i64(1)], [output_name], name=f"{prefix}mean_views",
                                    keepdims=0))
    graph = helper.make_graph(
        g.nodes, "vr_postprocess",
        [helper.make_tensor_value_info(f"{prefix}{_LOGITS_NAME}", TensorProto.FLOAT, ["batch_views", num_classes])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                             producer_name="vr")


def _default_opset(proto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _converted_backbone(back, ckpt, precision: str, calib):
    """The backbone at ``precision`` (:mod:`vr.export.precision`) and what was done."""
    from vr.export import precision as prec

    prec.check_precision(precision)
    if precision == "fp32":
        return back, {"precision": "fp32"}
    batches, method = None, prec.DEFAULT_CALIB_METHOD
    if precision == "int8":
        if calib is None:
            raise VrError("--precision int8 needs calibration images (--calib DIR)")
        if not isinstance(calib, prec.Calibration):
            calib = prec.Calibration(list(calib))
        batches, method = prec.calibration_batches(calib.images, ckpt.preprocess, calib.batch_size), calib.method
    return prec.convert_backbone(back, precision, calib_batches=batches, method=method)


def _classifier_graph(ckpt, model, tta: str, opset: int, static_batch: int | None, resize_impl: str, rule: bool,
                      tag: str = "", precision: str = "fp32", calib=None):
    """One checkpoint's preprocessing + backbone + softmax and view mean as a ModelProto:
    ``images`` -> ``probs`` (a member of an ensemble, ``tag`` "m0/", gets its own names:
    pre/m0/..., net/m0/..., post/m0/..., output post/m0/probs), and the precision ``info``.

    The backbone alone is converted to ``precision`` before the merge (``calib``: images or a
    :class:`vr.export.precision.Calibration` for int8); pre/ and post/ stay float32 and are built at
    the backbone's opset (bf16 raises it to 22).
    """
    from onnx import compose

    back = backbone_model(model, ckpt.preprocess, tta, opset=opset, static_batch=static_batch)
    back, info = _converted_backbone(back, ckpt, precision, calib)
    graph_opset = max(opset, _default_opset(back))
    front = preprocess_model(ckpt.preprocess, tta, opset=graph_opset, static_batch=static_batch,
                             resize_impl=resize_impl, height_first_rule=rule, prefix=f"pre/{tag}",
                             output_name=f"pre/{tag}views" if tag else "views")
    back = compose.add_prefix(back, f"net/{tag}", rename_outputs=True)
    front.ir_version = back.ir_version
    post = _postprocess_model(num_views(tta), ckpt.num_classes, graph_opset, back.ir_version, f"post/{tag}",
                              f"post/{tag}probs" if tag else OUTPUT_NAME)
    merged = compose.merge_models(front, back, io_map=[(front.graph.output[0].name, f"net/{tag}x")], prefix1="",
                                  prefix2="")
    doc = f"vr classifier: {INPUT_NAME} {INPUT_CONTRACT} -> {OUTPUT_NAME} [N, C]"
    merged = compose.merge_models(merged, post, io_map=[(f"net/{tag}{_LOGITS_NAME}", f"post/{tag}{_LOGITS_NAME}")],
                                  prefix1="", prefix2="", producer_name="vr", producer_version=_vr_version(),
                                  doc_string=doc)
    return merged, info


def _finish(merged, num_classes: int, static_batch: int | None, metadata: dict[str, str]):
    """One opset import per domain, a readable output shape [batch, C], the metadata; checked."""
    import onnx
    from onnx import helper

    seen: dict[str, int] = {}
    for imp in merged.opset_import:
        seen[imp.domain] = max(seen.get(imp.domain, 0), imp.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in seen.items())
    dims = merged.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for value in (static_batch or "batch", num_classes):
        d = dims.add()
        if isinstance(value, int):
            d.dim_value = value
        else:
            d.dim_param = value
    # merge_models keeps only the opset imports; state the graph's contract explicitly.
    del merged.metadata_props[:]
    helper.set_model_props(merged, metadata)
    try:
        onnx.checker.check_model(merged)
    except onnx.checker.ValidationError as e:
        raise VrError(f"the exported graph is invalid: {first_line(e)}") from e
    return merged


def _check_graph_args(opset: int, static_batch: int | None) -> None:
    check_opset(opset)
    if static_batch is not None and static_batch < 1:
        raise VrError(f"--static-batch must be >= 1 (got {static_batch})")


def build_onnx(ckpt, tta: str = "none", opset: int = 18, static_batch: int | None = None,
               resize_impl: str = "resize", model=None, *, precision: str = "fp32", calib=None):
    """The complete ModelProto: preprocessing + TTA + backbone + softmax + view mean, with metadata.

    ``model`` (optional) is the torch model to export; by default ``model_from_checkpoint(ckpt)``.
    ``precision`` converts the backbone (fp32, fp16, bf16, int8: ``calib`` images needed), see
    :mod:`vr.export.precision`; preprocessing, softmax and the view mean stay float32.
    """
    from vr.models.factory import count_params

    _check_graph_args(opset, static_batch)
    if model is None:
        from vr.models.factory import model_from_checkpoint

        model = model_from_checkpoint(ckpt)
    rule = pil_height_first()
    merged, info = _classifier_graph(ckpt, model, tta, opset, static_batch, resize_impl, rule, precision=precision,
                                     calib=calib)
    merged.graph.name = "vr_classifier"
    meta = build_metadata(ckpt, tta, _default_opset(merged), resize_impl, rule, param_count=count_params(model),
                          precision=precision, detail=_precision_detail(info))
    return _finish(merged, ckpt.num_classes, static_batch, meta)


def ensemble_class_order(ckpts) -> list:
    """Per member, the output indices in the first member's class order (None: same order); one
    line naming the first difference when the class names differ."""
    from vr.models.ensemble import class_order

    labels = [str(c.path) if c.path is not None else f"member {i + 1}" for i, c in enumerate(ckpts)]
    return class_order([(lab, c.classes.names) for lab, c in zip(labels, ckpts)])


def build_ensemble_onnx(ckpts, weights=None, tta: str = "none", opset: int = 18, static_batch: int | None = None,
                        resize_impl: str = "resize", models=None, *, precision: str = "fp32", calib=None):
    """One graph for a soft-voting ensemble: the shared ``images`` input feeds every member's own
    preprocessing (its size, resize, crop, mean/std) and TTA views, backbone and softmax; ``probs``
    is ``sum_i w_i * probs_i`` (weights normalised to sum 1; equal by default), in the first
    member's class order. Members whose class order differs are mapped by name (a Gather)."""
    from onnx import TensorProto, helper

    from vr.models.factory import count_params

    _check_graph_args(opset, static_batch)
    ckpts = list(ckpts)
    if len(ckpts) < 2:
        raise VrError("an ensemble needs two or more checkpoints")
    orders = ensemble_class_order(ckpts)
    raw = [1.0] * len(ckpts) if weights is None else [float(w) for w in weights]
    if len(raw) != len(ckpts) or min(raw) <= 0:
        raise VrError(f"an ensemble of {len(ckpts)} needs {len(ckpts)} positive weights (got {raw})")
    weights = [w / sum(raw) for w in raw]
    if models is None:
        from vr.models.factory import model_from_checkpoint

        models = [model_from_checkpoint(c) for c in ckpts]
    models = list(models)
    rule = pil_height_first()
    g = _Builder("ens/")
    nodes, inits, value_info, functions, opsets = [], [], [], [], []
    ir_version, terms, graph_input, infos = 0, [], None, []
    for i, (ckpt, model, order, w) in enumerate(zip(ckpts, models, orders, weights)):
        m, info = _classifier_graph(ckpt, model, tta, opset, static_batch, resize_impl, rule, tag=f"m{i}/",
                                    precision=precision, calib=calib)
        infos.append(info)
        graph_input = graph_input or m.graph.input[0]
        nodes += m.graph.node
        inits += m.graph.initializer
        value_info += m.graph.value_info
        functions += m.functions
        opsets += m.opset_import
        ir_version = max(ir_version, m.ir_version)
        probs = m.graph.output[0].name
        if order is not None:
            probs = g.op("Gather", probs, g.const(order, np.int64, "class_order"), axis=1)
        terms.append(g.op("Mul", probs, g.f32(np.float32(w), "weight")))
    g.nodes.append(helper.make_node("Sum", terms, [OUTPUT_NAME], name="ens/sum"))
    graph = helper.make_graph(
        nodes + g.nodes, "vr_ensemble", [graph_input],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", ckpts[0].num_classes])],
        initializer=inits + g.initializers, value_info=value_info)
    merged = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="vr",
                               producer_version=_vr_version(), doc_string=(
                                   f"vr ensemble of {len(ckpts)}: {INPUT_NAME} {INPUT_CONTRACT} -> {OUTPUT_NAME} [N, C]"))
    merged.ir_version = ir_version
    counts = [count_params(m) for m in models]
    graph_opset = max(o.version for o in opsets if o.domain in ("", "ai.onnx"))
    meta = build_ensemble_metadata(ckpts, weights, counts, tta, graph_opset, resize_impl, rule, precision=precision,
                                   detail=_precision_detail(infos))
    return _finish(merged, ckpts[0].num_classes, static_batch, meta)


def _vr_version() -> str:
    import vr

    return vr.__version__


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise VrError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}] (got {opset}): antialiased Resize needs "
                      f"opset 18 and PyTorch's TorchScript exporter stops at {MAX_OPSET}")


def simplify_model(model):
    """onnxslim, keeping the metadata; a clear error when it is not installed."""
    try:
        import onnxslim
    except ImportError as e:
        raise VrError("--simplify needs onnxslim: pip install onnxslim") from e
    props = {p.key: p.value for p in model.metadata_props}
    try:
        slim = onnxslim.slim(model)
    except Exception as e:
        raise VrError(f"onnxslim failed: {type(e).__name__}: {first_line(e)}") from e
    from onnx import helper

    del slim.metadata_props[:]
    helper.set_model_props(slim, props)
    return slim


def export_onnx(ckpt, out: str | Path, tta: str = "none", opset: int = 18, static_batch: int | None = None, *,
                simplify: bool = False, resize_impl: str = "resize", model=None,
                before_commit: Callable[[Path], None] | None = None, weights=None, precision: str = "fp32",
                calib=None) -> Path:
    """Write the classifier to ``out`` atomically and return ``out``.

    ``ckpt`` may be a list of checkpoints (``model`` then a list of their models, ``weights`` theirs):
    one ensemble graph (:func:`build_ensemble_onnx`). ``precision`` / ``calib``: see :func:`build_onnx`.
    ``before_commit(tmp_path)`` runs on the finished temporary file before it is moved into place;
    if it raises (the parity gate), nothing is written and a previous ``out`` stays as it was.
    """
    import onnx

    from vr.util.io import atomic_path

    if isinstance(ckpt, (list, tuple)):
        proto = build_ensemble_onnx(ckpt, weights, tta, opset, static_batch, resize_impl, models=model,
                                    precision=precision, calib=calib)
    else:
        proto = build_onnx(ckpt, tta, opset, static_batch, resize_impl, model=model, precision=precision, calib=calib)
    if simplify:
        proto = simplify_model(proto)
    out = Path(out)
    size = proto.ByteSize()
    if size > 2_000_000_000:
        raise VrError(f"the model is {size / 1e9:.1f} GB: ONNX files over 2 GB need external data, which vr "
                      f"does not write yet")
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
        if before_commit is not None:
            before_commit(tmp)
    return out
