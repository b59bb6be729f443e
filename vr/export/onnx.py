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

from vr.errors import VrError
from vr.export.config import MAX_OPSET, MIN_OPSET, RESIZE_IMPLS, TTA_MODES
from vr.models.preprocess import Preprocess
from vr.models.tta import num_views

INPUT_NAME = "images"
OUTPUT_NAME = "probs"
PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2 fractional bits for 8-bit images
METADATA_KEYS = ("class_names", "preprocess", "tta", "checkpoint_sha256", "vr_version", "opset",
                 "input", "output", "resize_impl", "resize_pass_order", "param_count")
ENSEMBLE_METADATA_KEYS = ("members",)  # an ensemble's: checkpoint, sha256, model, preprocess, weight, param_count
INPUT_CONTRACT = ("uint8 [N, H, W, 3] RGB, N/H/W dynamic; the images of one batch share one size "
                  "(feed differently sized images one at a time)")


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
    portrait = g.op("LessOrEqual", w, h)  # w <= h: width becomes s
    # Positive int64 Div truncates == floor(s * long / short), exactly like int(s * h / w).
    nh = g.op("Where", portrait, g.op("Div", g.op("Mul", s, h), w), s)
    nw = g.op("Where", portrait, s, g.op("Div", g.op("Mul", s, w), h))
    return nh, nw


def _round_u8(g: _Builder, x: str, half_up: bool) -> str:
    x = g.op("Clip", x, g.f32(0.0), g.f32(255.0))
    if half_up:
        return g.op("Floor", g.op("Add", x, g.f32(0.5)))
    return g.op("Round", x)


def _resize_op(g: _Builder, x: str, sizes: str, interpolation: str) -> str:
    """One antialiased ONNX Resize to the 4-D ``sizes`` (only one axis changes per call)."""
    return g.op("Resize", x, "", "", sizes, mode="linear" if interpolation == "bilinear" else "cubic", antialias=1,
                coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.5, exclude_outside=1)


def _nearest_index(g: _Builder, n_in: str, n_out: str, double: bool) -> str:
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
    else:
        i = g.op("Range", g.i64_scalar(0), g.scalar(n_out), g.i64_scalar(1))
        num = g.op("Mul", g.op("Add", g.op("Mul", i, g.i64(2)), g.i64(1)), n_in)
        idx = g.op("Div", num, g.op("Mul", n_out, g.i64(2)))
    return g.op("Min", idx, g.op("Sub", n_in, g.i64(1)))


def _pil_weights(g: _Builder, n_in: str, n_out: str, interpolation: str) -> str:
    """PIL's resampling matrix [n_in, n_out] for one axis (Resample.c precompute_coeffs +
    normalize_coeffs_8bpc), computed in float32 from the runtime sizes."""
    from onnx import TensorProto

    fin = g.op("Cast", n_in, to=TensorProto.FLOAT)
    fout = g.op("Cast", n_out, to=TensorProto.FLOAT)
    scale = g.op("Div", fin, fout)  # [1]
    i = g.op("Cast", g.op("Range", g.i64_scalar(0), g.scalar(n_in), g.i64_scalar(1)), to=TensorProto.FLOAT)
    o = g.op("Cast", g.op("Range", g.i64_scalar(0), g.scalar(n_out), g.i64_scalar(1)), to=TensorProto.FLOAT)
    center = g.op("Mul", g.op("Add", o, g.f32(0.5)), scale)  # [n_out]
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


def _resize(g: _Builder, x: str, h: str, w: str, nh: str, nw: str, n: str, pre: Preprocess, impl: str,
            height_first_rule: bool) -> str:
    """x: float NCHW [N, 3, h, w] -> [N, 3, nh, nw] in two rounded 1-D passes, in Pillow's order."""
    interp = pre.interpolation
    if interp == "nearest":  # PIL's NEAREST: one affine pass, no filter, no rounding -> two Gathers
        x = g.op("Gather", x, _nearest_index(g, w, nw, impl == "resize"), axis=3)
        return g.op("Gather", x, _nearest_index(g, h, nh, impl == "resize"), axis=2)
    rule = height_first_rule
    if impl == "resize":
        three = g.i64(3)
        mid_h, mid_w = h, nw  # width first
        if rule:
            hf = _height_first(g, h, w, nh, nw)
            mid_h, mid_w = g.op("Where", hf, nh, h), g.op("Where", hf, w, nw)
        x = _round_u8(g, _resize_op(g, x, g.op("Concat", n, three, mid_h, mid_w, axis=0), interp), half_up=False)
        x = _round_u8(g, _resize_op(g, x, g.op("Concat", n, three, nh, nw, axis=0), interp), half_up=False)
        return x
    # matmul: exact PIL weights; x @ Ww resizes the width, Wh^T @ x the height.
    ww = _pil_weights(g, w, nw, interp)
    wht = g.op("Transpose", _pil_weights(g, h, nh, interp), perm=[1, 0])
    if not rule:
        return _matmul_passes(g, x, ww, wht, False)
    # Both orders, then Where: no control flow (If is poorly supported by TensorRT), and both
    # results are [N, 3, nh, nw]. Costs a second pair of MatMuls, cheap on a GPU.
    return g.op("Where", _height_first(g, h, w, nh, nw), _matmul_passes(g, x, ww, wht, True),
                _matmul_passes(g, x, ww, wht, False))


def _hflip(g: _Builder, x: str) -> str:
    return g.op("Slice", x, g.i64(-1), g.i64(np.iinfo(np.int64).min), g.i64(3), g.i64(-1))


def preprocess_model(pre: Preprocess, tta: str = "none", *, opset: int = 18, static_batch: int | None = None,
                     resize_impl: str = "resize", normalize: bool = True, output_name: str = "views",
                     height_first_rule: bool | None = None, prefix: str = "pre/"):
    """The preprocessing graph: ``images`` uint8 [N, H, W, 3] -> ``views`` float32
    [N * V, 3, S, S] (image-major: all V views of image 0, then of image 1, ...).

    ``normalize=False`` leaves the views in [0, 255] (tests compare them with PIL pixel by pixel).
    ``height_first_rule`` (default: probe the installed Pillow) builds Pillow 13's pass order in.
    ``prefix`` names the nodes; it must start with "pre/" (TensorRT pins those layers to float32).
    """
    import onnx
    from onnx import TensorProto, helper

    if tta not in TTA_MODES:
        raise VrError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_MODES)}")
    if resize_impl not in RESIZE_IMPLS:
        raise VrError(f"unknown resize implementation {resize_impl!r}: use one of {', '.join(RESIZE_IMPLS)}")
    g = _Builder(prefix)
    x = INPUT_NAME
    shape = g.op("Shape", x)
    n, h, w = g.dim(shape, 0), g.dim(shape, 1), g.dim(shape, 2)
    # 1. border crop on the raw uint8 NHWC image (cheapest place to cut).
    if pre.border_crop > 0:
        bt, bl = _border_amount(g, h, pre.border_crop), _border_amount(g, w, pre.border_crop)
        h2, w2 = g.op("Sub", h, g.op("Mul", bt, g.i64(2))), g.op("Sub", w, g.op("Mul", bl, g.i64(2)))
        x = g.op("Slice", x, g.op("Concat", bt, bl, axis=0),
                 g.op("Concat", g.op("Add", bt, h2), g.op("Add", bl, w2), axis=0), g.i64(1, 2))
        h, w = h2, w2
    x = g.op("Transpose", g.op("Cast", x, to=TensorProto.FLOAT), perm=[0, 3, 1, 2])  # [N, 3, h, w]
    # 2. resize (a no-op size is skipped by PIL; in the graph it is an exact identity).
    nh, nw = _resized_hw(g, h, w, pre)
    if height_first_rule is None:
        height_first_rule = pil_height_first()
    x = _resize(g, x, h, w, nh, nw, n, pre, resize_impl, height_first_rule)
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
def _backbone_wrapper(model, views: int):
    import torch
    from torch import nn

    class ProbsOverViews(nn.Module):
        """[N * V, 3, S, S] normalised views -> [N, C] probabilities averaged over the V views."""

        def __init__(self, net: nn.Module, v: int):
            super().__init__()
            self.net, self.v = net, v

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            probs = self.net(x).float().softmax(-1)
            return probs.reshape(-1, self.v, probs.shape[-1]).mean(1)

    # A fresh nn.Module starts in training mode: exporting it like that would run BatchNorm in
    # training mode and overwrite the backbone's running statistics.
    return ProbsOverViews(model, views).eval()


def backbone_model(model, pre: Preprocess, tta: str, *, opset: int = 18, static_batch: int | None = None):
    """Export ``model`` (+ softmax and the mean over the views) with the TorchScript exporter."""
    import onnx
    import torch

    v = num_views(tta)
    was_training = model.training  # before wrapping: the wrapper's .eval() reaches the backbone
    wrapper = _backbone_wrapper(model, v)
    n = static_batch or 2
    example = torch.zeros(n * v, 3, pre.input_size, pre.input_size)
    buf = io.BytesIO()
    dynamic = None if static_batch else {"x": {0: "batch_views"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
    except Exception as e:
        raise VrError(f"cannot export {type(model).__name__} to ONNX opset {opset}: "
                      f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    finally:
        model.train(was_training)
    return onnx.load_from_string(buf.getvalue())


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------
def build_metadata(ckpt, tta: str, opset: int, resize_impl: str, height_first_rule: bool | None = None,
                   param_count: int | None = None) -> dict[str, str]:
    import vr
    from vr.models.checkpoint import file_sha256

    sha = file_sha256(ckpt.path) if ckpt.path is not None and Path(ckpt.path).is_file() else ""
    meta = {
        "class_names": json.dumps(list(ckpt.classes.names)),
        "preprocess": json.dumps(ckpt.preprocess.to_dict()),
        "tta": tta,
        "checkpoint_sha256": sha,
        "vr_version": vr.__version__,
        "opset": str(opset),
        "input": f"{INPUT_NAME}: {INPUT_CONTRACT}",
        "output": f"{OUTPUT_NAME}: float32 [N, C] softmax probabilities averaged over the TTA views",
        "resize_impl": resize_impl,
        "resize_pass_order": ("height first when h - new_h > 2 * (w - new_w), else width first (Pillow >= 13)"
                              if (pil_height_first() if height_first_rule is None else height_first_rule)
                              else "width first (Pillow < 13)"),
    }
    if param_count is not None:
        meta["param_count"] = str(int(param_count))
    return meta


def build_ensemble_metadata(ckpts, weights, param_counts, tta: str, opset: int, resize_impl: str,
                            height_first_rule: bool | None = None) -> dict[str, str]:
    """The first member's keys (its preprocess, its class order: the ensemble's) plus ``members``
    (checkpoint, sha256, model, preprocess, weight, param_count of each) and the total param_count."""
    meta = build_metadata(ckpts[0], tta, opset, resize_impl, height_first_rule, param_count=sum(param_counts))
    members = []
    for ckpt, w, n in zip(ckpts, weights, param_counts):
        one = build_metadata(ckpt, tta, opset, resize_impl, height_first_rule)
        members.append({"checkpoint": str(ckpt.path) if ckpt.path is not None else "", "sha256": one["checkpoint_sha256"],
                        "model": ckpt.model_name, "preprocess": ckpt.preprocess.to_dict(), "weight": float(w),
                        "param_count": int(n)})
    meta["members"] = json.dumps(members)
    meta["checkpoint_sha256"] = "+".join(m["sha256"] for m in members)
    meta["output"] = (f"{OUTPUT_NAME}: float32 [N, C] weighted mean over the {len(members)} members (weights in "
                      f"members) of each member's softmax probabilities averaged over its TTA views")
    return meta


def _classifier_graph(ckpt, model, tta: str, opset: int, static_batch: int | None, resize_impl: str, rule: bool,
                      tag: str = ""):
    """One checkpoint's preprocessing + backbone as a ModelProto: ``images`` -> ``probs`` (a member
    of an ensemble, ``tag`` "m0/", gets its own names: pre/m0/..., net/m0/..., output net/m0/probs)."""
    from onnx import compose

    front = preprocess_model(ckpt.preprocess, tta, opset=opset, static_batch=static_batch, resize_impl=resize_impl,
                             height_first_rule=rule, prefix=f"pre/{tag}",
                             output_name=f"pre/{tag}views" if tag else "views")
    back = backbone_model(model, ckpt.preprocess, tta, opset=opset, static_batch=static_batch)
    back = compose.add_prefix(back, f"net/{tag}", rename_outputs=bool(tag))
    front.ir_version = back.ir_version
    return compose.merge_models(front, back, io_map=[(front.graph.output[0].name, f"net/{tag}x")], prefix1="",
                                prefix2="", producer_name="vr", producer_version=_vr_version(), doc_string=(
                                    f"vr classifier: {INPUT_NAME} {INPUT_CONTRACT} -> {OUTPUT_NAME} [N, C]"))


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
        raise VrError(f"the exported graph is invalid: {str(e).splitlines()[0]}") from e
    return merged


def _check_graph_args(opset: int, static_batch: int | None) -> None:
    check_opset(opset)
    if static_batch is not None and static_batch < 1:
        raise VrError(f"--static-batch must be >= 1 (got {static_batch})")


def build_onnx(ckpt, tta: str = "none", opset: int = 18, static_batch: int | None = None,
               resize_impl: str = "resize", model=None):
    """The complete ModelProto: preprocessing + TTA + backbone + softmax + view mean, with metadata.

    ``model`` (optional) is the torch model to export; by default ``model_from_checkpoint(ckpt)``.
    """
    from vr.models.factory import count_params

    _check_graph_args(opset, static_batch)
    if model is None:
        from vr.models.factory import model_from_checkpoint

        model = model_from_checkpoint(ckpt)
    rule = pil_height_first()
    merged = _classifier_graph(ckpt, model, tta, opset, static_batch, resize_impl, rule)
    merged.graph.name = "vr_classifier"
    return _finish(merged, ckpt.num_classes, static_batch,
                   build_metadata(ckpt, tta, opset, resize_impl, rule, param_count=count_params(model)))


def ensemble_class_order(ckpts) -> list:
    """Per member, the output indices in the first member's class order (None: same order); one
    line naming the first difference when the class names differ."""
    from vr.models.ensemble import class_order

    labels = [str(c.path) if c.path is not None else f"member {i + 1}" for i, c in enumerate(ckpts)]
    return class_order([(lab, c.classes.names) for lab, c in zip(labels, ckpts)])


def build_ensemble_onnx(ckpts, weights=None, tta: str = "none", opset: int = 18, static_batch: int | None = None,
                        resize_impl: str = "resize", models=None):
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
    ir_version, terms, graph_input = 0, [], None
    for i, (ckpt, model, order, w) in enumerate(zip(ckpts, models, orders, weights)):
        m = _classifier_graph(ckpt, model, tta, opset, static_batch, resize_impl, rule, tag=f"m{i}/")
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
    return _finish(merged, ckpts[0].num_classes, static_batch,
                   build_ensemble_metadata(ckpts, weights, counts, tta, opset, resize_impl, rule))


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
        raise VrError(f"onnxslim failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    from onnx import helper

    del slim.metadata_props[:]
    helper.set_model_props(slim, props)
    return slim


def export_onnx(ckpt, out: str | Path, tta: str = "none", opset: int = 18, static_batch: int | None = None, *,
                simplify: bool = False, resize_impl: str = "resize", model=None,
                before_commit: Callable[[Path], None] | None = None, weights=None) -> Path:
    """Write the classifier to ``out`` atomically and return ``out``.

    ``ckpt`` may be a list of checkpoints (``model`` then a list of their models, ``weights`` theirs):
    one ensemble graph (:func:`build_ensemble_onnx`).
    ``before_commit(tmp_path)`` runs on the finished temporary file before it is moved into place;
    if it raises (the parity gate), nothing is written and a previous ``out`` stays as it was.
    """
    import onnx

    from vr.util.io import atomic_path

    if isinstance(ckpt, (list, tuple)):
        proto = build_ensemble_onnx(ckpt, weights, tta, opset, static_batch, resize_impl, models=model)
    else:
        proto = build_onnx(ckpt, tta, opset, static_batch, resize_impl, model=model)
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


def read_onnx_metadata(path: str | Path) -> dict:
    """The vr metadata of an exported model, JSON fields decoded: class_names (list), preprocess
    (dict, Preprocess.from_dict reads it), tta, checkpoint_sha256, vr_version, opset (int),
    param_count (int), members (list, ensembles only), ..."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise VrError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VrError(f"cannot read ONNX model {path}: {type(e).__name__}") from e
    return decode_metadata({p.key: p.value for p in model.metadata_props}, path)


def decode_metadata(props: dict[str, str], path: str | Path = "model") -> dict:
    """Decode the string metadata (ONNX metadata_props, or a TensorRT sidecar) into Python values."""
    missing = [k for k in ("class_names", "preprocess", "tta") if k not in props]
    if missing:
        raise VrError(f"{path} was not exported by vr export (metadata lacks {', '.join(missing)})")
    meta: dict = dict(props)
    try:
        meta["class_names"] = json.loads(props["class_names"])
        meta["preprocess"] = json.loads(props["preprocess"])
        if "opset" in props:
            meta["opset"] = int(props["opset"])
        if "param_count" in props:
            meta["param_count"] = int(props["param_count"])
        if "members" in props:
            meta["members"] = json.loads(props["members"])
    except (ValueError, TypeError) as e:
        raise VrError(f"{path} has damaged vr metadata ({e})") from e
    return meta
