"""`vr predict`: top-k classes with names and probabilities, for a checkpoint and an ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval_helpers as H

# Numeric names in natural order (2, 7, 10): printing an index instead of a name would fail below.
CLASSES = {"2": H.COLOURS["red"], "7": H.COLOURS["green"], "10": H.COLOURS["blue"]}


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predictkit")
    imgs = root / "imgs"
    imgs.mkdir()
    truth = {}
    for i, (label, rgb) in enumerate(CLASSES.items()):
        for j in range(2):
            p = imgs / f"{label}_{j}.png"
            H.colour_image(rgb, H.SIZES[(i + j) % 4], seed=10 * i + j).save(p)
            truth[p.name] = label
    return {"pt": H.make_checkpoint(root / "best.pt", CLASSES), "onnx": H.make_onnx(root / "m.onnx", CLASSES),
            "imgs": imgs, "truth": truth}


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_predict_prints_top_k_names_and_probabilities(kit, kind, cli):
    files = sorted(kit["imgs"].iterdir())
    code, out, err = cli("predict", kit[kind], *files[:2], kit["imgs"], "--top-k", "2", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 + len(files)  # two files, then the folder's six images
    for r in rows:
        top = r["top"]
        assert len(top) == 2 and top[0]["prob"] >= top[1]["prob"]
        assert top[0]["class"] == kit["truth"][Path(r["image"]).name]
        assert top[0]["class"] in CLASSES and 0.0 <= top[1]["prob"] <= 1.0

    code, out, err = cli("predict", kit[kind], files[0], "--top-k", "10")
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith(str(files[0])) and len(line.split()) == 1 + 2 * len(CLASSES)  # capped at C


def test_predict_bad_input_is_one_line(kit, tmp_path, cli):
    code, _, err = cli("predict", kit["pt"], tmp_path / "nope.png")
    assert code == 2 and "image not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code, _, err = cli("predict", kit["onnx"], bad)
    assert code == 2 and "bad.jpg" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("predict", kit["pt"], kit["imgs"], "--top-k", "0")
    assert code == 2 and "--top-k" in err
