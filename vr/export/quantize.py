"""INT8 for the backbone: explicit Q/DQ from ONNX Runtime's static quantizer, as TensorRT's
explicit quantization expects it.

- Activations int8, symmetric, per tensor; weights int8, symmetric, per output channel; every zero
  point 0; biases stay float (TensorRT takes no int32 DequantizeLinear).
- Q/DQ only on the inputs of the weighted ops (Conv, Gemm, MatMul); their outputs stay float
  (TensorRT's recommended placement: it fuses DQ -> Conv and requantizes only where a Q says so).
- Sensitive layers stay float. Per-tensor activation scales fail on tensors whose channels have
  very different ranges (depthwise-separable blocks: on the lite0 fine-tune one such tensor cost
  10 points of accuracy). After calibration, each activation Q/DQ is bypassed in turn on a few
  calibration images; the ones whose removal cuts the output error most are kept float, one at a
  time, while each cuts the remaining error by at least a fifth. Measured on calibration images
  only, never on the gate's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vr.errors import VrError, first_line
from vr.export.onnx_check import checked_model

CALIB_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_METHOD = "percentile"  # best gated accuracy on the lite0 / hymenoptera fine-tune (see notes)
CALIB_PERCENTILE = 99.99
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul")  # weighted ops: TensorRT's recommended Q/DQ placement

SENSITIVITY_IMAGES = 32  # calibration views scored per bypass
MIN_GAIN = 0.2  # a layer is kept float only if that cuts the remaining output error by this fraction
MAX_FLOAT_LAYERS = 8


class _Reader:
    """onnxruntime CalibrationDataReader over float32 views in batches of one size (the histogram
    calibrators stack the batches; a static graph takes only its own batch size): the last batch is
    filled up with the first views again."""

    def __init__(self, name: str, views: np.ndarray, size: int):
        self.count = len(views)
        total = -(-self.count // size) * size  # whole batches
        flat = np.concatenate([views] * -(-total // self.count))[:total]
        self._batches = [{name: flat[i:i + size]} for i in range(0, total, size)]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise VrError(f"unknown calibration method {method!r}: use one of {', '.join(CALIB_METHODS)}")
    return methods[method]


def _entropy_ranges(proto, reader: _Reader, op_types: Sequence[str], tmp: Path) -> dict:
    """KL-divergence thresholds over 2048-bin histograms folded into 128 quantized bins (TensorRT's
    entropy calibration), as TensorQuantOverrides. quantize_static's own Entropy method cannot be
    given more histogram bins than quantized bins, which makes its only candidate the full range:
    MinMax by another name."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    path = tmp / "fp32.onnx"
    onnx.save(proto, str(path))
    cal = create_calibrator(path, list(op_types), augmented_model_path=str(tmp / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": 2048, "num_quantized_bins": 128, "symmetric": True})
    reader.rewind()
    cal.collect_data(reader)
    data = cal.compute_data().data
    init = {t.name for t in proto.graph.initializer}
    out = {}
    for name, td in data.items():
        if name not in init:
            t = float(max(abs(float(td.range_value[0])), abs(float(td.range_value[1]))))
            out[name] = [{"rmin": np.float32(-t), "rmax": np.float32(t)}]
    return out


def _qdq(proto, reader: _Reader, method: str, op_types: Sequence[str], exclude: Sequence[str],
         ranges: dict | None = None):
    """One run of quantize_static (on a copy: it rewrites its input's initializers); ``ranges``:
    activation ranges already computed (entropy), as TensorQuantOverrides."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src = onnx.ModelProto()
    src.CopyFrom(proto)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": list(op_types), "CalibPercentile": CALIB_PERCENTILE,
             "CalibTensorRangeSymmetric": True}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" and similar advice, not errors
    try:
        # The calibrators print their progress to stdout: keep the CLI's output ours.
        with tempfile.TemporaryDirectory(prefix="vr-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            if ranges:
                extra["TensorQuantOverrides"] = ranges
            out = Path(tmp) / "int8.onnx"
            reader.rewind()
            quantize_static(src, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                            per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            calibrate_method=_ort_method("percentile" if method == "percentile" else "minmax"),
                            extra_options=extra)
            return onnx.load(str(out))
    except VrError:
        raise
    except Exception as e:
        raise VrError(f"INT8 quantization failed: {type(e).__name__}: {first_line(e)}") from e
    finally:
        root.setLevel(level)


def _probs(proto, views: np.ndarray, batch: int) -> np.ndarray:
    from vr.runtime.onnxruntime_backend import cpu_session

    sess = cpu_session(proto)
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: views[i:i + batch]})[0] for i in range(0, len(views), batch)])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _bypass(proto, tensor: str):
    """A copy whose consumers of ``tensor``'s Q/DQ read ``tensor`` itself (float)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    q_out = {n.output[0] for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor}
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_out}
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            if name in dq_out:
                n.input[i] = tensor
    return m


def _sensitive_layers(fp32, q, views: np.ndarray, batch: int) -> tuple[list[str], dict]:
    """Names of the weighted nodes to keep float, and the calibration error before and after."""
    inits = {t.name for t in q.graph.initializer}
    acts = [n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    ref = _probs(fp32, views, batch)

    def err(model) -> float:
        return float(np.abs(_probs(model, views, batch) - ref).mean())

    base = err(q)
    ranked = sorted(acts, key=lambda t: err(_bypass(q, t)))
    cur, cur_err, chosen = q, base, []
    for t in ranked[:MAX_FLOAT_LAYERS]:
        cand = _bypass(cur, t)
        e = err(cand)
        if e > (1 - MIN_GAIN) * cur_err:
            break
        cur, cur_err = cand, e
        chosen.append(t)
    dq_of = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    q_of = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    nodes = sorted({n.name for n in q.graph.node if n.op_type in INT8_OP_TYPES
                    for i in n.input if q_of.get(dq_of.get(i, ""), None) in chosen})
    return nodes, {"images": len(views), "mean_abs_dp_all_int8": round(base, 5),
                   "mean_abs_dp_with_float_layers": round(cur_err, 5)}


def _fold_identity_weights(proto):
    """A copy with ``Identity(initializer)`` nodes (the TorchScript exporter writes them for
    duplicated weights) replaced by initializers: otherwise the quantizer takes those weights for
    activations (per-tensor scales from calibration instead of per-channel weight scales)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]), n.output[0]))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return m


def quantize_int8(proto, calib_batches: Iterable[np.ndarray], method: str = DEFAULT_CALIB_METHOD, *,
                  op_types: Sequence[str] = INT8_OP_TYPES, keep_sensitive: bool = True):
    """The backbone with explicit INT8 Q/DQ (see the module) and what was done."""
    import onnxruntime

    _ort_method(method)
    arrays = [np.asarray(b, np.float32) for b in calib_batches]
    views = np.concatenate(arrays) if arrays else np.zeros((0,))
    if not len(views):
        raise VrError("no calibration images")
    proto = _fold_identity_weights(proto)
    inp = proto.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    batch = dim0.dim_value if dim0.HasField("dim_value") else min(len(views), 16)
    reader = _Reader(inp.name, views, batch)
    ranges = None
    if method == "entropy":
        try:
            with tempfile.TemporaryDirectory(prefix="vr-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
                ranges = _entropy_ranges(proto, reader, op_types, Path(tmp))
        except Exception as e:
            raise VrError(f"INT8 entropy calibration failed: {type(e).__name__}: {first_line(e)}") from e
    q = _qdq(proto, reader, method, op_types, [], ranges)
    float_nodes, sensitivity = [], None
    if keep_sensitive:
        n = max(1, SENSITIVITY_IMAGES // batch) * batch
        sub = np.concatenate([views] * -(-n // len(views)))[:n]  # whole batches of the graph's size
        float_nodes, sensitivity = _sensitive_layers(proto, q, sub, batch)
        if float_nodes:
            q = _qdq(proto, reader, method, op_types, float_nodes, ranges)
    model = checked_model(q, "the int8 backbone")
    ops = [n.op_type for n in model.graph.node]
    info = {"precision": "int8", "tool": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__} (QDQ)",
            "calibration": method, "calib_images": reader.count, "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel", "quantized_op_types": list(op_types),
            "float_layers": float_nodes, "quantize_nodes": ops.count("QuantizeLinear"),
            "dequantize_nodes": ops.count("DequantizeLinear")}
    if sensitivity:
        info["sensitivity"] = sensitivity
    if method == "percentile":
        info["percentile"] = CALIB_PERCENTILE
    return model, info
