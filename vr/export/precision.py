"""Precision inside the ONNX graph: the backbone converted to fp16, bf16 or explicit INT8 Q/DQ.

The exporter converts the backbone alone (input ``x``: normalised float32 views, output ``logits``),
before it is merged with the preprocessing (``pre/``) and post-processing (``post/``: softmax and
the mean over the TTA views), which stay float32. A TensorRT engine built strongly typed from the
graph then runs exactly the precision the graph states, and the parity gate measures it.

- ``fp16`` / ``bf16``: every float tensor of the backbone becomes the low type (weights stored in
  it), with a Cast at each border so the backbone still takes and returns float32. An op whose ONNX
  schema does not accept the low type at the graph's opset stays float32 between Casts; an input
  the schema fixes to float32 (e.g. Resize ``scales``) stays float32. bf16 needs opset 22 (Conv,
  the poolings and HardSigmoid/HardSwish accept bfloat16 only from opset 22), so a bf16 backbone is
  upgraded to opset 22, as NVIDIA ModelOpt AutoCast does. TensorRT's ONNX parser (10.15 / 11.x)
  takes FP16 and BF16 for these ops.
- ``int8``: explicit QuantizeLinear/DequantizeLinear pairs (:mod:`vr.export.quantize`): symmetric,
  zero points 0, per-channel weights, on the inputs of Conv/Gemm/MatMul, calibrated on normalised
  views of training images; the few layers whose int8 input costs most accuracy stay float.

ONNX Runtime's CPU provider has no bf16 kernels for most ops (:func:`runnable_on_ort_cpu` probes
it). :func:`emulated_for_gate` rewrites a low-precision graph so that ONNX Runtime CPU reproduces
its rounding in float32 arithmetic; the gate then reports an emulated measurement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vr.errors import VrError, first_line
from vr.export.onnx_check import checked_model
from vr.export.quantize import DEFAULT_CALIB_METHOD
from vr.formats import PRECISIONS

_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16  # onnx.TensorProto data types (no onnx import at module load)
LOW_TYPES = {"fp16": _FLOAT16, "bf16": _BFLOAT16}
_TYPE_STR = {_FLOAT: "tensor(float)", _FLOAT16: "tensor(float16)", _BFLOAT16: "tensor(bfloat16)"}
BF16_MIN_OPSET = 22
FP16_MAX = 65504.0
# Ops whose output type is set by an attribute other than Cast's ``to``: left in float32.
_DTYPE_ATTR_OPS = {"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                   "Multinomial", "Bernoulli"}


@dataclass
class Calibration:
    """INT8 calibration: decoded images (PIL) or image paths, and the calibration method."""

    images: Sequence
    method: str = DEFAULT_CALIB_METHOD
    batch_size: int = 16


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise VrError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def convert_backbone(proto, precision: str, *, calib_batches: Iterable[np.ndarray] | None = None,
                     method: str = DEFAULT_CALIB_METHOD):
    """The backbone ModelProto (float32 ``x`` -> float32 ``logits``) at ``precision``, and a dict
    saying what was done (for the metadata). The input and output stay float32."""
    check_precision(precision)
    if precision == "fp32":
        return proto, {"precision": "fp32"}
    if precision in LOW_TYPES:
        return to_low_float(proto, precision)
    if calib_batches is None:
        raise VrError("--precision int8 needs calibration images (--calib DIR)")
    from vr.export.quantize import quantize_int8

    return quantize_int8(proto, calib_batches, method)


@functools.lru_cache(maxsize=None)
def runnable_on_ort_cpu(precision: str) -> bool:
    """Whether the installed ONNX Runtime's CPU provider loads and runs a small Conv/Gemm network
    converted to ``precision`` (measured once per process, not assumed)."""
    from vr.runtime.onnxruntime_backend import cpu_session

    check_precision(precision)
    proto = _probe_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    try:
        proto, _ = convert_backbone(proto, precision, calib_batches=[x], method="minmax")
        sess = cpu_session(proto)
        return bool(np.isfinite(sess.run(None, {"x": x})[0]).all())
    except Exception:  # noqa: BLE001  (any refusal means "not runnable", which is the answer)
        return False


def emulated_for_gate(proto, precision: str):
    """A float32 twin of a low-precision graph that ONNX Runtime CPU runs: low-precision
    initializers and constants become float32 holding the same values (exact), and every tensor the
    real graph holds in the low type is produced in float32 and rounded through Cast(low) ->
    Cast(float). Works on the backbone alone or on the whole exported graph. INT8 and fp32 graphs
    are returned unchanged (they run as they are)."""
    check_precision(precision)
    if precision not in LOW_TYPES:
        return proto
    return _emulate(proto, LOW_TYPES[precision])


def precision_metadata(info: dict | Sequence[dict]) -> dict[str, str]:
    """Metadata keys for a conversion's ``info`` (an ensemble: one per member): ``precision`` and
    ``precision_detail`` (JSON: tool, calibration, opset, ...)."""
    import json

    infos = [info] if isinstance(info, dict) else list(info)
    meta = {"precision": str(infos[0].get("precision", "fp32"))}
    details = [{k: v for k, v in i.items() if k != "precision"} for i in infos]
    if any(details):
        meta["precision_detail"] = json.dumps(details[0] if len(details) == 1 else {"members": details},
                                              sort_keys=True)
    return meta


def calibration_batches(images: Sequence, pre, batch_size: int = 16) -> list[np.ndarray]:
    """Normalised centre-crop views ``[B, 3, S, S]`` float32 of calibration images (PIL images or
    paths), made by the checkpoint's own :class:`~vr.models.preprocess.Preprocess`."""
    from vr.data.images import UnreadableImage, load_rgb
    from vr.util.console import warn

    views = []
    for item in images:
        try:
            img = load_rgb(item) if isinstance(item, (str, Path)) else item
        except UnreadableImage as e:
            warn(f"calibration: skipping {e}")
            continue
        views.append(pre(img).numpy())
    if not views:
        raise VrError("no readable calibration images")
    return [np.stack(views[i:i + batch_size]).astype(np.float32) for i in range(0, len(views), batch_size)]


# ---------------------------------------------------------------------------------------------
# fp16 / bf16
# ---------------------------------------------------------------------------------------------
def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _tensor_types(proto) -> dict[str, int]:
    """Element type of every tensor of the (shape-inferred) main graph."""
    g = proto.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _slot_types(schema, index: int, is_input: bool) -> set[str] | None:
    """Types the schema allows at one input/output position (None: no such formal parameter)."""
    params = schema.inputs if is_input else schema.outputs
    if not params:
        return None
    if index >= len(params):
        last = params[-1]
        if last.option != last.option.Variadic:
            return None
        index = len(params) - 1
    type_str = params[index].type_str
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}


def _node_plan(node, types: dict[str, int], opset: int, low: int):
    """For one node: (runs_low, per-input wanted type or None to leave as is)."""
    from onnx import defs

    ins = [(i, n) for i, n in enumerate(node.input) if n and types.get(n) == _FLOAT]
    outs = [(i, n) for i, n in enumerate(node.output) if n and types.get(n) == _FLOAT]
    keep = [None] * len(node.input)
    if not ins and not outs:
        return False, keep
    if node.domain not in ("", "ai.onnx") or node.op_type in _DTYPE_ATTR_OPS:
        return False, keep
    if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: control flow
        raise VrError(f"cannot convert {node.op_type} node {node.name!r} (control flow) to a low precision")
    schema = defs.get_schema(node.op_type, opset, node.domain)
    low_s, f_s = _TYPE_STR[low], _TYPE_STR[_FLOAT]
    fixed_in = set()
    for is_input, slots in ((True, ins), (False, outs)):
        for i, _ in slots:
            allowed = _slot_types(schema, i, is_input) or set()
            if allowed == {f_s}:  # the schema fixes this one to float32 (e.g. Resize scales)
                if is_input:
                    fixed_in.add(i)
                elif node.op_type != "Cast":
                    return False, keep
            elif low_s not in allowed:
                return False, keep
    wanted = [None] * len(node.input)
    for i, _ in ins:
        wanted[i] = _FLOAT if i in fixed_in else low
    return True, wanted


def _as_low(arr: np.ndarray, low: int, stats: dict) -> np.ndarray:
    import ml_dtypes

    arr = np.asarray(arr, dtype=np.float32)
    if low == _FLOAT16:
        over = np.abs(arr) > FP16_MAX
        stats["weights_clipped"] += int(over.sum())
        out = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
    else:
        out = arr.astype(ml_dtypes.bfloat16)
    stats["weights_flushed_to_zero"] += int(((out == 0) & (arr != 0)).sum())
    return out


def _low_tensor(t, low: int, stats: dict, name: str | None = None):
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    out = numpy_helper.from_array(_as_low(arr, low, stats), name if name is not None else t.name)
    if low == _BFLOAT16 and out.data_type != _BFLOAT16:  # older onnx: ml_dtypes arrays not recognised
        raise VrError("this onnx cannot store bfloat16 tensors: pip install -U onnx")
    return out


def _retype_attrs(node, low: int, stats: dict) -> None:
    """Constant / ConstantOfShape values and Cast targets for a node that now outputs ``low``."""
    from onnx import helper, numpy_helper

    if node.op_type == "Cast":
        for a in node.attribute:
            if a.name == "to" and a.i == _FLOAT:
                a.i = low
    elif node.op_type in ("Constant", "ConstantOfShape"):
        attrs = {a.name: a for a in node.attribute}
        if "value" in attrs and attrs["value"].t.data_type == _FLOAT:
            attrs["value"].t.CopyFrom(_low_tensor(attrs["value"].t, low, stats, attrs["value"].t.name))
        elif node.op_type == "ConstantOfShape" and "value" not in attrs:  # default: float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                _as_low(np.zeros(1, np.float32), low, stats))))
        for key in ("value_float", "value_floats"):
            if key in attrs:
                vals = np.asarray(attrs[key].f if key == "value_float" else list(attrs[key].floats), np.float32)
                node.attribute.remove(attrs[key])
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    _as_low(vals, low, stats))))


def to_low_float(proto, precision: str):
    """The backbone with fp16 or bf16 tensors, float32 at its input and output (see the module)."""
    import onnx
    from onnx import helper, shape_inference, version_converter

    low = LOW_TYPES[precision]
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if precision == "bf16" and _opset(model) < BF16_MIN_OPSET:
        try:
            model = version_converter.convert_version(model, BF16_MIN_OPSET)
        except Exception as e:
            raise VrError(f"cannot upgrade the backbone to opset {BF16_MIN_OPSET} for bf16: {first_line(e)}") from e
    opset = _opset(model)
    model = shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = _tensor_types(model)
    inits = {t.name: t for t in g.initializer}
    stats = {"weights_clipped": 0, "weights_flushed_to_zero": 0}
    plans = [_node_plan(n, types, opset, low) for n in g.node]
    init_wants: dict[str, set[int]] = {}
    for node, (_, wanted) in zip(g.node, plans):
        for name, want in zip(node.input, wanted):
            if want is not None and name in inits:
                init_wants.setdefault(name, set()).add(want)
    cur = dict(types)  # the type each tensor has after conversion
    for name, wants in init_wants.items():  # used only in the low type: convert in place
        if wants == {low}:
            inits[name].CopyFrom(_low_tensor(inits[name], low, stats))
            cur[name] = low
    tag = precision
    made: dict[tuple[str, int], str] = {}
    new_nodes, new_inits = [], []

    def fetch(name: str, want: int) -> str:
        if cur.get(name) == want:
            return name
        if (name, want) not in made:
            new = f"{name}/{tag if want == low else 'fp32'}"
            if name in inits and want == low:
                new_inits.append(_low_tensor(inits[name], low, stats, new))
            else:
                new_nodes.append(helper.make_node("Cast", [name], [new], name=f"{new}/cast", to=want))
            cur[new] = want
            made[(name, want)] = new
        return made[(name, want)]

    low_nodes, kept = 0, []
    for node, (runs_low, wanted) in zip(g.node, plans):
        for i, want in enumerate(wanted):
            if want is not None:
                node.input[i] = fetch(node.input[i], want)
            elif node.input[i] and cur.get(node.input[i]) == low:  # a float32 consumer of a low tensor
                node.input[i] = fetch(node.input[i], _FLOAT)
        if runs_low:
            low_nodes += 1
            _retype_attrs(node, low, stats)
            for o in node.output:
                if types.get(o) == _FLOAT:
                    cur[o] = low
        elif any(types.get(o) == _FLOAT for o in node.output):
            kept.append(node.op_type)
        new_nodes.append(node)
    _cast_outputs(g, new_nodes, cur, tag)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    _drop_unused_initializers(g)
    del g.value_info[:]
    model = checked_model(model, f"the {precision} backbone")
    info = {"precision": precision, "tool": "vr.export.precision (ONNX retyping)", "opset": opset,
            "low_precision_nodes": low_nodes, "float32_nodes": sorted(set(kept)), **stats}
    return model, info


def _cast_outputs(g, nodes: list, cur: dict, tag: str) -> None:
    """Graph outputs that became low precision: produced under another name, Cast back to float32."""
    from onnx import helper

    for out in g.output:
        if cur.get(out.name) in (_FLOAT16, _BFLOAT16):
            inner = f"{out.name}/{tag}"
            for n in nodes:
                for i, name in enumerate(n.input):
                    if name == out.name:
                        n.input[i] = inner
                for i, name in enumerate(n.output):
                    if name == out.name:
                        n.output[i] = inner
            nodes.append(helper.make_node("Cast", [inner], [out.name], name=f"{inner}/cast", to=_FLOAT))


def _drop_unused_initializers(g) -> None:
    used = {name for n in g.node for name in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


# ---------------------------------------------------------------------------------------------
# Emulation for ONNX Runtime CPU
# ---------------------------------------------------------------------------------------------
def _emulate(proto, low: int):
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = shape_inference.infer_shapes(proto)
    g = model.graph
    types = _tensor_types(model)
    if any(types.get(v.name) == low for v in list(g.input) + list(g.output)):
        raise VrError("cannot emulate a graph whose inputs or outputs are low precision")

    def f32(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    for t in g.initializer:
        if t.data_type == low:
            t.CopyFrom(f32(t))
    nodes = []
    for node in g.node:
        for a in node.attribute:
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == low:
                a.t.CopyFrom(f32(a.t))
        nodes.append(node)
        for i, out in enumerate(node.output):
            if not out or types.get(out) != low:
                continue
            raw = f"{out}/emulated"
            node.output[i] = raw
            if node.op_type != "Cast":  # computed in float32, then rounded to the low type
                nodes.append(helper.make_node("Cast", [raw], [f"{raw}/low"], name=f"{raw}/round", to=low))
                raw = f"{raw}/low"
            nodes.append(helper.make_node("Cast", [raw], [out], name=f"{out}/widen", to=_FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return checked_model(model, "the emulated graph")


def _probe_model():
    """A tiny Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm network, float32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
