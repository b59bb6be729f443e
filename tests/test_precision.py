"""Precision inside the exported graph (vr.export.precision): fp16 / bf16 backbones between float32
preprocessing and post-processing, explicit INT8 Q/DQ, and the float32 emulation the gate runs
where ONNX Runtime CPU cannot execute a precision.

The model is eval_helpers' colour classifier (a real test_resnet whose head is the nearest class
mean of its own features), so agreement with float32 means something.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval_helpers import COLOURS, SIZES, colour_image, make_checkpoint
from vr.errors import VrError

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# Largest |Δp| allowed against the float32 graph. fp16 keeps 11 significant bits (unit roundoff
# 2^-11 ~ 4.9e-4 per rounding), so after ~20 layers probabilities move by a few 1e-3 at most
# (measured here: < 3e-3; on the lite0 fine-tune 2.3e-4): the gate's own default --atol, 0.01,
# applies. bf16 keeps 8 bits, 8x coarser: 0.05 (measured here: ~0.01-0.04). INT8 rounds every
# activation entering a Conv/Gemm to 1 part in 127 of its calibrated range: 0.15 on this
# untrained-feature model; INT8 accuracy is judged on a real fine-tune, not here.
TOL = {"fp16": 0.01, "bf16": 0.05, "int8": 0.15}
TTA = "flip"  # two views: the float32 view mean is in the graph


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_all(model, images) -> np.ndarray:
    sess = session(model)
    return np.concatenate([sess.run(None, {"images": np.asarray(im, dtype=np.uint8)[None]})[0] for im in images])


def types_by_name(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    out = {t.name: t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from vr.models.checkpoint import load_checkpoint

    return load_checkpoint(make_checkpoint(tmp_path_factory.mktemp("prec") / "best.pt", COLOURS))


@pytest.fixture(scope="module")
def model(ckpt):
    from vr.models.factory import model_from_checkpoint

    return model_from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def images():
    """Two images per class, sizes differing from the calibration images'."""
    return [colour_image(rgb, SIZES[(i + k) % len(SIZES)], seed=7000 + 10 * k + i)
            for k, rgb in enumerate(COLOURS.values()) for i in range(2)]


@pytest.fixture(scope="module")
def calib():
    return [colour_image(rgb, SIZES[i % len(SIZES)], seed=9000 + 10 * k + i)
            for k, rgb in enumerate(COLOURS.values()) for i in range(4)]


@pytest.fixture(scope="module")
def graphs(ckpt, model, calib):
    from vr.export.onnx import build_onnx

    return {p: build_onnx(ckpt, TTA, model=model, precision=p, calib=calib if p == "int8" else None)
            for p in ("fp32", "fp16", "bf16", "int8")}


@pytest.fixture(scope="module")
def fp32_probs(graphs, images):
    return run_all(graphs["fp32"], images)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_every_precision_is_a_valid_model_with_the_io_contract(graphs, precision):
    m = graphs[precision]
    onnx.checker.check_model(m, full_check=True)  # full_check: every node's types against its schema
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("probs", TensorProto.FLOAT)
    meta = {p.key: p.value for p in m.metadata_props}
    opset = max(o.version for o in m.opset_import if o.domain == "")
    assert meta["opset"] == str(opset)
    assert opset == (22 if precision == "bf16" else 18)  # Conv takes bfloat16 from opset 22
    if precision == "fp32":
        assert meta.get("precision", "fp32") == "fp32"
    else:
        assert meta["precision"] == precision
        assert json.loads(meta["precision_detail"])["tool"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_pre_and_post_stay_float32_and_the_backbone_is_low_precision(graphs, precision):
    m, low = graphs[precision], LOW[precision]
    types = types_by_name(m)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    by_prefix: dict[str, list] = {"pre/": [], "net/": [], "post/": []}
    for node in m.graph.node:
        prefix = node.name.split("/")[0] + "/"
        assert prefix in by_prefix, f"node outside pre/ net/ post/: {node.name}"
        by_prefix[prefix].append(node)
    for prefix in ("pre/", "post/"):
        for node in by_prefix[prefix]:
            for t in list(node.input) + list(node.output):
                assert types.get(t) not in (TensorProto.FLOAT16, TensorProto.BFLOAT16), f"{node.name}: {t}"
    assert [n.op_type for n in by_prefix["post/"]] == ["Softmax", "Reshape", "ReduceMean"]
    assert all(types[o] == TensorProto.FLOAT for n in by_prefix["post/"] for o in n.output)
    inits = {t.name: t for t in m.graph.initializer}
    weights = [inits[i] for n in by_prefix["net/"] for i in n.input if i in inits and inits[i].data_type in floats]
    assert weights and all(w.data_type == low for w in weights), "backbone weights must be stored in the low type"
    conv_w = [inits[n.input[1]] for n in by_prefix["net/"] if n.op_type == "Conv"]
    assert conv_w and all(w.data_type == low for w in conv_w)
    # Inside the backbone every float tensor is low precision; float32 only leaves through the exit Cast.
    f32_out = [n for n in by_prefix["net/"] for o in n.output if types.get(o) == TensorProto.FLOAT]
    assert [n.op_type for n in f32_out] == ["Cast"]
    entry = [n for n in by_prefix["net/"] if n.op_type == "Cast" and types.get(n.input[0]) == TensorProto.FLOAT
             and types.get(n.output[0]) == low]
    assert len(entry) == 1 and entry[0].input[0] == "views"


def test_int8_is_explicit_symmetric_qdq_with_per_channel_weights(graphs):
    m = graphs["int8"]
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dtypes = {t.name: t.data_type for t in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert {n.op_type for n in qdq} == {"QuantizeLinear", "DequantizeLinear"}
    assert all(n.name.startswith("net/") for n in qdq), "Q/DQ only in the backbone"
    for n in qdq:
        assert len(n.input) == 3 and n.input[2] in inits, f"{n.name}: explicit zero point"
        assert dtypes[n.input[2]] == TensorProto.INT8 and not inits[n.input[2]].any(), f"{n.name}: zero point 0"
        assert dtypes[n.input[1]] == TensorProto.FLOAT
    consumers = {i: n for n in m.graph.node for i in n.input}
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    detail = json.loads({p.key: p.value for p in m.metadata_props}["precision_detail"])
    kept = {f"net/{name}" for name in detail["float_layers"]}  # sensitive layers left float, named
    assert len(kept) <= 2 and kept <= {c.name for c in convs}
    dq_out = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    for c in convs:
        assert (c.name in kept) == (not dq_out & set(c.input)), f"{c.name}: Q/DQ inputs unless kept float"
    assert len(weight_dq) == len(convs) - len(kept)
    for n in weight_dq:
        w, scale = inits[n.input[0]], inits[n.input[1]]
        assert dtypes[n.input[0]] == TensorProto.INT8 and np.abs(w.astype(np.int32)).max() <= 127
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        assert axis == 0 and scale.shape == (w.shape[0],), f"{n.name}: per output channel"
        assert consumers[n.output[0]].op_type in ("Conv", "Gemm")
    for n in qdq:
        if n.input[0] not in inits:
            assert inits[n.input[1]].shape == (), f"{n.name}: activations per tensor"
    types = types_by_name(m)
    for c in convs:  # biases stay float (TensorRT takes no int32 DequantizeLinear)
        if len(c.input) > 2:
            assert types[c.input[2]] == TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_runnable_precisions_run_and_the_others_run_emulated(graphs, images, fp32_probs, precision):
    from vr.export.precision import emulated_for_gate, runnable_on_ort_cpu

    real = graphs[precision]
    if runnable_on_ort_cpu(precision):
        got = run_all(real, images)
    else:  # the probe says no: the real graph must indeed fail, and the emulation must run
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.NotImplemented, match="Could not find an implementation"):
            run_all(real, images)
        got = run_all(emulated_for_gate(real, precision), images)
    diff = np.abs(got - fp32_probs).max()
    assert diff <= TOL[precision], f"{precision}: max |dp| {diff:.3g}"
    assert diff > 0, "a converted graph that computes exactly float32 was not converted"
    assert (got.argmax(1) == fp32_probs.argmax(1)).all()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_what_ort_cpu_runs_is_measured():
    from vr.export.precision import runnable_on_ort_cpu

    assert runnable_on_ort_cpu("fp32") and runnable_on_ort_cpu("int8")
    assert runnable_on_ort_cpu("fp16")  # ONNX Runtime casts fp16 ops without CPU kernels itself
    assert isinstance(runnable_on_ort_cpu("bf16"), bool)


def test_fp16_emulation_tracks_the_real_fp16_graph(graphs, images, fp32_probs):
    from vr.export.precision import emulated_for_gate

    emu = emulated_for_gate(graphs["fp16"], "fp16")
    assert not any(t.data_type == TensorProto.FLOAT16 for t in emu.graph.initializer)
    got = run_all(emu, images)
    assert 0 < np.abs(got - fp32_probs).max() <= TOL["fp16"]
    assert np.abs(got - run_all(graphs["fp16"], images)).max() <= TOL["fp16"]


def _tiny_backbone(w: np.ndarray, b: np.ndarray):
    """x [N, K] -> MatMul -> Add -> logits, float32, opset 18."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["logits"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", w.shape[1]])],
                          initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_bf16_emulation_rounds_every_tensor_like_bf16():
    import ml_dtypes

    from vr.export.precision import convert_backbone, emulated_for_gate

    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    real, info = convert_backbone(_tiny_backbone(w, b), "bf16")
    assert info["opset"] == 22 and {t.data_type for t in real.graph.initializer} == {TensorProto.BFLOAT16}
    got = session(emulated_for_gate(real, "bf16")).run(None, {"x": x})[0]

    def r(a):
        return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)

    assert np.array_equal(got, r(got)), "the output must be rounded to bf16"
    expected = r(r(r(x) @ r(w)) + r(b))
    np.testing.assert_allclose(got, expected, rtol=2 ** -7, atol=1e-6)  # one bf16 ulp (float32 sums differ in order)
    assert not np.allclose(got, x @ w + b, rtol=1e-4), "no rounding at all"


def test_fp16_clips_weights_beyond_its_range_and_says_so():
    from vr.export.precision import convert_backbone

    w = np.ones((2, 2), np.float32)
    w[0, 0] = 1e6
    m, info = convert_backbone(_tiny_backbone(w, np.zeros(2, np.float32)), "fp16")
    assert info["weights_clipped"] == 1
    stored = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "W"))
    assert stored.dtype == np.float16 and stored[0, 0] == np.float16(65504)
    out = session(m).run(None, {"x": np.eye(2, dtype=np.float32)})[0]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_ensemble_members_convert_and_post_processing_stays_float32(tmp_path, ckpt, model, images):
    from vr.export.onnx import build_ensemble_onnx
    from vr.models.checkpoint import load_checkpoint
    from vr.models.factory import model_from_checkpoint

    other = load_checkpoint(make_checkpoint(tmp_path / "b.pt", COLOURS, seed=1))
    models = [model, model_from_checkpoint(other)]
    ref = run_all(build_ensemble_onnx([ckpt, other], tta=TTA, models=models), images)
    m = build_ensemble_onnx([ckpt, other], tta=TTA, models=models, precision="fp16")
    onnx.checker.check_model(m, full_check=True)
    types = types_by_name(m)
    post = [n for n in m.graph.node if n.name.startswith(("post/", "ens/"))]
    assert {n.name.split("/")[1] for n in post if n.name.startswith("post/")} == {"m0", "m1"}
    assert all(types[o] == TensorProto.FLOAT for n in post for o in n.output)
    assert json.loads({p.key: p.value for p in m.metadata_props}["precision_detail"])["members"]
    got = run_all(m, images)
    assert np.abs(got - ref).max() <= TOL["fp16"] and (got.argmax(1) == ref.argmax(1)).all()


def test_int8_static_batch_calibrates_in_the_graphs_batch(ckpt, model, calib, images):
    from vr.export.onnx import build_onnx

    m = build_onnx(ckpt, TTA, static_batch=2, model=model, precision="int8", calib=calib)
    x = np.stack([np.asarray(images[0].resize((44, 44)))] * 2)
    out = session(m).run(None, {"images": x})[0]
    assert out.shape == (2, len(COLOURS)) and np.allclose(out.sum(1), 1.0, atol=1e-5)


def test_bad_precision_requests_are_one_line_errors(ckpt, model):
    from vr.export.onnx import build_onnx
    from vr.export.precision import calibration_batches

    with pytest.raises(VrError, match="unknown precision 'fp8'"):
        build_onnx(ckpt, model=model, precision="fp8")
    with pytest.raises(VrError, match="needs calibration images"):
        build_onnx(ckpt, model=model, precision="int8")
    with pytest.raises(VrError, match="unknown calibration method"):
        from vr.export.precision import Calibration

        build_onnx(ckpt, model=model, precision="int8", calib=Calibration([colour_image((1, 2, 3))], "median"))
    with pytest.raises(VrError, match="no readable calibration images"):
        calibration_batches([], ckpt.preprocess)


@pytest.mark.slow  # ONNX Runtime's KL search is pure Python: ~2 minutes on 2 cores
def test_calibration_methods_choose_different_ranges(ckpt, model, calib):
    """Entropy and percentile clip outliers (ranges no wider than MinMax's, some narrower): the
    entropy search really runs (ONNX Runtime's own Entropy option degenerates to MinMax)."""
    from vr.export.onnx import backbone_model
    from vr.export.precision import calibration_batches
    from vr.export.quantize import quantize_int8

    back = backbone_model(model, ckpt.preprocess, "none")
    batches = calibration_batches(calib, ckpt.preprocess)

    def act_scales(method):
        q, info = quantize_int8(back, batches, method, keep_sensitive=False)
        assert info["calibration"] == method and info["float_layers"] == []
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits}

    minmax = act_scales("minmax")
    for method in ("entropy", "percentile"):
        other = act_scales(method)
        assert other.keys() == minmax.keys()
        assert all(other[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
        assert sum(other[k] < minmax[k] * 0.99 for k in minmax) >= len(minmax) // 4
