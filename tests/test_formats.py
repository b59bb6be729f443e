"""The format table drives dispatch, suffix detection and errors: a runtime added as one backend
class plus one row is taken by every command, as docs/architecture.md promises."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import eval_helpers as H
from vr.errors import VrError

RGB = {k: H.COLOURS[k] for k in ("red", "green", "blue")}


@pytest.fixture
def plugin_format(monkeypatch):
    """A new runtime for ``.vrx`` files (ONNX graphs under another suffix, run by ONNX Runtime with a
    different runtime name), registered as one module and one row of vr.formats.FORMATS."""
    from vr import formats
    from vr.runtime.base import GraphPredictor
    from vr.runtime.metadata import decode_values, onnx_props, validate
    from vr.runtime.onnxruntime_backend import cpu_session

    class VrxPredictor(GraphPredictor):
        def __init__(self, path, device="auto", tta=None, batch_size=32, host_resize=True, metadata=None, **_):
            path = Path(path)
            meta = metadata or validate(decode_values(onnx_props(path)), path)
            self.init_graph(path, meta, tta, batch_size, "vrx")
            self.session = cpu_session(path)
            self.provider = "vrx CPU"
            self.choose_host_preprocess(host_resize)

        def run_array(self, batch):
            return self.session.run(["probs"], {"images": batch})[0]

    module = types.ModuleType("vr_plugin_vrx")
    module.VrxPredictor = VrxPredictor
    monkeypatch.setitem(sys.modules, "vr_plugin_vrx", module)
    row = formats.Format("vrx", "VRX model", "a .vrx model", (".vrx",), "vr_plugin_vrx:VrxPredictor", None, None,
                         "nothing", ("onnxruntime",), "pip install vr")
    monkeypatch.setattr(formats, "FORMATS", formats.FORMATS + (row,))
    return row


def test_a_runtime_added_as_one_class_and_one_row_is_taken_by_every_command(plugin_format, tmp_path, cli):
    graph = H.make_onnx(tmp_path / "colour.onnx", RGB)
    model = tmp_path / "colour.vrx"
    model.write_bytes(graph.read_bytes())
    data = H.write_image_folder(tmp_path / "val", RGB, per_class=2)
    code, _, err = cli("eval", model, f"{graph}+{model}", "--data", data, "--out", tmp_path / "r", "--no-html")
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["models"][0]["runtime"] == "vrx" and report["models"][0]["accuracy"] == 1.0
    assert [m["runtime"] for m in report["models"][1]["members"]] == ["onnxruntime", "vrx"]
    code, out, err = cli("predict", model, data / "red", "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["top"][0]["class"] == "red", err


def test_suffixes_are_detected_from_the_table_and_errors_list_them(tmp_path):
    from vr.formats import FORMATS, format_for

    for f in FORMATS:
        for suffix in f.suffixes:
            path = tmp_path / f"m{suffix.upper()}"  # suffixes match whatever their case
            path.write_bytes(b"x")
            assert format_for(path) is f
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(VrError, match=r"expected a \.pt checkpoint, an \.onnx model or a TensorRT \.engine"):
        format_for(tmp_path / "m.h5")
    with pytest.raises(VrError, match="is a folder"):
        format_for(tmp_path)


def test_a_missing_package_is_the_rows_install_line(tmp_path, monkeypatch):
    from vr.runtime.load import load_predictor

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(VrError, match=r"m.engine is a TensorRT engine but tensorrt is not installed: "
                                      r"pip install 'vr\[gpu\]' \(needs a CUDA GPU and TensorRT 10.x or 11.x\)"):
        load_predictor(engine)
