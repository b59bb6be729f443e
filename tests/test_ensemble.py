"""Soft-voting ensembles: the one-graph ONNX export (members with different input sizes), --weights,
the class check, the --max-params budget, and `vr eval A+B` / `vr submit A B` without exporting."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vr.errors import VrError
from vr.models.factory import model_from_checkpoint

import onnx  # noqa: F401  (a hard dependency: a broken install fails here)
import onnxruntime as ort

CLASSES = ("1", "2", "10")  # conftest's colour folders
ODD_SIZES = [(31, 45), (45, 31), (97, 61), (123, 41), (47, 46), (61, 97), (40, 300), (201, 151)]


def make_checkpoint(path: Path, size: int, seed: int, interpolation: str = "bicubic", classes=CLASSES,
                    head_order=None, **pre) -> Path:
    """A real test_resnet whose random head is centred and scaled, so that it answers differently for
    different images (a broken graph moves its outputs). ``head_order`` permutes the classes and the
    head's rows together: the same model with another class order."""
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, save_checkpoint
    from vr.models.factory import create_model
    from vr.models.preprocess import Preprocess

    torch.manual_seed(seed)
    model = create_model("test_resnet", len(classes))
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.sub_(head.weight.mean(1, keepdim=True)).mul_(300.0)
        head.bias.zero_()
    state = model.state_dict()
    if head_order is not None:
        classes = tuple(classes[i] for i in head_order)
        for k in ("fc.weight", "fc.bias"):
            state[k] = state[k][list(head_order)].clone()
    save_checkpoint(path, Checkpoint("test_resnet", len(classes), state, ClassMap(tuple(classes)),
                                     Preprocess(size, int(size / 0.875), interpolation, **pre)))
    return path


def smooth_image(rng, w: int, h: int) -> Image.Image:
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").filter(ImageFilter.GaussianBlur(1.0))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    from conftest import write_image_folder

    d = tmp_path_factory.mktemp("ensemble")
    a = make_checkpoint(d / "a" / "best.pt", 32, seed=0)
    b = make_checkpoint(d / "b" / "best.pt", 48, seed=1, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                        std=(0.5, 0.5, 0.5))
    b_perm = make_checkpoint(d / "b_perm.pt", 48, seed=1, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                             std=(0.5, 0.5, 0.5), head_order=(2, 0, 1))
    other = make_checkpoint(d / "other.pt", 32, seed=2, classes=("1", "2", "11"))
    verify = write_image_folder(d / "verify", 2, seed=3, sizes=((45, 33), (33, 47)))
    data = write_image_folder(d / "data", 3, seed=1)
    rng = np.random.default_rng(0)
    images = [smooth_image(rng, w, h) for w, h in ODD_SIZES]
    return {"dir": d, "a": a, "b": b, "b_perm": b_perm, "other": other, "verify": verify, "data": data,
            "images": images}


@pytest.fixture(scope="module")
def member_probs(kit):
    """Each member's own PyTorch eval pipeline (its preprocessing, flip TTA) on the odd-size images."""
    from vr.export.parity import torch_probs
    from vr.models.checkpoint import load_checkpoint

    out = {}
    for k in ("a", "b"):
        ck = load_checkpoint(kit[k])
        out[k] = torch_probs(model_from_checkpoint(ck), ck.preprocess, kit["images"], "flip")
    return out


def run_onnx(path: Path, images) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"images": np.asarray(im, dtype=np.uint8)[None]})[0] for im in images])


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp")]


# ---------------------------------------------------------------------------------------------
# vr export A B: one graph
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(kit, tmp_path_factory):
    """`vr export a.pt b.pt --weights 4,1` (members of 32 and 48 px), flip TTA, under a budget that fits."""
    from vr.cli import main

    out = tmp_path_factory.mktemp("export") / "ens.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["export", str(kit["a"]), str(kit["b"]), "--out", str(out), "--verify", str(kit["verify"]),
                     "--tta", "flip", "--max-params", "800K", "--weights", "4,1"])
    return code, out, buf.getvalue()


def test_ensemble_export_passes_the_gate_and_matches_the_members_torch_pipelines(kit, member_probs, exported, capsys):
    code, out, _ = exported
    assert code == 0 and out.is_file() and not leftovers(out.parent)
    got = run_onnx(out, kit["images"])  # raw uint8 images of odd sizes, fed whole
    want = 0.8 * member_probs["a"] + 0.2 * member_probs["b"]  # --weights 4,1, normalised
    assert got.shape == (len(ODD_SIZES), len(CLASSES))
    assert np.abs(got - want).max() < 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    # The members really differ, so the weights show: equal weights would be far off.
    assert np.abs(member_probs["a"] - member_probs["b"]).max() > 0.1
    assert np.abs(got - (0.5 * member_probs["a"] + 0.5 * member_probs["b"])).max() > 0.03


def test_ensemble_export_prints_the_gate_and_the_parameter_counts(exported):
    code, _, stdout = exported
    assert code == 0
    assert "PASS" in stdout and "6 images from" in stdout
    assert stdout.count("0.37M parameters") == 2  # per member
    assert "0.75M (745,958)" in stdout and "0.37M + 0.37M" in stdout  # the total, members summed


def test_ensemble_metadata_lists_the_members(kit, exported):
    from vr.runtime.metadata import read_metadata
    from vr.models.checkpoint import file_sha256
    from vr.models.preprocess import Preprocess

    meta = read_metadata(exported[1])
    assert meta["class_names"] == list(CLASSES) and meta["tta"] == "flip" and meta["opset"] == 18
    assert Preprocess.from_dict(meta["preprocess"]).input_size == 32  # the first member's
    members = meta["members"]
    assert [m["checkpoint"] for m in members] == [str(kit["a"]), str(kit["b"])]
    assert [m["sha256"] for m in members] == [file_sha256(kit["a"]), file_sha256(kit["b"])]
    assert [m["preprocess"]["input_size"] for m in members] == [32, 48]
    assert [m["weight"] for m in members] == pytest.approx([0.8, 0.2]) and {m["model"] for m in members} == {"test_resnet"}
    assert [m["param_count"] for m in members] == [372979, 372979] and meta["param_count"] == 745958
    assert meta["checkpoint_sha256"] == "+".join(m["sha256"] for m in members)
    import vr
    from vr.export.onnx import pil_height_first

    assert meta["vr_version"] == vr.__version__ and meta["resize_impl"] == "resize" and meta["precision"] == "fp32"
    assert meta["input"].startswith("images: uint8 [N, H, W, 3] RGB")
    assert meta["output"].startswith("probs: float32 [N, C] weighted mean over the 2 members")
    assert meta["resize_pass_order"].startswith("height first" if pil_height_first() else "width first")


def test_ensemble_onnx_through_load_predictor_eval_and_budget(kit, member_probs, exported, tmp_path, capsys):
    from vr.cli import main
    from vr.runtime.load import load_predictor
    p = load_predictor(exported[1], device="cpu")
    assert p.tta == "flip" and p.param_count == 745958 and p.param_counts() == [372979, 372979]
    assert p.host_preprocess.startswith("none")  # members resize to different sizes: raw images
    np.testing.assert_allclose(p.predict(kit["images"]), run_onnx(exported[1], kit["images"]), atol=1e-6)
    assert main(["eval", str(exported[1]), "--data", str(kit["data"]), "--out", str(tmp_path / "r"),
                 "--workers", "0", "--max-params", "700K"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "745,958" in err and "0.37M + 0.37M" in err and not (tmp_path / "r" / "report.json").exists()


def test_bad_weights_are_one_line_errors(kit, tmp_path, capsys):
    """(--weights 4,1 itself is exported and checked against 0.8 a + 0.2 b above.)"""
    from vr.cli import main

    for bad, says in ((["--weights", "1,2,3"], "3 value(s) for 2 model(s)"), (["--weights", "1,-1"], "positive"),
                      (["--weights", "1,x"], "cannot read the weight")):
        assert main(["export", str(kit["a"]), str(kit["b"]), "--out", str(tmp_path / "x.onnx"), *bad]) == 2
        assert says in one_line(capsys.readouterr().err)
    assert main(["export", f"{kit['a']}@1+{kit['b']}@2", "--weights", "1,2", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "once" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.onnx").exists()


def test_members_in_another_class_order_are_mapped_by_name(kit, member_probs):
    """b_perm is b with its classes (and head rows) permuted: the ensemble must not change."""
    from vr.runtime.load import load_predictor
    from vr.export.onnx import build_ensemble_onnx
    from vr.models.checkpoint import load_checkpoint

    a, b_perm = load_checkpoint(kit["a"]), load_checkpoint(kit["b_perm"])
    assert b_perm.classes.names == ("10", "1", "2")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(build_ensemble_onnx([a, b_perm], [0.3, 0.7], "flip").SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"images": np.asarray(im)[None]})[0] for im in kit["images"]])
    np.testing.assert_allclose(got, 0.3 * member_probs["a"] + 0.7 * member_probs["b"], atol=1e-3)
    imgs = kit["images"][:4]
    p1 = load_predictor(f"{kit['a']}@3+{kit['b']}@7", device="cpu").predict(imgs)
    p2 = load_predictor(f"{kit['a']}@3+{kit['b_perm']}@7", device="cpu").predict(imgs)
    np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_mismatched_class_lists_fail_in_one_line(kit, tmp_path, cli):
    out = tmp_path / "m.onnx"
    code, _, err = cli("export", kit["a"], kit["other"], "--out", out)
    assert code == 2 and not out.exists()
    line = one_line(err)
    assert "share one class list" in line and "lacks class '10'" in line and "other.pt" in line
    code, _, err = cli("eval", f"{kit['a']}+{kit['other']}", "--data", kit["data"], "--out", tmp_path / "r")
    assert code == 2 and "lacks class '10'" in one_line(err)


def test_budget_refuses_an_oversized_ensemble_before_writing_anything(kit, tmp_path, cli):
    out = tmp_path / "e" / "ens.onnx"
    code, stdout, err = cli("export", kit["a"], kit["b"], "--out", out, "--max-params", "500K")
    assert code == 2
    line = one_line(err)
    assert "0.75M" in line and "745,958 > 500,000" in line and "0.37M + 0.37M" in line
    assert "parity gate" not in stdout and not out.parent.exists()
    code, _, err = cli("submit", kit["a"], kit["b"], "--test-dir", kit["verify"] / "1", "--out", tmp_path / "s.csv",
                       "--max-params", "0.5M")
    assert code == 2 and "745,958" in one_line(err) and not (tmp_path / "s.csv").exists()
    code, _, err = cli("export", kit["a"], "--out", out, "--max-params", "lots")
    assert code == 2 and "--max-params must look like" in one_line(err)
    # A graph that does not record its parameter count cannot be checked: said, not guessed.
    import eval_helpers as H

    foreign = H.make_onnx(tmp_path / "colour.onnx", {c: H.COLOURS[k] for c, k in zip(CLASSES, ("red", "green", "blue"))})
    code, _, err = cli("eval", f"{kit['a']}+{foreign}", "--data", kit["data"], "--out", tmp_path / "r",
                       "--max-params", "100M")
    line = one_line(err)
    assert code == 2 and f"{foreign} carries no parameter count" in line and not (tmp_path / "r" / "report.json").exists()


@pytest.mark.cuda
def test_tensorrt_ensemble_engine_matches_torch(kit, cli, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "ens.onnx"
    code, stdout, err = cli("export", kit["a"], kit["b"], "--out", out, "--verify", kit["verify"], "--trt", "--precision",
                            "fp32", "--tta", "flip", "--trt-size", "16", "64", "512")
    assert code == 0, err
    assert out.with_suffix(".engine").is_file() and "PyTorch vs TensorRT" in stdout


# ---------------------------------------------------------------------------------------------
# vr eval A+B, vr submit A B: soft vote without exporting
# ---------------------------------------------------------------------------------------------
def test_ensemble_predictor_is_the_weighted_mean_of_its_members(kit):
    from vr.runtime.ensemble_backend import EnsemblePredictor
    from vr.runtime.load import load_predictor
    imgs = kit["images"]
    pa = load_predictor(kit["a"], device="cpu", tta="flip").predict(imgs)
    pb = load_predictor(kit["b"], device="cpu", tta="flip").predict(imgs)
    ens = load_predictor(f"{kit['a']}@1+{kit['b']}@3", device="cpu", tta="flip")
    assert isinstance(ens, EnsemblePredictor) and ens.weights == [0.25, 0.75] and ens.runtime == "ensemble"
    assert ens.param_counts() == [372979, 372979] and ens.tta == "flip"
    np.testing.assert_allclose(ens.predict(imgs), 0.25 * pa + 0.75 * pb, atol=1e-6)


def test_eval_scores_an_ensemble_and_reports_member_agreement(kit, tmp_path, cli):
    out = tmp_path / "report"
    code, stdout, err = cli("eval", kit["a"], kit["b"], f"{kit['a']}+{kit['b']}", "--data", kit["data"],
                            "--out", out, "--workers", "0", "--max-params", "1M")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in rep["models"]]
    assert names == ["best_pt", "best_pt_2", "a_best+b_best"]
    a, b, ens = rep["models"]
    assert ens["runtime"] == "ensemble" and ens["param_count"] == 745958 and "members" not in a
    assert [m["path"] for m in ens["members"]] == [str(kit["a"]), str(kit["b"])]
    assert [m["accuracy"] for m in ens["members"]] == [a["accuracy"], b["accuracy"]]  # each member's own score
    assert [m["macro_f1"] for m in ens["members"]] == [a["macro_f1"], b["macro_f1"]]
    (pair,) = ens["member_agreement"]
    ab = next(x for x in rep["agreement"] if (x["a"], x["b"]) == ("best_pt", "best_pt_2"))
    assert pair["top1_agreement"] == ab["top1_agreement"] and pair["n_disagree"] == ab["n_flipped"]
    assert 0 <= ens["any_member_correct"] <= 1 and ens["any_member_correct"] >= max(a["accuracy"], b["accuracy"])
    # The ensemble's predictions are the argmax of the members' mean.
    from vr.runtime.load import load_predictor
    rows = list(csv.DictReader((out / ens["files"]["predictions"]).open()))
    imgs = [Image.open(kit["data"] / r["image"]).convert("RGB") for r in rows]
    mean = 0.5 * load_predictor(kit["a"], device="cpu").predict(imgs) + \
        0.5 * load_predictor(kit["b"], device="cpu").predict(imgs)
    assert [r["pred_label"] for r in rows] == [CLASSES[i] for i in mean.argmax(1)]
    md = (out / "report.md").read_text()
    assert "### Ensemble members (2, soft vote)" in md and "top-1 agreement" in md
    assert "members" in stdout and "top-1 agreement" in stdout
    assert (out / "report.html").is_file() and not leftovers(out)
    html = (out / "report.html").read_text()
    assert html.count("Ensemble members (2, soft vote)") == 1 and str(kit["b"]) in html
    assert f"{100 * pair['top1_agreement']:.1f}%" in html


def test_submit_soft_votes_two_checkpoints(kit, tmp_path, cli):
    from vr.data.images import load_rgb
    from vr.runtime.load import load_predictor
    test = tmp_path / "test"
    test.mkdir()
    for i, p in enumerate(sorted(kit["data"].rglob("*.png"))):
        Image.open(p).save(test / f"{i + 1}.png")
    out = tmp_path / "sub" / "prediction.csv"
    code, stdout, err = cli("submit", kit["a"], kit["b"], "--weights", "1,3", "--test-dir", test, "--out", out,
                            "--workers", "0")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["image_name", "pred_label"] and len(rows) == 10
    stems = [r[0] for r in rows[1:]]
    assert stems == [str(i) for i in range(1, 10)]
    imgs = [load_rgb(test / f"{s}.png") for s in stems]
    mean = 0.25 * load_predictor(kit["a"], device="cpu").predict(imgs) + \
        0.75 * load_predictor(kit["b"], device="cpu").predict(imgs)
    assert [r[1] for r in rows[1:]] == [CLASSES[i] for i in mean.argmax(1)]
    assert "member agreement" in stdout and "differs from the vote" in stdout
    # The one-argument spelling and the older positional test folder give the same file.
    out2 = tmp_path / "p2.csv"
    code, _, err = cli("submit", f"{kit['a']}@1+{kit['b']}@3", test, "--out", out2, "--workers", "0")
    assert code == 0, err
    assert out2.read_text() == out.read_text()
    code, _, err = cli("submit", kit["a"], kit["b"], "--test-dir", test, "--check", out)
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# The spellings
# ---------------------------------------------------------------------------------------------
def test_spec_parsing_and_weights(tmp_path):
    from vr.models.ensemble import (MemberSpec, class_order, expand_members, normalised_weights, parse_model_spec,
                                    parse_weights, spec_label)

    assert parse_model_spec("a.pt") == [MemberSpec(Path("a.pt"))]
    assert parse_model_spec("a.pt+b.onnx") == [MemberSpec(Path("a.pt")), MemberSpec(Path("b.onnx"))]
    assert parse_model_spec("x/a.pt@0.6+y/b.pt@0.4") == [MemberSpec(Path("x/a.pt"), 0.6), MemberSpec(Path("y/b.pt"), 0.4)]
    plus = tmp_path / "c+d.pt"
    plus.write_bytes(b"")
    assert parse_model_spec(plus) == [MemberSpec(plus)]  # an existing file is one model, '+' or not
    for bad, says in (("a.pt++b.pt", "empty ensemble member"), ("a.pt@1+b.pt", "every ensemble member a weight"),
                      ("a.pt@2", "needs an ensemble"), ("a.pt@0+b.pt@1", "positive"), ("a.pt@x+b.pt@1", "cannot read")):
        with pytest.raises(VrError, match=says):
            parse_model_spec(bad)
    assert parse_weights("0.6, 0.4", 2) == [0.6, 0.4] and parse_weights("[3, 1]", 2) == [3.0, 1.0]
    assert normalised_weights(expand_members(["a.pt", "b.pt"], "3,1")) == [0.75, 0.25]
    assert normalised_weights(expand_members(["a.pt+b.pt+c.pt"])) == pytest.approx([1 / 3] * 3)
    with pytest.raises(VrError, match="once"):
        expand_members(["a.pt@1+b.pt@2"], "1,2")
    with pytest.raises(VrError, match="two or more"):
        expand_members(["a.pt"], "1")
    assert spec_label("runs/a/best.pt+runs/b/best.pt") == "a_best+b_best"
    assert spec_label("x/resnet.pt@2+y/vit.onnx@1") == "resnet+vit"
    assert class_order([("a", ["x", "y", "z"]), ("b", ["x", "y", "z"]), ("c", ["z", "x", "y"])]) == [None, None, [1, 2, 0]]
    with pytest.raises(VrError, match="b lacks class 'z' of a"):
        class_order([("a", ["x", "y", "z"]), ("b", ["x", "y"])])
    with pytest.raises(VrError, match="b has class 'w', which a lacks"):
        class_order([("a", ["x", "y"]), ("b", ["x", "y", "w"])])


def test_configs_take_the_spellings():
    from vr.evaluate.config import SubmitConfig
    from vr.export.config import ExportConfig

    c = ExportConfig.from_sources(None, checkpoint="a.pt")  # one checkpoint, as before
    assert c.checkpoint == [Path("a.pt")] and len(c.members()) == 1 and c.param_budget() is None
    c = ExportConfig.from_sources(None, checkpoint=["a.pt", "b.pt"], weights="0.6,0.4", max_params="100M")
    assert [m.weight for m in c.members()] == [0.6, 0.4] and c.param_budget() == 100_000_000
    with pytest.raises(VrError, match="1 value"):
        ExportConfig.from_sources(None, checkpoint=["a.pt", "b.pt"], weights="1")
    s = SubmitConfig.from_sources(None, model=["m.pt", "test"])  # vr submit MODEL TEST_DIR
    assert s.model == [Path("m.pt")] and s.test_dir == Path("test")
    s = SubmitConfig.from_sources(None, model=["a.pt", "b.onnx"], test_dir="t")
    assert len(s.members()) == 2 and s.test_dir == Path("t")
    with pytest.raises(VrError, match="--test-dir"):
        SubmitConfig.from_sources(None, model=["a.pt", "b.pt"])
