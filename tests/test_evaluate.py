"""`vr eval`, the predictor interface and the metrics, on tiny real models and image folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_helpers as H
from vr.cli import main
from vr.errors import VrError
from vr.models.factory import model_from_checkpoint

RGB = {k: H.COLOURS[k] for k in ("red", "green", "blue")}  # model order; folder (natural) order differs


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalkit")
    ckpt = H.make_checkpoint(d / "best.pt", RGB)
    # same colours, another class order: agreement must match classes by name
    onnx_path = H.make_onnx(d / "colour.onnx", {k: RGB[k] for k in ("blue", "red", "green")})
    data = H.write_image_folder(d / "dataset" / "val", RGB, per_class=3, seed=1)
    return {"dir": d, "ckpt": ckpt, "onnx": onnx_path, "root": d / "dataset", "val": data}


# --- metrics -----------------------------------------------------------------------------------
def _probs_for(preds, c):
    p = np.full((len(preds), c), 0.1 / (c - 1), dtype=np.float32)
    p[np.arange(len(preds)), preds] = 0.9
    return p


def test_metrics_match_a_hand_computation():
    from vr.evaluate.metrics import classification_metrics

    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(y_true, _probs_for(y_pred, 4), ["a", "b", "c", "d"], worst_k=2)
    # class a: tp 1 of 2 predicted, 1 of 2 true; b: 2 of 3 predicted, 2 of 2; c: 1 of 1, 1 of 2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["d"]["support"] == 0
    f1s = (0.5, 0.8, 2 / 3)  # macro over the classes in labels or predictions: d is in neither
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 3)
    assert m["weighted_f1"] == pytest.approx(sum(f1s) / 3)  # equal supports
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert m["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["top5_k"] == 4 and m["top5"] == 1.0
    assert m["confusion_matrix"]["counts"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["confusion_matrix"]["normalized"][0] == [0.5, 0.5, 0.0, 0.0]
    assert m["confusion_matrix"]["normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    worst = m["worst_classes"]
    assert [w["class"] for w in worst] == ["a", "c"]  # lowest F1 first; d has no images
    assert worst[0]["most_confused_with"] == "b" and worst[0]["most_confused_count"] == 1


def test_metrics_agree_with_sklearn_and_top_k_by_hand():
    from sklearn.metrics import f1_score, precision_score, recall_score, top_k_accuracy_score

    from vr.evaluate.metrics import classification_metrics, top_k_accuracy

    rng = np.random.default_rng(0)
    probs = rng.random((60, 7))
    probs /= probs.sum(1, keepdims=True)
    y = rng.integers(0, 7, 60)
    m = classification_metrics(y, probs, [str(i) for i in range(7)])
    pred = probs.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, probs, k=5, labels=range(7)))
    p = np.array([[0.1, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.1]])
    assert top_k_accuracy(np.array([2, 2]), p, k=2) == 0.5  # row 0: top-2 = {1, 2 (first of the tie)}
    assert top_k_accuracy(np.array([3, 3]), p, k=1) == 0.0


def test_agreement_matches_classes_by_name():
    from vr.data.classes import ClassMap
    from vr.evaluate.metrics import agreement

    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    b = np.array([[0.1, 0.6, 0.3], [0.7, 0.1, 0.2]])  # b's order: z, x, y -> row 0 says x, row 1 z
    r = agreement(a, ClassMap(("x", "y", "z")), b, ClassMap(("z", "x", "y")), ["i0", "i1"], ["x", "y"])
    assert r["top1_agreement"] == 0.5 and r["n_flipped"] == 1
    assert r["flipped"][0]["image"] == "i1" and r["flipped"][0]["a_pred"] == "y" and r["flipped"][0]["b_pred"] == "z"
    assert r["max_abs_prob_diff"] == pytest.approx(0.6)  # row 1, by name: y 0.8 vs 0.2, z 0.1 vs 0.7


# --- predictors ----------------------------------------------------------------------------------
def test_compact_long_side_is_exactly_the_graph_geometry():
    """The host trim keeps the centre crop in place and leaves nothing for the graph's resize to do."""
    from vr.runtime.base import compact_long_side
    from vr.models.preprocess import Preprocess
    from vr.models.tta import tta_views

    for r, s in ((36, 32), (37, 32), (256, 224), (257, 224)):
        pre = Preprocess(input_size=s, resize_size=r)
        for h, w in ((r, r), (r, r + 1), (r + 1, r), (r, r + 2), (r, 3 * r + 5), (2 * r + 7, r)):
            arr = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3)
            c = compact_long_side(arr, pre)
            assert pre.resized_hw(*c.shape[:2]) == c.shape[:2]  # the graph's resize is the identity
            top, left = pre.crop_offsets(h, w)
            t2, l2 = pre.crop_offsets(*c.shape[:2])
            assert np.array_equal(arr[top:top + s, left:left + s], c[t2:t2 + s, l2:l2 + s]), (r, s, h, w)
            import torch

            full = tta_views(torch.from_numpy(arr).permute(2, 0, 1), pre, "flip")
            comp = tta_views(torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1), pre, "flip")
            assert torch.equal(full, comp)


def test_torch_predictor_is_the_checkpoint_preprocessing(kit):
    from vr.runtime.torch_backend import TorchPredictor
    from vr.runtime.load import load_predictor
    from vr.models.checkpoint import load_checkpoint
    from vr.models.tta import batch_views, predict_views

    imgs = [H.colour_image(rgb, size, seed=i) for i, (rgb, size) in enumerate(zip(RGB.values(), H.SIZES))]
    for tta in ("none", "flip", "five-crop"):
        p = load_predictor(kit["ckpt"], device="cpu", tta=tta, batch_size=2)
        assert isinstance(p, TorchPredictor) and p.runtime == "torch" and p.provider == "cpu"
        ck = load_checkpoint(kit["ckpt"])
        want = predict_views(model_from_checkpoint(ck), batch_views(imgs, ck.preprocess, tta)).numpy()
        np.testing.assert_allclose(p.predict(imgs), want, rtol=0, atol=1e-6)
    assert p.classes.names == ("red", "green", "blue")
    assert np.array_equal(p.predict(imgs).argmax(1), [0, 1, 2])


def test_onnx_predictor_batches_mixed_sizes_in_order(kit):
    from vr.runtime.onnxruntime_backend import OnnxPredictor
    from vr.runtime.load import load_predictor
    p = load_predictor(kit["onnx"], device="cpu", batch_size=8)
    assert isinstance(p, OnnxPredictor)
    assert p.runtime == "onnxruntime" and p.provider == "CPUExecutionProvider"
    assert p.tta == "none" and p.classes.names == ("blue", "red", "green")
    imgs = [H.colour_image(list(RGB.values())[i % 3], H.SIZES[i % 4], seed=i) for i in range(7)]
    together = p.predict(imgs)
    one_by_one = np.concatenate([p.predict([im]) for im in imgs])
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    assert [p.classes.names[i] for i in together.argmax(1)] == [["red", "green", "blue"][i % 3] for i in range(7)]
    # this hand-made graph does no resize, so the host resize is not equivalent: raw images are fed
    assert p.host_preprocess.startswith("none: raw images")


class _FakeGraph:
    """Stand-in for a graph: mean colour of the centre crop, computed the reference (PIL) way, or
    of the whole image (a geometry the host resize does not reproduce)."""

    def __init__(self, pre, whole_image=False):
        self.pre, self.whole_image = pre, whole_image

    def __call__(self, batch):
        out = []
        for arr in batch:
            img = Image.fromarray(arr)
            x = np.asarray(img if self.whole_image else self.pre.geometry(img), dtype=np.float64)
            z = x.reshape(-1, 3).mean(0) / 16.0
            out.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
        return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("whole_image", [False, True])
def test_host_resize_is_used_only_when_the_graph_agrees(whole_image):
    from vr.data.classes import ClassMap
    from vr.runtime.base import GraphPredictor, HostResize, RawRGB
    from vr.models.preprocess import Preprocess

    pre = Preprocess(input_size=24, resize_size=29, interpolation="bicubic")
    p = GraphPredictor(Path("fake.onnx"), ClassMap(("r", "g", "b")), "none", 4, preprocess=pre)
    p.run_array = _FakeGraph(pre, whole_image)
    p.choose_host_preprocess(True)
    assert isinstance(p.preparer, RawRGB if whole_image else HostResize)
    imgs = [H.colour_image(rgb, size, seed=i) for i, rgb in enumerate(RGB.values()) for size in ((61, 40), (30, 90))]
    got = p.predict(imgs)
    want = np.concatenate([p.run_array(np.asarray(im)[None]) for im in imgs])  # the graph on raw images
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    if not whole_image:
        assert len({p.preparer(im).shape for im in imgs}) <= 3  # few sizes: real batches


def test_onnx_tta_is_baked_in(kit, tmp_path):
    from vr.runtime.load import load_predictor
    path = H.make_onnx(tmp_path / "flip.onnx", RGB, tta="flip")
    assert load_predictor(path, device="cpu").tta == "flip"
    assert load_predictor(path, device="cpu", tta="flip").tta == "flip"
    with pytest.raises(VrError, match="exported with TTA 'flip'"):
        load_predictor(path, device="cpu", tta="none")


def test_onnx_without_class_names_is_refused(tmp_path):
    from vr.runtime.load import load_predictor
    path = H.make_onnx(tmp_path / "anon.onnx", RGB, with_classes=False)
    with pytest.raises(VrError, match="class_names"):
        load_predictor(path, device="cpu")


def test_text_file_named_onnx_is_a_one_line_error(tmp_path, capsys):
    from vr.runtime.load import load_predictor
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model\nsecond line\n")
    with pytest.raises(VrError) as e:
        load_predictor(fake)
    msg = str(e.value)
    assert "not a valid ONNX model" in msg and str(fake) in msg and "\n" not in msg
    data = H.write_image_folder(tmp_path / "d", RGB, per_class=1)
    assert main(["eval", str(fake), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a valid ONNX model" in err and len(err.splitlines()) == 1


def test_unknown_suffix_and_missing_model(tmp_path):
    from vr.runtime.load import load_predictor
    (tmp_path / "m.h5").write_text("x")
    with pytest.raises(VrError, match=r"expected a \.pt checkpoint, an \.onnx model or a TensorRT \.engine"):
        load_predictor(tmp_path / "m.h5")
    with pytest.raises(VrError, match="model not found"):
        load_predictor(tmp_path / "nope.pt")


def test_cuda_request_without_cuda_is_an_error(kit):
    import onnxruntime as ort
    import torch

    from vr.runtime.load import load_predictor
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(VrError, match="no CUDA GPU"):
        load_predictor(kit["ckpt"], device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(VrError, match="CUDA or TensorRT execution provider"):
            load_predictor(kit["onnx"], device="cuda")


def test_onnx_provider_order_and_silent_cpu_fallback(kit, monkeypatch):
    """Provider lists per device, and what ran read back from the session: a CUDA request that ends
    on CPU is an error; a TensorRT provider that fails to start falls back to the next one."""
    import onnxruntime as ort

    from vr.runtime.onnxruntime_backend import ort_providers

    from vr.runtime.load import load_predictor
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers("auto", avail) == avail
    assert ort_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert ort_providers("cpu", avail) == ["CPUExecutionProvider"]
    assert ort_providers("cuda:1", avail) == [("TensorrtExecutionProvider", {"device_id": 1}),
                                               ("CUDAExecutionProvider", {"device_id": 1})]
    with pytest.raises(VrError, match="pip install 'vr\\[gpu\\]'"):
        ort_providers("cuda", ["CPUExecutionProvider"])

    real = ort.InferenceSession
    asked = []

    def fake_session(path, opts=None, providers=None):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        asked.append(names)
        if names[0] == "TensorrtExecutionProvider":
            raise RuntimeError("libnvinfer.so.10: cannot open shared object file")
        return real(path, opts, providers=["CPUExecutionProvider"])  # CUDA "loaded" but ran on CPU

    monkeypatch.setattr(ort, "get_available_providers", lambda: avail)
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with pytest.raises(VrError, match="runs colour.onnx on CPUExecutionProvider"):
        load_predictor(kit["onnx"], device="cuda")
    assert asked == [avail[:2], avail[1:2]]
    p = load_predictor(kit["onnx"], device="auto")  # auto may end on CPU, but says so
    assert p.provider == "CPUExecutionProvider"
    assert any("TensorRT execution provider failed" in n for n in p.notes)
    assert any("did not load" in n for n in p.notes)


def test_engine_without_tensorrt_says_how_to_install(kit, tmp_path, monkeypatch):
    """Without tensorrt, an engine is the install line (whatever else is wrong with it); with
    tensorrt importable, a missing metadata sidecar is named, and without a GPU that is said."""
    import sys
    import types

    import torch

    from vr.runtime.load import load_predictor

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(VrError, match=r"m.engine is a TensorRT engine but tensorrt is not installed: pip install 'vr\[gpu\]'"):
        load_predictor(engine)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(VrError, match="no metadata sidecar m.engine.json"):
        load_predictor(engine)
    (tmp_path / "m.engine.json").write_text(json.dumps({"class_names": '["a", "b"]', "tta": "none",
                                                        "preprocess": json.dumps(H.preprocess().to_dict())}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VrError, match="needs a CUDA GPU, and torch sees none"):
        load_predictor(engine)


# --- vr eval end to end --------------------------------------------------------------------------
def test_eval_report_for_three_models(kit, tmp_path, capsys):
    out = tmp_path / "report"
    ckpt, onnx_path = str(kit["ckpt"]), str(kit["onnx"])
    rc = main(["eval", ckpt, ckpt, onnx_path, "--data", str(kit["root"]), "--out", str(out),
               "--batch-size", "4", "--workers", "0", "--worst-k", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best_pt" in printed and "colour" in printed and "top-1" in printed

    rep = json.loads((out / "report.json").read_text())
    assert rep["data"] == str(kit["val"])  # the dataset root's val/ split was used
    assert rep["n_images"] == 9 and rep["data_classes"] == ["blue", "green", "red"]
    keys = {"path", "runtime", "provider", "accuracy", "top5", "macro_f1", "macro_precision", "macro_recall",
            "weighted_f1", "per_class", "confusion_matrix", "images_per_second", "latency_ms"}
    assert [m["name"] for m in rep["models"]] == ["best_pt", "best_pt_2", "colour"]
    for m in rep["models"]:
        assert keys <= set(m)
        assert m["accuracy"] == 1.0 and m["top5"] == 1.0 and m["macro_f1"] == 1.0  # colour-coded: all right
        assert m["images_per_second"] > 0 and m["latency_ms"]["p50"] > 0 and m["latency_ms"]["p95"] >= m["latency_ms"]["p50"]
        assert sum(d["support"] for d in m["per_class"].values()) == 9
        cm = np.array(m["confusion_matrix"]["counts"])
        assert cm.trace() == 9 and len(m["worst_classes"]) == 2
        want = ["blue", "red", "green"] if m["runtime"] == "onnxruntime" else ["red", "green", "blue"]
        assert m["confusion_matrix"]["labels"] == want  # each model's own class order
        assert (out / m["files"]["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = list(csv.DictReader((out / m["files"]["predictions"]).open()))
        assert len(rows) == 9 and list(rows[0]) == ["image", "true_label", "pred_label", "confidence"]
        assert all(r["true_label"] == r["pred_label"] == r["image"].split("/")[0] for r in rows)
        assert all(0 < float(r["confidence"]) <= 1 for r in rows)
        with (out / m["files"]["confusion_csv"]).open() as f:
            table = list(csv.reader(f))
        assert table[0][1:] == m["confusion_matrix"]["labels"]
        assert sum(int(v) for row in table[1:] for v in row[1:]) == 9
        assert (out / m["files"]["confusion_normalized_csv"]).is_file()
    runtimes = [(m["runtime"], m["provider"]) for m in rep["models"]]
    assert runtimes == [("torch", "cpu"), ("torch", "cpu"), ("onnxruntime", "CPUExecutionProvider")]

    pairs = {(a["a"], a["b"]): a for a in rep["agreement"]}
    assert set(pairs) == {("best_pt", "best_pt_2"), ("best_pt", "colour"), ("best_pt_2", "colour")}
    for a in pairs.values():
        assert {"a", "b", "top1_agreement", "max_abs_prob_diff", "flipped", "deltas"} <= set(a)
        assert a["top1_agreement"] == 1.0 and a["flipped"] == []
    same = pairs[("best_pt", "best_pt_2")]
    assert same["max_abs_prob_diff"] == 0.0 and same["deltas"]["accuracy"] == 0.0
    md = (out / "report.md").read_text()
    assert "## Agreement" in md and "confusion_colour.png" in md and "| best_pt | best_pt_2 | 100.00%" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_eval_counts_mistakes_and_flips(kit, tmp_path):
    """Mislabelled folder: metrics drop exactly as predicted and the report stays consistent."""
    data = tmp_path / "d"
    H.write_image_folder(data, RGB, per_class=2, seed=4)
    # move one red image into green/: the model (rightly) still says red
    (data / "red" / "red_0.png").rename(data / "green" / "red_0.png")
    rc = main(["eval", str(kit["ckpt"]), "--data", str(data), "--out", str(tmp_path / "r"), "--workers", "1"])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "report.json").read_text())["models"][0]
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class"]["green"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["red"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["worst_classes"][0]["class"] == "red"
    assert m["confusion_matrix"]["counts"][1] == [1, 2, 0]  # true green row: one predicted red


def test_eval_unknown_data_class_is_named(kit, tmp_path, capsys):
    data = H.write_image_folder(tmp_path / "d", {**RGB, "purple": H.COLOURS["purple"]}, per_class=1)
    rc = main(["eval", str(kit["ckpt"]), "--data", str(data), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "'purple'" in err and "best.pt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "report.json").exists()


def test_eval_missing_or_absent_data_folder(kit, tmp_path, capsys):
    assert main(["eval", str(kit["ckpt"]), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["eval", str(kit["ckpt"]), "--out", str(tmp_path / "r")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_model_labels_are_unique_and_safe():
    from vr.evaluate.report import model_labels

    assert model_labels([Path("a/best.pt"), Path("a/best.onnx"), Path("b/best.pt"), Path("x y.pt")]) == [
        "best_pt", "best_onnx", "best_pt_2", "x_y"]


def test_pt_and_its_onnx_export_side_by_side(kit, tmp_path):
    import vr.export.onnx as export
    from vr.runtime.load import load_predictor
    from vr.models.checkpoint import load_checkpoint

    onnx_path = tmp_path / "best.onnx"
    export.export_onnx(load_checkpoint(kit["ckpt"]), onnx_path, tta="flip")
    p = load_predictor(onnx_path, device="cpu")
    assert p.runtime == "onnxruntime" and p.tta == "flip" and p.classes.names == ("red", "green", "blue")
    out = tmp_path / "r"
    assert main(["eval", str(kit["ckpt"]), str(onnx_path), "--data", str(kit["val"]), "--out", str(out),
                 "--tta", "flip", "--workers", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [(m["runtime"], m["tta"]) for m in rep["models"]] == [("torch", "flip"), ("onnxruntime", "flip")]
    assert [m["name"] for m in rep["models"]] == ["best_pt", "best_onnx"]
    (pair,) = rep["agreement"]
    assert pair["top1_agreement"] == 1.0 and pair["flipped"] == []
    assert pair["max_abs_prob_diff"] < 1e-4
    assert pair["deltas"]["accuracy"] == 0.0


def test_graph_inputs_are_batched_by_size(kit, tmp_path):
    """The runner reads each file's size from its header (EXIF rotation included), predicts the shape
    the preparer will give, and makes batches of one shape; the results come back in file order."""
    from vr.runtime.base import HostResize, RawRGB
    from vr.runtime.load import load_predictor
    from vr.runtime.runner import header_size, predict_files, size_batches
    from vr.data.images import load_rgb
    from vr.models.preprocess import Preprocess

    d = tmp_path / "imgs"
    d.mkdir()
    paths = []
    for i in range(23):
        w, h = [(40, 48), (48, 40), (61, 37)][i % 3]
        p = d / f"{i:02d}.jpg"
        img = H.colour_image(list(RGB.values())[i % 3], (w, h), seed=i)
        if i == 4:  # 48 x 40 with EXIF orientation 6: decoded rotated by 90 degrees, 40 x 48
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(p, exif=exif)
        else:
            img.save(p)
        paths.append(p)
    assert header_size(paths[4]) == (48, 40) and load_rgb(paths[4]).size == (40, 48)  # (h, w) vs (w, h)
    for prep in (RawRGB(), HostResize(Preprocess(input_size=24, resize_size=29), compact=True),
                 HostResize(Preprocess(input_size=24, resize_size=29, border_crop=0.1), compact=False)):
        for p in paths:
            assert prep.shape_for(*header_size(p)) == prep(load_rgb(p)).shape, (prep, p)
    batches = size_batches(paths, RawRGB().shape_for, 4)
    assert sorted(i for b in batches for i in b) == list(range(23))
    shapes = [{load_rgb(paths[i]).size for i in b} for b in batches]
    full = [s for b, s in zip(batches, shapes) if len(b) == 4]
    assert len(full) >= 4 and all(len(s) == 1 for s in full[:4])  # full batches share one size

    pred = load_predictor(kit["onnx"], device="cpu", batch_size=4)
    run = predict_files(pred, paths, 4, workers=0)
    want = np.concatenate([pred.predict([load_rgb(p)]) for p in paths])
    np.testing.assert_allclose(run.probs, want, atol=1e-6)
    assert max(run.batch_sizes) == 4 and sum(run.batch_sizes) == 23


def test_tta_auto_scores_every_mode_and_keeps_the_best(kit, tmp_path, cli):
    """--tta auto: every mode of the checkpoint on the eval images, the table in report.json and
    report.md, the best mode kept (ties: fewest views) and said to be optimistic."""
    from vr.models.tta import TTA_MODES, choose_tta

    code, out, err = cli("eval", kit["ckpt"], "--data", kit["root"], "--out", tmp_path / "r", "--tta", "auto",
                         "--no-html")
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "report.json").read_text())["models"][0]
    scores = m["tta_scores"]
    assert [s["tta"] for s in scores] == list(TTA_MODES) and all(0 <= s["accuracy"] <= 1 for s in scores)
    assert m["tta"] == choose_tta(scores) and m["accuracy"] == pytest.approx(
        next(s["accuracy"] for s in scores if s["tta"] == m["tta"]))
    assert any("optimistic" in n for n in m["notes"]) and "--tta auto" in out
    assert "### TTA modes (--tta auto" in (tmp_path / "r" / "report.md").read_text()
    code, _, err = cli("submit", kit["ckpt"], "--test-dir", kit["root"], "--tta", "auto")
    assert code == 2 and "auto" in err  # auto is an eval/export choice, not a submission's


def test_choose_tta_breaks_ties_for_the_cheapest():
    from vr.models.tta import choose_tta

    s = [{"tta": "none", "accuracy": 0.9}, {"tta": "flip", "accuracy": 0.95}, {"tta": "five-crop", "accuracy": 0.95},
         {"tta": "ten-crop", "accuracy": 0.94}]
    assert choose_tta(s) == "flip"
    assert choose_tta([dict(x, accuracy=0.5) for x in s]) == "none"


def test_torch_predictor_runs_nhwc_on_cpu_from_64px_with_the_same_answers(tmp_path):
    """On the CPU the PyTorch predictor converts the model to channels_last at 64 px and up
    (faster oneDNN convolutions); the probabilities match the plain NCHW model's."""
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vr.models.factory import create_model
    from vr.models.preprocess import Preprocess
    from vr.models.tta import batch_views, predict_views
    from vr.runtime.torch_backend import TorchPredictor

    imgs = [H.colour_image(rgb, (90, 70), seed=i) for i, rgb in enumerate(RGB.values())]
    for size, nhwc in ((64, True), (32, False)):
        torch.manual_seed(0)
        model = create_model("test_resnet", 3)
        path = tmp_path / f"m{size}.pt"
        save_checkpoint(path, Checkpoint("test_resnet", 3, model.state_dict(), ClassMap(tuple(RGB)),
                                         Preprocess(size, int(size / 0.875), "bilinear")))
        p = TorchPredictor(path, device="cpu")
        conv = next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is nhwc
        ck = load_checkpoint(path)
        want = predict_views(model_from_checkpoint(ck), batch_views(imgs, ck.preprocess, "none")).numpy()
        np.testing.assert_allclose(p.predict(imgs), want, rtol=0, atol=1e-5)
