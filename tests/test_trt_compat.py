"""The TensorRT compatibility check (vr/export/trt_compat.py): vr's real graphs, planted faults, the data."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from vr.errors import VrError

import onnx
from onnx import TensorProto, helper

from vr.export.trt_compat import (  # noqa: E402
    MATRIX_PATH,
    TENSORRT_RANGE,
    TENSORRT_REQUIREMENT,
    check_tensorrt_compat,
    load_matrix,
    require_tensorrt_compat,
)

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("1", "2", "10")

def make_checkpoint(path: Path, interpolation: str = "bilinear", size: int = 40, **pre):
    """A tiny test_resnet checkpoint on disk (random weights: only the graph's structure matters)."""
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vr.models.factory import create_model
    from vr.models.preprocess import Preprocess

    torch.manual_seed(0)
    model = create_model("test_resnet", len(CLASSES))
    save_checkpoint(path, Checkpoint("test_resnet", len(CLASSES), model.state_dict(), ClassMap(CLASSES),
                                     Preprocess(size, int(size / 0.875), interpolation, **pre)))
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt_ckpts")
    return {
        "bilinear": make_checkpoint(d / "bilinear.pt", "bilinear"),
        "bicubic": make_checkpoint(d / "bicubic.pt", "bicubic"),
        "nearest": make_checkpoint(d / "nearest.pt", "nearest"),
        "bicubic-border": make_checkpoint(d / "border.pt", "bicubic", border_crop=0.07),
        "bilinear-pad": make_checkpoint(d / "pad.pt", "bilinear", crop_mode="pad"),
        "odd-border": make_checkpoint(d / "odd.pt", "bilinear", border_crop=0.123456789),
    }


def export(ckpt, tta: str = "none", impl: str = "matmul", precision: str = "fp32"):
    from vr.export.onnx import build_onnx
    from vr.models.factory import model_from_checkpoint

    kw = {}
    if precision != "fp32":
        from PIL import Image

        from vr.export.precision import Calibration

        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)) for _ in range(4)]
        kw = dict(precision=precision, calib=Calibration(images) if precision == "int8" else None)
    return build_onnx(ckpt, tta, resize_impl=impl, model=model_from_checkpoint(ckpt), **kw)


@pytest.fixture(scope="module")
def matmul_graph(ckpts):
    return export(ckpts["bilinear"], "flip")


def rules(findings) -> set[str]:
    return {f.rule for f in findings}


# ---------------------------------------------------------------------------------------------
# vr's real exports
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,tta,precision", [
    ("bilinear", "none", "fp32"), ("bilinear", "flip", "fp32"), ("bilinear", "five-crop", "fp32"),
    ("bilinear", "ten-crop", "fp32"), ("bicubic", "ten-crop", "fp32"), ("nearest", "ten-crop", "fp32"),
    ("bicubic-border", "flip", "fp32"), ("bilinear-pad", "five-crop", "fp32"), ("bilinear", "flip", "fp16"),
    ("bilinear", "flip", "bf16"), ("bilinear", "flip", "int8")])
def test_matmul_exports_are_compatible(ckpts, variant, tta, precision):
    """The graphs TensorRT engines are built from (MatMul resize), every TTA mode, interpolation and
    precision, with a border crop: nothing the parser would refuse (uint8 is read only by the Cast)."""
    model = export(ckpts[variant], tta, precision=precision)
    assert [str(f) for f in check_tensorrt_compat(model)] == []
    require_tensorrt_compat(model, f"the {variant} {tta} {precision} graph")
    uint8_readers = [n.op_type for n in model.graph.node if "images" in n.input]
    assert uint8_readers == ["Cast"]


def test_matmul_ensemble_is_compatible(ckpts):
    from vr.export.onnx import build_ensemble_onnx
    from vr.models.factory import model_from_checkpoint

    members = [ckpts["bilinear"], ckpts["bicubic-border"]]
    model = build_ensemble_onnx(members, [0.6, 0.4], tta="flip", resize_impl="matmul",
                                models=[model_from_checkpoint(c) for c in members])
    assert [str(f) for f in check_tensorrt_compat(model)] == []
    require_tensorrt_compat(model, "the ensemble graph")


@pytest.mark.parametrize("variant", ["bilinear", "bicubic"])
def test_resize_impl_is_refused_for_its_antialiasing(ckpts, variant):
    """--resize-impl resize uses Resize(antialias=1), which TensorRT lacks: caught, for every Resize."""
    model = export(ckpts[variant], "none", impl="resize")
    resize = [f for f in check_tensorrt_compat(model) if f.rule == "resize"]
    resize_nodes = [n.name for n in model.graph.node if n.op_type == "Resize"]
    assert resize_nodes and sorted(f.node for f in resize) == sorted(resize_nodes)
    assert all("antialias" in f.why for f in resize)


def test_resize_impl_nearest_is_refused_for_float64(ckpts):
    """PIL-exact NEAREST indices in the resize impl are float64 (CumSum in double): TensorRT has none."""
    findings = check_tensorrt_compat(export(ckpts["nearest"], "none", impl="resize"))
    doubles = [f for f in findings if f.rule == "double"]
    assert {"CumSum", "Cast", "Floor"} <= {f.op_type for f in doubles}


def test_unusual_border_fraction_is_refused_for_float64(ckpts):
    """A border crop with no small exact fraction is computed in float64, also in the matmul impl."""
    findings = check_tensorrt_compat(export(ckpts["odd-border"], "none"))
    assert "double" in rules(findings)
    assert {f.op_type for f in findings if f.rule == "double"} >= {"Cast", "Mul", "Floor"}


# ---------------------------------------------------------------------------------------------
# Planted faults in a real graph: the check fails and the message names the node
# ---------------------------------------------------------------------------------------------
def plant(model, make_nodes):
    """Insert nodes after the graph's first Relu (in the backbone): make_nodes(src) -> (nodes, new_name)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.op_type == "Relu")
    src = nodes[i].output[0]
    new_nodes, out = make_nodes(src)
    for n in nodes[i + 1:]:
        for j, name in enumerate(n.input):
            if name == src:
                n.input[j] = out
    del m.graph.node[:]
    m.graph.node.extend(nodes[:i + 1] + new_nodes + nodes[i + 1:])
    return m


def test_planted_unknown_op_is_named(matmul_graph):
    m = plant(matmul_graph, lambda src: ([helper.make_node("Frobnicate", [src], ["planted_out"],
                                                           name="net/planted_frobnicate")], "planted_out"))
    with pytest.raises(VrError) as e:
        require_tensorrt_compat(m, "model.onnx")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"model.onnx would not build with TensorRT {TENSORRT_RANGE}")
    finding = next(f for f in check_tensorrt_compat(m) if f.rule == "op")
    assert (finding.op_type, finding.node) == ("Frobnicate", "net/planted_frobnicate")
    assert "Frobnicate node 'net/planted_frobnicate'" in str(finding) and "support matrix" in finding.why


def test_planted_float64_and_uint8_mid_graph(matmul_graph):
    def round_trip(to):
        def make(src):
            return [helper.make_node("Cast", [src], ["planted_mid"], name="net/planted_to", to=to),
                    helper.make_node("Relu" if to == TensorProto.DOUBLE else "Identity", ["planted_mid"],
                                     ["planted_mid2"], name="net/planted_use"),
                    helper.make_node("Cast", ["planted_mid2"], ["planted_back"], name="net/planted_back",
                                     to=TensorProto.FLOAT)], "planted_back"
        return make

    doubles = check_tensorrt_compat(plant(matmul_graph, round_trip(TensorProto.DOUBLE)))
    assert {f.node for f in doubles if f.rule == "double"} == {"net/planted_to", "net/planted_use",
                                                               "net/planted_back"}
    uint8 = [f for f in check_tensorrt_compat(plant(matmul_graph, round_trip(TensorProto.UINT8)))
             if f.node.startswith("net/")]
    assert [(f.rule, f.node) for f in uint8] == [("uint8", "net/planted_to"), ("uint8", "net/planted_use")]
    assert "inside the graph" in uint8[0].why and "reads UINT8" in uint8[1].why


def test_planted_custom_domain_and_count(matmul_graph):
    m = plant(matmul_graph, lambda src: ([helper.make_node("Frobnicate", [src], ["p1"], name="net/custom",
                                                           domain="com.example"),
                                          helper.make_node("Unique", ["p1"], ["p2"], name="net/unique")], "p2"))
    # Without an opset import for its domain the graph is invalid: shape inference fails, which is
    # itself a finding, and the node rules still run.
    assert {"types", "domain"} <= rules(check_tensorrt_compat(m))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    found = [f for f in check_tensorrt_compat(m) if f.node.startswith("net/")]
    assert [(f.rule, f.node) for f in found] == [("domain", "net/custom"), ("op", "net/unique")]
    assert "unsupported by the TensorRT ONNX parser" in found[1].why
    total = len(check_tensorrt_compat(m))
    with pytest.raises(VrError, match=rf"\(and {total - 1} more problems?\)$"):
        require_tensorrt_compat(m)


# ---------------------------------------------------------------------------------------------
# Small graphs: types, opset, Q/DQ
# ---------------------------------------------------------------------------------------------
def conv_model(dtype=TensorProto.FLOAT, opset: int = 18, resize: dict | None = None):
    """float input -> Cast(dtype) -> Conv (dtype weights) [-> Resize] -> Cast(float)."""
    from onnx import numpy_helper

    npt = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}.get(dtype, np.float32)
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), npt), "w")
    if dtype == TensorProto.BFLOAT16:
        w = helper.make_tensor("w", TensorProto.BFLOAT16, (2, 3, 3, 3), np.ones(54, np.float32).tolist())
    nodes = [helper.make_node("Cast", ["x"], ["xc"], name="cast_in", to=dtype),
             helper.make_node("Conv", ["xc", "w"], ["y"], name="conv")]
    inits = [w]
    if resize is not None:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", ["y", "", "scales"], ["y2"], name="resize", **resize))
    nodes.append(helper.make_node("Cast", [nodes[-1].output[0]], ["out"], name="cast_out", to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_float_precisions_pass(dtype):
    assert check_tensorrt_compat(conv_model(dtype)) == []
    assert check_tensorrt_compat(conv_model(dtype, resize=dict(mode="linear"))) == []


def test_types_and_opset_are_checked():
    int32_conv = [f for f in check_tensorrt_compat(conv_model(TensorProto.INT32)) if f.node == "conv"]
    assert int32_conv and int32_conv[0].rule == "dtype" and "INT32" in int32_conv[0].why
    assert rules(check_tensorrt_compat(conv_model(opset=25))) == {"opset"}
    cubic = check_tensorrt_compat(conv_model(resize=dict(mode="cubic")))
    assert [(f.rule, f.node) for f in cubic] == [("resize", "resize")] and "cubic" in cubic[0].why
    crop = check_tensorrt_compat(conv_model(resize=dict(mode="linear",
                                                        coordinate_transformation_mode="tf_crop_and_resize")))
    assert [f.node for f in crop] == ["resize"]


def test_qdq_from_onnxruntime_quantizer(tmp_path):
    """ONNX Runtime's static QDQ quantizer: its defaults (asymmetric activations, INT32 bias DQ) are
    refused; symmetric with float biases passes."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 12, 12),), str(fp32), dynamo=False, input_names=["x"],
                      output_names=["y"], opset_version=18)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.items, None)

    def quantize(name, **kw):
        quantize_static(str(fp32), str(tmp_path / name), Reader(), **kw)
        return onnx.load(str(tmp_path / name))

    default = check_tensorrt_compat(quantize("default.onnx"))
    assert rules(default) == {"qdq"}
    whys = " ".join(f.why for f in default)
    assert "zero point is not all zeros" in whys and "INT32" in whys
    trt = quantize("trt.onnx", per_channel=True,
                   extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    assert {n.op_type for n in trt.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert check_tensorrt_compat(trt) == []


# ---------------------------------------------------------------------------------------------
# The data and where it came from
# ---------------------------------------------------------------------------------------------
def test_matrix_names_its_source_and_covers_vr_ops():
    m = load_matrix()
    src = m["source"]
    assert src["repository"] == "onnx/onnx-tensorrt" and src["path"] == "docs/operators.md"
    assert src["url"].startswith("https://github.com/onnx/onnx-tensorrt/blob/")
    assert src["tensorrt_version"] == m["tensorrt_version"] and len(src["sha256"]) == 64
    ops = m["operators"]
    assert "Antialiasing is not supported" in ops["Resize"]["restrictions"]
    assert ops["Unique"]["supported"] is False and "DOUBLE" not in ops["Cast"]["types"]
    assert MATRIX_PATH.is_file() and MATRIX_PATH.parent.name == "data"


def test_update_script_regenerates_the_json(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import update_trt_ops
    finally:
        sys.path.pop(0)
    md = tmp_path / "operators.md"
    md.write_text(
        "# Supported ONNX Operators\n\nTensorRT 10.99 supports operators in the inclusive range of opset 9 to "
        "opset 30. More details below.\n\nTensorRT supports the following ONNX data types: FLOAT32, UINT8, and BOOL\n\n"
        "> Note: UINT8 is only supported as network input or output tensor types.\n\n"
        "| Operator | Supported | Supported Types | Restrictions |\n|---|---|---|---|\n"
        "| Abs       | Y | FP32, FP16, BF16, |\n"
        "| Resize    | Y | FP32 | Modes: `linear`.<br />Antialiasing is not supported.|\n"
        "| Frobnicate | N | Not supported. Use a plugin.\n")
    out = tmp_path / "ops.json"
    assert update_trt_ops.main([str(md), "--branch", "release/10.99", "--commit", "abc123", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["source"]["url"] == "https://github.com/onnx/onnx-tensorrt/blob/release/10.99/docs/operators.md"
    assert (data["tensorrt_version"], data["opset_min"], data["opset_max"]) == ("10.99", 9, 30)
    assert data["operators"]["Abs"] == {"supported": True, "types": ["FP32", "FP16", "BF16"], "restrictions": ""}
    assert data["operators"]["Resize"]["restrictions"] == "Modes: `linear`. Antialiasing is not supported."
    assert data["operators"]["Frobnicate"] == {"supported": False, "types": [],
                                                "restrictions": "Not supported. Use a plugin."}
    assert data["notes"] == ["UINT8 is only supported as network input or output tensor types."]


def test_gpu_extra_pins_the_checked_range():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert TENSORRT_REQUIREMENT in extras["gpu"]
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data/*.json" in data["vr.export"]


# ---------------------------------------------------------------------------------------------
# Polygraphy (runs without TensorRT)
# ---------------------------------------------------------------------------------------------
def test_polygraphy_lint_names_a_node_onnxruntime_cannot_run():
    pytest.importorskip("polygraphy")
    pytest.importorskip("onnx_graphsurgeon")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"),
         helper.make_node("Frobnicate", ["a"], ["y"], name="planted")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    lint = [f for f in check_tensorrt_compat(model, lint=True) if f.rule == "lint"]
    assert [f.node for f in lint] == ["planted"] and "Frobnicate" in lint[0].why
    assert check_tensorrt_compat(conv_model(), lint=True) == []
