"""vr export: the preprocessing graph against PIL, the whole model against PyTorch, the gate, the CLI."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vr.errors import VrError
from vr.models.factory import model_from_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# Odd sides, portrait and landscape, smaller and larger than the resize size (46), one very tall
# (Pillow >= 13 resizes it height first) and one just above the crop.
SIZES = [(31, 45), (45, 31), (97, 61), (61, 97), (50, 50), (123, 41), (41, 123), (47, 46), (201, 151), (40, 300)]
CLASSES = ("1", "2", "10")


def smooth_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").filter(ImageFilter.GaussianBlur(1.0))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [smooth_image(rng, w, h) for w, h in SIZES]


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run1(sess, img: Image.Image) -> np.ndarray:
    return sess.run(None, {"images": np.asarray(img, dtype=np.uint8)[None]})[0]


def make_checkpoint(path: Path, model_name="test_resnet", size=40, interpolation="bicubic", config=None, **pre):
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vr.models.factory import create_model
    from vr.models.preprocess import Preprocess

    torch.manual_seed(0)
    model = create_model(model_name, len(CLASSES))
    with torch.no_grad():
        # A random head predicts one class, nearly uniformly: centre and scale it so that the
        # predictions depend on the image (and a broken graph moves them).
        head = model.get_classifier()
        head.weight.sub_(head.weight.mean(1, keepdim=True)).mul_(300.0)
        head.bias.zero_()
    ckpt = Checkpoint(model_name, len(CLASSES), model.state_dict(), ClassMap(CLASSES),
                      Preprocess(size, int(size / 0.875), interpolation, **pre), config=config or {})
    save_checkpoint(path, ckpt)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def model(ckpt):
    return model_from_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------
# The preprocessing subgraph against PIL, pixel by pixel
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["resize", "matmul"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("geometry", [dict(), dict(border_crop=0.07), dict(crop_mode="squash"),
                                      dict(border_crop=0.123456789)])
def test_preprocess_graph_matches_pil(images, impl, interpolation, geometry):
    from vr.export.onnx import preprocess_model
    from vr.models.preprocess import Preprocess

    pre = Preprocess(40, 46, interpolation, **geometry)
    sess = session(preprocess_model(pre, "none", resize_impl=impl, normalize=False))
    identical = []
    for img in images:
        got = run1(sess, img)[0]
        want = pre.to_uint8(img).numpy().astype(np.float32)
        assert got.shape == want.shape == (3, 40, 40), img.size
        diff = np.abs(got - want)
        if interpolation == "nearest" and impl == "matmul":
            identical.append((diff == 0).mean())  # float32 indices: off by one at exact halves
            continue
        assert diff.max() <= 2, (img.size, diff.max())  # a shifted crop or a wrong size shows as tens of levels
        identical.append((diff == 0).mean())
    if interpolation == "nearest":
        assert min(identical) >= (1.0 if impl == "resize" else 0.8)
    else:
        assert np.mean(identical) >= 0.975 and min(identical) >= 0.95, identical


def test_resize_pass_order_is_pillows():
    """Pillow >= 13 resizes a much taller image height first; the graph follows the installed Pillow
    and the opposite order would be measurably wrong (so the test above can see it)."""
    import PIL

    from vr.export.onnx import pil_height_first, preprocess_model
    from vr.models.preprocess import Preprocess

    rule = pil_height_first()
    assert rule == (int(PIL.__version__.split(".")[0]) >= 13)
    img = smooth_image(np.random.default_rng(3), 61, 97)
    pre = Preprocess(40, 46, "bilinear", crop_mode="squash")
    want = pre.to_uint8(img).numpy().astype(np.float32)
    for impl in ("resize", "matmul"):
        right = (run1(session(preprocess_model(pre, "none", resize_impl=impl, normalize=False, height_first_rule=rule)), img)[0] == want).mean()
        wrong = (run1(session(preprocess_model(pre, "none", resize_impl=impl, normalize=False, height_first_rule=not rule)), img)[0] == want).mean()
        assert right > 0.97 and wrong < right - 0.05, (impl, right, wrong)


@pytest.mark.parametrize("tta", ["flip", "five-crop", "ten-crop"])
def test_tta_views_graph_matches_torch_views(images, tta):
    from vr.export.onnx import preprocess_model
    from vr.models.preprocess import Preprocess
    from vr.models.tta import num_views, tta_views

    pre = Preprocess(40, 46, "bicubic")
    sess = session(preprocess_model(pre, tta, normalize=False))
    for img in images:
        got = run1(sess, img)
        want = tta_views(pre.to_uint8(img, crop=False), pre, tta).numpy().astype(np.float32)
        assert got.shape == want.shape == (num_views(tta), 3, 40, 40)
        diff = np.abs(got - want)
        assert diff.max() <= 2 and (diff == 0).mean() > 0.99, (img.size, diff.max())


def test_border_fraction_is_exact_or_falls_back():
    from vr.export.onnx import _border_fraction

    assert _border_fraction(0.05) == (1, 20)
    assert _border_fraction(0.1) == (1, 10)
    assert _border_fraction(0.123456789) is None  # -> float64 arithmetic in the graph (tested above)


# ---------------------------------------------------------------------------------------------
# The whole model against PyTorch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tta", ["none", "flip", "five-crop", "ten-crop"])
def test_end_to_end_probs_match_torch(ckpt, model, images, tta):
    from vr.export import parity
    from vr.export.onnx import build_onnx

    sess = session(build_onnx(ckpt, tta, model=model))
    got = np.concatenate([run1(sess, img) for img in images])
    ref = parity.torch_probs(model, ckpt.preprocess, images, tta)
    assert got.shape == ref.shape == (len(images), len(CLASSES))
    assert len(set(ref.argmax(1))) >= 2 and ref.max() > 0.6, "the test model should not answer the same for all"
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() < 5e-3
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)


def test_metadata_and_io_contract(ckpt, model, tmp_path):
    from vr.export.onnx import export_onnx, read_onnx_metadata
    from vr.models.checkpoint import file_sha256
    from vr.models.preprocess import Preprocess

    out = export_onnx(ckpt, tmp_path / "m.onnx", "five-crop", model=model)
    meta = read_onnx_metadata(out)
    assert meta["class_names"] == list(CLASSES)
    assert Preprocess.from_dict(meta["preprocess"]) == ckpt.preprocess
    assert meta["tta"] == "five-crop"
    assert meta["checkpoint_sha256"] == file_sha256(ckpt.path)
    assert meta["opset"] == 18
    import vr

    assert meta["vr_version"] == vr.__version__
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    (inp,), (outp,) = m.graph.input, m.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", onnx.TensorProto.UINT8)
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    assert (outp.name, outp.type.tensor_type.elem_type) == ("probs", onnx.TensorProto.FLOAT)
    assert [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim] == ["batch", len(CLASSES)]
    assert not [p for p in tmp_path.iterdir() if p.name != "m.onnx"], "temporary files left behind"


def test_read_metadata_rejects_foreign_models(tmp_path):
    from onnx import TensorProto, helper

    from vr.export.onnx import read_onnx_metadata

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    with pytest.raises(VrError, match="not exported by vr"):
        read_onnx_metadata(tmp_path / "plain.onnx")
    with pytest.raises(VrError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_dynamic_batch_equals_single_images(ckpt, model):
    from vr.export.onnx import build_onnx

    sess = session(build_onnx(ckpt, "flip", model=model))
    rng = np.random.default_rng(7)
    batch = [smooth_image(rng, 53, 71) for _ in range(3)]  # one batch = one size
    together = sess.run(None, {"images": np.stack([np.asarray(b) for b in batch])})[0]
    alone = np.concatenate([run1(sess, b) for b in batch])
    assert together.shape == (3, len(CLASSES))
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1]), "different images should give different outputs"


def test_static_batch(ckpt, model):
    from vr.export.onnx import build_onnx

    m = build_onnx(ckpt, "none", static_batch=3, model=model)
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, "height", "width", 3]
    sess = session(m)
    rng = np.random.default_rng(8)
    x = np.stack([np.asarray(smooth_image(rng, 59, 43)) for _ in range(3)])
    assert sess.run(None, {"images": x})[0].shape == (3, len(CLASSES))
    with pytest.raises(Exception):
        sess.run(None, {"images": x[:2]})


def test_export_leaves_the_torch_model_unchanged(ckpt):
    import torch

    from vr.export.onnx import build_onnx

    model = model_from_checkpoint(ckpt)
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    build_onnx(ckpt, "ten-crop", model=model)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), before)
    # Even a model handed over in training mode keeps its BatchNorm statistics and its mode.
    model.train()
    build_onnx(ckpt, "none", model=model)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed during export"


# ---------------------------------------------------------------------------------------------
# The gate and the CLI
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def verify_dir(tmp_path) -> Path:
    from conftest import write_image_folder

    return write_image_folder(tmp_path / "verify", 2, seed=3, sizes=((45, 33), (33, 47)))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_cli_export_end_to_end(ckpt, cli, tmp_path, verify_dir):
    out = tmp_path / "out" / "model.onnx"
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--tta", "flip")
    assert code == 0, stderr
    assert out.is_file() and not _leftovers(out.parent)
    assert "PASS" in stdout and "6 images from" in stdout and "accuracy" in stdout
    from vr.export.onnx import read_onnx_metadata

    assert read_onnx_metadata(out)["tta"] == "flip"


def test_cli_defaults_val_folder_and_generated_images(tmp_path, cli, verify_dir):
    # The checkpoint remembers its data folder: the gate uses DATA/val and the output lands beside it.
    data = tmp_path / "data"
    data.mkdir()
    verify_dir.rename(data / "val")
    p = make_checkpoint(tmp_path / "run" / "best.pt", "test_efficientnet", size=32, interpolation="bilinear",
                        config={"data": str(data)}).path
    code, stdout, stderr = cli("export", p, "--simplify")
    assert code == 0, stderr
    assert (p.parent / "model.onnx").is_file() and "the checkpoint's val folder" in stdout
    # Without a val folder or --verify: generated images, said so.
    p2 = make_checkpoint(tmp_path / "run2" / "best.pt", "test_efficientnet", size=32, crop_mode="squash").path
    code, stdout, stderr = cli("export", p2, "--resize-impl", "matmul", "--static-batch", "2")
    assert code == 0, stderr
    assert "generated images" in stdout and (p2.parent / "model.onnx").is_file()


def test_gate_refuses_a_graph_with_wrong_normalisation(ckpt, cli, tmp_path, verify_dir, monkeypatch):
    import vr.export.onnx as onnx_mod

    original = onnx_mod.preprocess_model

    def tampered(pre, *args, **kwargs):
        return original(dataclasses.replace(pre, mean=(0.3, 0.3, 0.3)), *args, **kwargs)

    monkeypatch.setattr(onnx_mod, "preprocess_model", tampered)
    out = tmp_path / "model.onnx"
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--verify", verify_dir)
    assert code == 2
    assert "parity gate failed" in stderr and "FAIL" in stdout
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists() and not _leftovers(tmp_path)
    # A previous good export at that path is left exactly as it was.
    out.write_bytes(b"previous model")
    assert cli("export", ckpt.path, "--out", out, "--verify", verify_dir)[0] == 2
    assert out.read_bytes() == b"previous model" and not _leftovers(tmp_path)


def test_gate_compare_counts_ties_and_bad_outputs():
    from vr.export.parity import compare

    ref = np.array([[0.5004, 0.4996, 0.0], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    got = np.array([[0.4996, 0.5004, 0.0], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    r = compare(ref, got, ["a", "b", "c"], None, atol=1e-2, min_agreement=0.995)
    assert (r.agree, r.ties, r.passed) == (2, 1, True)
    got[2] = [0.7, 0.2, 0.1]
    r = compare(ref, got, ["a", "b", "c"], [0, 0, 1], atol=1e-2, min_agreement=0.995)
    assert not r.passed and len(r.failures) == 2 and r.worst == "c" and r.export_correct == 1
    got[2] = [np.nan, 0.7, 0.1]
    assert not compare(ref, got, ["a", "b", "c"], None, atol=1.0, min_agreement=0.0).passed


def test_missing_checkpoint_is_one_line(cli, tmp_path):
    code, stdout, stderr = cli("export", tmp_path / "nope.pt")
    assert code == 2
    assert stderr.strip().count("\n") == 0 and "checkpoint not found" in stderr


def test_trt_without_tensorrt_says_what_to_install(ckpt, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    out = tmp_path / "m.onnx"
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--trt")
    assert code == 2 and "pip install 'vr[gpu]'" in stderr and stderr.strip().count("\n") == 0
    assert not out.exists(), "fails before doing any work"


def test_simplify_without_onnxslim(ckpt, model, tmp_path, monkeypatch):
    from vr.export.onnx import export_onnx

    monkeypatch.setitem(sys.modules, "onnxslim", None)
    with pytest.raises(VrError, match="pip install onnxslim"):
        export_onnx(ckpt, tmp_path / "m.onnx", simplify=True, model=model)
    assert not (tmp_path / "m.onnx").exists()


def test_config_validation(tmp_path):
    from vr.export import config as export_config
    from vr.export.config import ExportConfig
    from vr.models.tta import TTA_MODES

    assert export_config.TTA_MODES == TTA_MODES
    c = ExportConfig.from_sources(None, checkpoint=str(tmp_path / "a.pt"), trt_batch=[1, 2, 4])
    assert c.trt_batch == (1, 2, 4) and c.tta == "none" and c.opset == 18
    for bad in (dict(opset=17), dict(opset=21), dict(static_batch=0), dict(atol=0), dict(min_agreement=1.5),
                dict(tta="six-crop"), dict(out="m.pt"), dict(trt_batch=[4, 2, 8]), dict(int8=True),
                dict(verify_count=0), dict(trt=True, static_batch=16)):
        with pytest.raises(VrError):
            ExportConfig.from_sources(None, checkpoint="a.pt", **bad)


def test_export_formats_table():
    from vr.export import run

    rows = run.export_formats()
    assert [r["format"] for r in rows] == ["ONNX", "TensorRT"]
    assert all(callable(getattr(run, r["function"])) for r in rows)


def test_trt_needs_cuda_even_with_tensorrt_installed(monkeypatch):
    import types

    import torch

    from vr.export.tensorrt import require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VrError, match="needs a CUDA GPU"):
        require_tensorrt()


def test_int8_calibration_sample_is_class_balanced(tmp_path):
    from conftest import write_image_folder

    from vr.export.tensorrt import calibration_sample

    root = write_image_folder(tmp_path / "train", 5, sizes=((20, 20),))
    (root / "1" / "extra.png").write_bytes((root / "1" / "img0.png").read_bytes())
    sample = calibration_sample(root, 7)
    counts = {c: sum(p.parent.name == c for p in sample) for c in CLASSES}
    assert len(sample) == 7 and max(counts.values()) - min(counts.values()) <= 1, counts
    assert len(calibration_sample(root, 100)) == 16  # everything, once


class _FakeTrt:
    """Just enough of the tensorrt API to drive build_engine's plumbing on a CPU machine (the real
    builder, parser and engine are exercised only by the cuda-marked test below)."""

    __version__ = "10.0.fake"
    float32, float16, int64, bool_ = "float32", "float16", "int64", "bool"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16, INT8, PREFER_PRECISION_CONSTRAINTS = "fp16", "int8", "prefer"

    class NetworkDefinitionCreationFlag:
        pass

    def __init__(self, layers):
        trt = self
        self.built = {}

        class Layer:
            def __init__(self, name, dtype):
                self.name, self.num_outputs, self.precision = name, 1, None
                self._out = types.SimpleNamespace(dtype=dtype)
                self.output_types = {}

            def get_output(self, j):
                return self._out

            def set_output_type(self, j, t):
                self.output_types[j] = t

        self.layers = [Layer(n, t) for n, t in layers]

        class Network:
            num_layers = len(self.layers)

            def get_input(self, i):
                return types.SimpleNamespace(name="images")

            def get_layer(self, i):
                return trt.layers[i]

        class Config:
            def __init__(self):
                self.flags, self.profiles = set(), []

            def set_memory_pool_limit(self, pool, size):
                trt.built["workspace"] = size

            def add_optimization_profile(self, p):
                self.profiles.append(p)

            def set_flag(self, f):
                self.flags.add(f)

            def create_timing_cache(self, data):
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                trt.built["cache_in"] = cache

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"cache")

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                trt.built["profile"] = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                trt.built["config"] = Config()
                return trt.built["config"]

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine-bytes"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                trt.built["onnx"] = path
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_build_engine_plumbing_with_a_fake_tensorrt(tmp_path, monkeypatch):
    import json

    from vr.export import tensorrt as trt_mod

    fake = _FakeTrt([("pre/Resize_1", "float32"), ("pre/Shape_2", "int64"), ("net/conv", "float32")])
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_mod, "_device_name", lambda: "fake GPU")
    engine = tmp_path / "m.engine"
    meta = {"class_names": json.dumps(list(CLASSES)), "preprocess": "{}", "tta": "flip"}
    checked = []
    trt_mod.build_engine(tmp_path / "m.onnx", engine, metadata=meta, batch=(1, 2, 4), size=(16, 64, 256),
                         timing_cache=tmp_path / "timing.cache", before_commit=checked.append)
    assert engine.read_bytes() == b"engine-bytes" and (tmp_path / "timing.cache").read_bytes() == b"cache"
    assert checked and checked[0] != engine, "the gate runs on the temporary file"
    assert fake.built["profile"] == ("images", (1, 16, 16, 3), (2, 64, 64, 3), (4, 256, 256, 3))
    assert fake.built["config"].flags == {"fp16", "prefer"}
    pre_resize, pre_shape, backbone = fake.layers
    assert pre_resize.precision == "float32" and pre_shape.precision is None and backbone.precision is None
    side = trt_mod.read_engine_metadata(engine)
    assert side["class_names"] == list(CLASSES) and side["tensorrt"]["precision"] == "fp16"
    assert side["tensorrt"]["profile_image_side"] == [16, 64, 256]
    # A failing gate leaves neither the engine nor its sidecar.
    engine2 = tmp_path / "bad.engine"

    def refuse(tmp):
        raise VrError("parity gate failed")

    with pytest.raises(VrError):
        trt_mod.build_engine(tmp_path / "m.onnx", engine2, metadata=meta, before_commit=refuse)
    assert not engine2.exists() and not trt_mod.sidecar_path(engine2).exists() and not _leftovers(tmp_path)


def test_cli_trt_flow_with_a_fake_tensorrt(ckpt, cli, tmp_path, verify_dir, monkeypatch):
    """vr export --trt end to end on CPU: the fake 'engine' runs the MatMul-resize ONNX graph that
    TensorRT would have been given, with ONNX Runtime, so the engine gate sees real numbers."""
    from vr.export import parity
    from vr.export import tensorrt as trt_mod

    fake = _FakeTrt([("pre/MatMul_1", "float32")])
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_mod, "_device_name", lambda: "fake GPU")
    monkeypatch.setattr(trt_mod, "EngineRunner", lambda path: parity.onnx_runner(fake.built["onnx"]))
    out = tmp_path / "m.onnx"
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--trt", "--tta", "five-crop")
    assert code == 0, stderr
    assert "MatMul-resize graph" in stdout and "PyTorch vs TensorRT" in stdout
    engine = out.with_suffix(".engine")
    assert out.is_file() and engine.is_file() and (tmp_path / "timing.cache").is_file()
    meta = trt_mod.read_engine_metadata(engine)
    assert meta["tta"] == "five-crop" and meta["resize_impl"] == "matmul" and meta["tensorrt"]["device"] == "fake GPU"


# ---------------------------------------------------------------------------------------------
# TensorRT (GPU machines only)
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_tensorrt_engine_matches_torch(ckpt, cli, tmp_path, verify_dir):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "m.onnx"
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--trt", "--fp32",
                               "--tta", "flip", "--trt-size", "16", "64", "512")
    assert code == 0, stderr
    engine = out.with_suffix(".engine")
    assert engine.is_file() and "PyTorch vs TensorRT" in stdout
    from vr.export.tensorrt import read_engine_metadata

    meta = read_engine_metadata(engine)
    assert meta["class_names"] == list(CLASSES) and meta["tensorrt"]["precision"] == "fp32"
