"""`vr submit`: the leaderboard CSV, --zip, --check and every refusal."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest

import eval_helpers as H
from vr.cli import main

# Numeric class names, as in the competition: natural order 2, 7, 10; text order 10, 2, 7; the
# indices 0, 1, 2 are not names at all. A CSV of indices or of the text order fails below.
CLASSES = {"2": H.COLOURS["red"], "7": H.COLOURS["green"], "10": H.COLOURS["blue"]}
COLOUR_OF = {"2": "red", "7": "green", "10": "blue"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return H.make_checkpoint(tmp_path_factory.mktemp("submitkit") / "best.pt", CLASSES)


def write_test_folder(root: Path, n: int = 12) -> dict[str, str]:
    """root/<i>.png|.jpg for i = 1..n; returns stem -> expected label."""
    root.mkdir(parents=True, exist_ok=True)
    labels = list(CLASSES)
    want = {}
    for i in range(1, n + 1):
        label = labels[(i * 5) % 3]
        ext = ".jpg" if i % 4 == 0 else ".png"
        H.colour_image(CLASSES[label], H.SIZES[i % 4], seed=i).save(root / f"{i}{ext}", quality=95)
        want[str(i)] = label
    return want


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


def test_submission_rows_are_stems_in_natural_order_with_class_names(model, tmp_path, capsys):
    want = write_test_folder(tmp_path / "test")
    (tmp_path / "test" / "notes.txt").write_text("not an image")  # ignored
    out = tmp_path / "sub" / "prediction.csv"
    rc = main(["submit", str(model), str(tmp_path / "test"), "--out", str(out), "--workers", "0", "--batch-size", "5"])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(out)
    assert rows[0] == ["image_name", "pred_label"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 13)]  # 1, 2, ..., 10, 11, 12: not 1, 10, 11, 12, 2
    assert {r[0]: r[1] for r in rows[1:]} == want  # names of the class folders, from the colours
    assert {r[1] for r in rows[1:]} == {"2", "7", "10"}
    assert "12 rows" in capsys.readouterr().out
    assert not (tmp_path / "sub" / "prediction.zip").exists()


def test_zip_holds_prediction_csv(model, tmp_path):
    write_test_folder(tmp_path / "test", n=4)
    out = tmp_path / "run3.csv"
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(out), "--zip", "--workers", "0"]) == 0
    with zipfile.ZipFile(tmp_path / "run3.zip") as zf:
        assert zf.namelist() == ["prediction.csv"]
        assert zf.read("prediction.csv").decode() == out.read_text()


def test_same_stem_twice_is_refused_naming_both(model, tmp_path, capsys):
    write_test_folder(tmp_path / "test", n=3)
    H.colour_image(CLASSES["2"]).save(tmp_path / "test" / "2.jpg")  # 2.png exists
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "2.png" in err and "2.jpg" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_empty_and_missing_test_folders(model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["submit", str(model), str(tmp_path / "empty"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "holds no images" in capsys.readouterr().err
    (tmp_path / "nested" / "images").mkdir(parents=True)
    H.colour_image(CLASSES["2"]).save(tmp_path / "nested" / "images" / "a.png")
    assert main(["submit", str(model), str(tmp_path / "nested"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "sub-folders images" in capsys.readouterr().err
    assert main(["submit", str(model), str(tmp_path / "nope"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "test folder not found" in capsys.readouterr().err


def test_unreadable_test_image_stops_the_run_naming_it(model, tmp_path, capsys):
    write_test_folder(tmp_path / "test", n=3)
    (tmp_path / "test" / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "test" / "5.png").write_bytes(b"")
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "4.jpg" in err and "5.png" in err and "unreadable" in err and len(err.splitlines()) == 1
    assert out.read_text() == "previous\n"


def test_unwritable_output_is_one_line(model, tmp_path, capsys):
    write_test_folder(tmp_path / "test", n=2)
    (tmp_path / "afile").write_text("x")
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(tmp_path / "afile" / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and len(err.splitlines()) == 1
    (tmp_path / "adir").mkdir()
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(tmp_path / "adir")]) == 2
    assert "it is a folder" in capsys.readouterr().err


def test_interrupted_run_keeps_the_previous_csv(model, tmp_path, monkeypatch):
    import vr.runtime.runner as runner

    write_test_folder(tmp_path / "test", n=3)
    out = tmp_path / "prediction.csv"
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(out), "--workers", "0"]) == 0
    before = out.read_text()
    write_test_folder(tmp_path / "test", n=5)  # a new run would write 5 rows

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "predict_files", interrupted)
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(out), "--workers", "0"]) == 130
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_check_accepts_a_good_file_and_names_what_is_wrong(model, tmp_path, capsys):
    want = write_test_folder(tmp_path / "test", n=12)
    test = str(tmp_path / "test")
    good = tmp_path / "good.csv"
    good.write_text("image_name,pred_label\n" + "".join(f"{k},{v}\n" for k, v in want.items()))
    assert main(["submit", str(model), test, "--check", str(good)]) == 0
    assert "valid submission" in capsys.readouterr().out

    indices = tmp_path / "indices.csv"  # the classic mistake: class indices instead of folder names
    idx = {"2": "0", "7": "1", "10": "2"}
    indices.write_text("image_name,pred_label\n" + "".join(f"{k},{idx[v]}\n" for k, v in want.items()))
    assert main(["submit", str(model), test, "--check", str(indices)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not among the model's classes: 0, 1" in err and len(err.splitlines()) == 1

    partial = tmp_path / "partial.csv"
    partial.write_text("image,label\n1,2\n1,2\nghost,7\n")
    assert main(["submit", str(model), test, "--check", str(partial)]) == 2
    err = capsys.readouterr().err
    assert "header is image,label" in err and "listed more than once: 1" in err
    assert "11 test image(s) missing: 2, 3" in err and "ghost" in err


def test_cuda_request_without_cuda_is_one_line(model, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    write_test_folder(tmp_path / "test", n=1)
    assert main(["submit", str(model), str(tmp_path / "test"), "--out", str(tmp_path / "p.csv"),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU" in err and len(err.splitlines()) == 1
