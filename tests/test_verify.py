"""The golden set an export carries and `vr verify`: a model checked on any machine, no dataset."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper

from test_export import make_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vr.cli import main

    d = tmp_path_factory.mktemp("verify")
    ckpt = make_checkpoint(d / "m.pt")
    assert main(["export", str(ckpt.path), "--out", str(d / "m.onnx"), "--tta", "flip"]) == 0
    return d / "m.onnx"


def _tamper(src, dst, *, keep_hash: bool):
    """Change one weight (the classifier bias of class 0, by 8) and save as ``dst``; with
    ``keep_hash`` also rewrite the recorded graph hash, as a careless re-save would."""
    from vr.export.golden import graph_sha256

    model = onnx.load(str(src))
    bias = next(t for t in model.graph.initializer if t.name.endswith("fc.bias") or t.name.endswith("head.fc.bias"))
    arr = numpy_helper.to_array(bias).copy()
    arr[0] += 8.0
    bias.CopyFrom(numpy_helper.from_array(arr, bias.name))
    if keep_hash:
        for p in model.metadata_props:
            if p.key == "graph_sha256":
                p.value = graph_sha256(model)
    onnx.save(model, str(dst))


def test_export_embeds_a_golden_set_that_verify_passes(exported, cli):
    from vr.runtime.metadata import read_metadata

    meta = read_metadata(exported)
    g = meta["golden"]
    assert len(g["images"]) == len(g["expected"]) == len(g["names"]) == 4 and g["source"] == "4 synthetic images"
    assert g["precision"] == "fp32" and 0.01 <= g["atol"] and g["measured_at_export"] < 1e-3
    assert len(meta["graph_sha256"]) == 64
    code, out, err = cli("verify", exported)
    assert code == 0, err
    assert "golden set" in out and "verified: 4 golden images" in out and "graph and weights unchanged" in out


def test_one_changed_weight_fails_verify(exported, cli, tmp_path):
    _tamper(exported, tmp_path / "t.onnx", keep_hash=False)
    code, _, err = cli("verify", tmp_path / "t.onnx")
    assert code == 2 and "its nodes or weights changed since export" in err and err.count("\n") == 1
    # With the hash rewritten too, the golden set itself catches the change.
    _tamper(exported, tmp_path / "h.onnx", keep_hash=True)
    code, out, err = cli("verify", tmp_path / "h.onnx")
    assert code == 2 and "fails its golden set: max probability difference" in err, err
    assert "FAIL" in out


def test_golden_real_images_and_verify_errors(tmp_path, cli):
    from conftest import write_image_folder

    from vr.runtime.metadata import read_metadata

    ckpt = make_checkpoint(tmp_path / "m.pt")
    real = write_image_folder(tmp_path / "mine", 2, sizes=((44, 50),))
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "m.onnx", "--golden", real, "--golden-count", "2")
    assert code == 0, err
    g = read_metadata(tmp_path / "m.onnx")["golden"]
    assert len(g["images"]) == 6 and g["source"].startswith("4 synthetic images + 2 from")
    code, _, err = cli("verify", tmp_path / "m.onnx")
    assert code == 0, err
    code, _, err = cli("verify", ckpt.path)
    assert code == 2 and "checks exported models" in err
    code, _, err = cli("verify", tmp_path / "missing.onnx")
    assert code == 2 and "not found" in err
