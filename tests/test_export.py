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

import onnx
import onnxruntime as ort

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
                                      dict(border_crop=0.123456789), dict(crop_mode="pad"),
                                      dict(crop_mode="pad", border_crop=0.05)])
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
    from vr.export.onnx import export_onnx
    from vr.runtime.metadata import read_metadata
    from vr.models.checkpoint import file_sha256
    from vr.models.preprocess import Preprocess

    out = export_onnx(ckpt, tmp_path / "m.onnx", "five-crop", model=model)
    meta = read_metadata(out)
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

    from vr.runtime.metadata import read_metadata
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    with pytest.raises(VrError, match="not exported by vr"):
        read_metadata(tmp_path / "plain.onnx")
    with pytest.raises(VrError, match="not found"):
        read_metadata(tmp_path / "missing.onnx")


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
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="images"):
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
    from vr.runtime.metadata import read_metadata
    assert read_metadata(out)["tta"] == "flip"


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
    # --simplify rewrites the graph (onnxslim folds the preprocessing's constant arithmetic) and keeps
    # vr's metadata; the gate above passed on the simplified graph.
    from vr.export.onnx import build_onnx
    from vr.runtime.metadata import read_metadata

    slim = onnx.load(str(p.parent / "model.onnx"))
    from vr.models.checkpoint import load_checkpoint

    plain = build_onnx(load_checkpoint(p))
    assert len(slim.graph.node) < len(plain.graph.node)
    assert read_metadata(p.parent / "model.onnx")["class_names"] == list(CLASSES)
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
    from vr.export.config import ExportConfig

    c = ExportConfig.from_sources(None, checkpoint=str(tmp_path / "a.pt"), trt_batch=[1, 2, 4])
    assert c.trt_batch == (1, 2, 4) and c.tta == "none" and c.opset == 18
    for bad in (dict(opset=17), dict(opset=21), dict(static_batch=0), dict(atol=0), dict(min_agreement=1.5),
                dict(tta="six-crop"), dict(out="m.pt"), dict(trt_batch=[4, 2, 8]), dict(calib="train"),
                dict(precision="fp8"),
                dict(verify_count=0), dict(trt=True, static_batch=16)):
        with pytest.raises(VrError):
            ExportConfig.from_sources(None, checkpoint="a.pt", **bad)


def test_trt_needs_cuda_even_with_tensorrt_installed(monkeypatch):

    import torch

    from vr.export.tensorrt import require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VrError, match="needs a CUDA GPU"):
        require_tensorrt()


def test_int8_calibration_sample_is_class_balanced(tmp_path):
    from conftest import write_image_folder

    from vr.export.calibration import calibration_sample

    root = write_image_folder(tmp_path / "train", 5, sizes=((20, 20),))
    (root / "1" / "extra.png").write_bytes((root / "1" / "img0.png").read_bytes())
    sample = calibration_sample(root, 7)
    counts = {c: sum(p.parent.name == c for p in sample) for c in CLASSES}
    assert len(sample) == 7 and max(counts.values()) - min(counts.values()) <= 1, counts
    assert len(calibration_sample(root, 100)) == 16  # everything, once


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
    code, stdout, stderr = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--trt", "--precision",
                               "fp32", "--tta", "flip", "--trt-size", "16", "64", "512")
    assert code == 0, stderr
    engine = out.with_suffix(".engine")
    assert engine.is_file() and "PyTorch vs TensorRT" in stdout
    from vr.runtime.metadata import read_metadata

    meta = read_metadata(engine)
    assert meta["class_names"] == list(CLASSES) and meta["tensorrt"]["precision"] == "fp32"


@pytest.mark.parametrize("tta", ["none", "five-crop"])
def test_pad_crop_mode_letterboxes_in_the_graph_and_passes_the_gate(tmp_path, cli, verify_dir, tta):
    """--crop-mode pad: PIL's letterbox (longer side to the resize size on a canvas of the mean colour)
    and the graph's agree pixel by pixel (above); here a pad checkpoint exports through the gate, and
    eval of .pt and .onnx agree."""
    from vr.models.preprocess import Preprocess

    ckpt = make_checkpoint(tmp_path / "pad.pt", crop_mode="pad")
    pre = ckpt.preprocess
    assert pre.crop_mode == "pad" and Preprocess.from_dict(pre.to_dict()) == pre
    img = Image.new("RGB", (90, 30), (250, 10, 10))
    canvas = pre.resized(img)
    assert canvas.size == (pre.resize_size, pre.resize_size)
    assert canvas.getpixel((0, 0)) == pre.fill and canvas.getpixel((pre.resize_size // 2, pre.resize_size // 2)) == (250, 10, 10)
    out = tmp_path / "pad.onnx"
    code, stdout, err = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--tta", tta)
    assert code == 0, err
    assert "PASS" in stdout
    code, _, err = cli("eval", ckpt.path, out, "--data", verify_dir, "--out", tmp_path / "rep", "--tta", tta,
                       "--no-html")
    assert code == 0, err
    import json

    agree = json.loads((tmp_path / "rep" / "report.json").read_text())["agreement"][0]
    assert agree["top1_agreement"] == 1.0 and agree["max_abs_prob_diff"] < 1e-2


def test_export_tta_auto_keeps_the_best_mode_and_records_the_table(ckpt, cli, tmp_path, verify_dir):
    from vr.models.tta import choose_tta
    from vr.runtime.metadata import read_metadata

    out = tmp_path / "auto.onnx"
    code, stdout, err = cli("export", ckpt.path, "--out", out, "--verify", verify_dir, "--tta", "auto")
    assert code == 0, err
    meta = read_metadata(out)
    scores = meta["tta_scores"]
    assert len(scores) == 4 and meta["tta"] == choose_tta(scores) and "--tta auto" in stdout
    # no labels to score on: one line saying what to give
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(verify_dir.rglob("*.png"))[:3]:
        (flat / p.name).write_bytes(p.read_bytes())
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "a2.onnx", "--verify", flat, "--tta", "auto")
    assert code == 2 and "--tta auto needs labelled images" in err


@pytest.mark.parametrize("tta", ["none", "five-crop"])
def test_matmul_resize_of_a_1x5000_strip_stays_small(ckpt, tmp_path, tta):
    """The MatMul resize computes only the rows and columns the views read: a 1 x 5000 PNG (which
    resizes to 45 x 225,000 here, and needed ~22 GB when the whole resize was built) runs in a
    process limited to 1.5 GB of address space, and matches the whole-image computation."""
    import subprocess

    from vr.export.onnx import build_onnx

    path = tmp_path / "m.onnx"
    onnx.save(build_onnx(ckpt, tta, resize_impl="matmul"), str(path))
    script = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, resource.RLIM_INFINITY))\n"
        "import onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "x = np.random.default_rng(0).integers(0, 256, (1, 1, 5000, 3), dtype=np.uint8)\n"
        "np.save(sys.argv[2], s.run(None, {'images': x})[0])\n")
    r = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "p.npy")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "p.npy")
    # the same strip, 1 x 600, small enough for the PIL + PyTorch reference
    from vr.export.parity import torch_probs
    from vr.models.factory import model_from_checkpoint

    strip = np.random.default_rng(0).integers(0, 256, (1, 600, 3), dtype=np.uint8)
    want = torch_probs(model_from_checkpoint(ckpt), ckpt.preprocess, [Image.fromarray(strip)], tta)
    small = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": strip[None]})[0]
    np.testing.assert_allclose(small, want, atol=2e-3)
    assert got.shape == (1, len(CLASSES)) and np.isfinite(got).all()


def test_resize_op_graph_refuses_an_absurd_resize_in_one_line(ckpt, tmp_path):
    from vr.export.onnx import export_onnx
    from vr.runtime.load import load_predictor

    path = export_onnx(ckpt, tmp_path / "m.onnx")
    p = load_predictor(path, device="cpu")
    with pytest.raises(VrError, match=r"a 1x40000 image would be resized to 45x1800000 .* --resize-impl matmul"):
        p.run([np.zeros((1, 40000, 3), np.uint8)])
    assert p.run([np.zeros((1, 600, 3), np.uint8)]).shape == (1, len(CLASSES))
