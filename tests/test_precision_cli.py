"""Every --precision end to end on CPU: export (the gate against the fp32 PyTorch pipeline, the
golden set), verify, eval and submit, on a tiny model that really classifies."""

from __future__ import annotations

import json

import pytest

import eval_helpers as H

RGB = {k: H.COLOURS[k] for k in ("red", "green", "blue")}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision_cli")
    test = d / "test"
    test.mkdir()
    for i, rgb in enumerate(RGB.values()):
        H.colour_image(rgb, (44, 38), seed=900 + i).save(test / f"t{i}.png")
    return {"ckpt": H.make_checkpoint(d / "best.pt", RGB), "val": H.write_image_folder(d / "val", RGB, per_class=4),
            "calib": H.write_image_folder(d / "train", RGB, per_class=6, seed=3), "test": test, "dir": d}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_every_precision_exports_gated_and_runs(kit, tmp_path, cli, precision):
    from vr.runtime.metadata import read_metadata

    out = tmp_path / f"m_{precision}.onnx"
    extra = ["--calib", kit["calib"]] if precision == "int8" else []
    code, stdout, err = cli("export", kit["ckpt"], "--out", out, "--verify", kit["val"], "--precision", precision,
                            "--tta", "flip", *extra)
    assert code == 0, err
    assert "verdict" in stdout and "FAIL" not in stdout
    meta = read_metadata(out)
    assert meta["precision"] == precision and meta["golden"]["precision"] == precision
    if precision == "bf16":
        assert "emulated in fp32" in stdout and meta["opset"] >= 22
    if precision == "int8":
        d = meta["precision_detail"]  # the calibration chosen and recorded
        assert d["calibration"] == "percentile" and d["calib_images"] == 18 and d["quantize_nodes"] > 0
    code, vout, err = cli("verify", out)
    assert code == 0, err
    assert ("emulated" in vout) == (precision == "bf16")
    rep = tmp_path / "rep"
    code, _, err = cli("eval", kit["ckpt"], out, "--data", kit["val"], "--out", rep, "--tta", "flip", "--no-html")
    if precision == "bf16":  # ONNX Runtime has no bf16 CPU kernels: said in one line, with what to do
        assert code == 2 and "no bf16 kernels" in err and "--trt" in err and err.count("\n") == 1
        return
    assert code == 0, err
    report = json.loads((rep / "report.json").read_text())
    pt, onnx_model = report["models"]
    assert onnx_model["precision"] == precision
    assert abs(pt["accuracy"] - onnx_model["accuracy"]) <= 0.01 + 1e-9
    code, _, err = cli("submit", out, "--test-dir", kit["test"], "--out", tmp_path / "s.csv")
    assert code == 0, err
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[0] == "image_name,pred_label" and rows[1:] == ["t0,red", "t1,green", "t2,blue"]


def test_int8_without_calibration_images_is_one_line(kit, tmp_path, cli):
    code, _, err = cli("export", kit["ckpt"], "--out", tmp_path / "q.onnx", "--precision", "int8")
    assert code == 2 and "needs calibration images" in err and err.count("\n") == 1
    code, _, err = cli("export", kit["ckpt"], "--out", tmp_path / "q.onnx", "--calib", kit["calib"])
    assert code == 2 and "--calib is for --precision int8" in err
