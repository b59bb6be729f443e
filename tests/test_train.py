"""`vr train` and `vr data digits` end to end through the CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from conftest import TINY_TRAIN, run_vr
from vr.data.dataset import ImageDataset
from vr.data.folders import scan_image_folder
from vr.models.checkpoint import load_checkpoint
from vr.train.logging import COLUMNS
from vr.models.factory import model_from_checkpoint


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_run_folder_and_best_reproduces(tiny_data, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli("train", tiny_data, "--out", run, "--epochs", "3", *TINY_TRAIN)
    assert code == 0, err
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "classes.json", "config.yaml"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((run / "classes.json").read_text()) == ["1", "2", "10"]
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert tuple(rows[0].keys()) == COLUMNS
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best val acc" in out and "params" in out and "skipped files" in out
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert float(best["val_acc"]) >= 0.9  # colour-coded classes are easy

    ck = load_checkpoint(run / "best.pt")
    assert ck.classes.names == ("1", "2", "10") and ck.train_state is None
    assert ck.epoch == int(best["epoch"])
    model = model_from_checkpoint(ck)
    ds = ImageDataset(scan_image_folder(tiny_data / "val", classes=ck.classes).samples, ck.preprocess)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(float(best["val_acc"]), abs=1e-6)
    assert load_checkpoint(run / "last.pt").train_state is not None

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 3 and cfg["model"] == "test_resnet"
    man = json.loads((run / "manifest.json").read_text())
    assert man["config"]["epochs"] == 3 and man["providers"]["device"] == "cpu"
    assert torch.__version__.startswith(man["versions"]["torch"]) and "train" in man["command"]

    # a second run into the same folder must not clobber it
    code, _, err = cli("train", tiny_data, "--out", run, "--epochs", "1", *TINY_TRAIN)
    assert code == 2 and "--resume" in err


def test_resume_continues_without_repeating_epochs(tiny_data, tmp_path, cli):
    run = tmp_path / "run"
    assert cli("train", tiny_data, "--out", run, "--epochs", "2", *TINY_TRAIN)[0] == 0
    # continue the same run to 3 epochs
    code, out, err = cli("train", tiny_data, "--out", run, "--epochs", "3", "--resume", *TINY_TRAIN)
    assert code == 0, err
    assert "resuming" in out
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2, 3]
    assert load_checkpoint(run / "last.pt").epoch == 3


def test_yaml_config_and_flag_precedence(tiny_data, tmp_path, cli):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nsched: step\nlabel-smoothing: 0.0\n")
    run = tmp_path / "run"
    code, _, err = cli("train", tiny_data, "--config", cfg, "--out", run, "--epochs", "1", *TINY_TRAIN)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["sched"] == "step" and saved["label_smoothing"] == 0.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 2\n")
    code, _, err = cli("train", tiny_data, "--config", bad, "--out", tmp_path / "r2")
    assert code == 2 and "epoch" in err


def test_awkward_images_train_and_skips_are_counted(tiny_data, tmp_path, cli):
    from test_data import _awkward_images

    _awkward_images(tiny_data / "train" / "2")
    (tiny_data / "train" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tiny_data / "train" / "1" / "zero.png").write_bytes(b"")
    (tiny_data / "train" / "1" / "README.txt").write_text("not an image")
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", "--epochs", "1", *TINY_TRAIN)
    assert code == 0, err
    assert "broken.jpg" in err and "zero.png" in err and "README.txt" not in err
    assert "2 skipped files" in out


@pytest.mark.parametrize("args, needle", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--model", "resnet_does_not_exist"], "unknown model"),
    (["--drop-rate", "1.5"], "--drop-rate"),
])
def test_bad_arguments_one_line(tiny_data, tmp_path, cli, args, needle):
    code, out, err = cli("train", tiny_data, "--out", tmp_path / "run", *TINY_TRAIN, *args)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_missing_data_and_val_class_not_in_train(tmp_path, tiny_data, cli):
    code, _, err = cli("train", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert code == 2 and "not found" in err
    (tiny_data / "val" / "99").mkdir()
    (tiny_data / "val" / "2" / "img0.png").rename(tiny_data / "val" / "99" / "x.png")
    code, _, err = cli("train", tiny_data, "--out", tmp_path / "run", *TINY_TRAIN)
    assert code == 2 and "'99'" in err


def test_amp_on_cpu_never_crashes_and_errors_have_no_traceback(tiny_data, tmp_path):
    # A subprocess: bf16 on some CPUs dies by SIGILL (exit 132) with no Python exception.
    p = run_vr("train", tiny_data, "--out", tmp_path / "run", "--epochs", "1", "--amp", "--channels-last",
               *TINY_TRAIN)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "AMP is off on CPU" in p.stdout
    p = run_vr("train", tiny_data, "--out", tmp_path / "run2", "--epochs", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.strip().startswith("error:")


def test_image_size_the_model_cannot_take(tiny_data, tmp_path, cli):
    code, _, err = cli("train", tiny_data, "--out", tmp_path / "run", *TINY_TRAIN[:2], "--img-size", "8",
                       "--model", "test_vit", "--device", "cpu", "--workers", "0")
    assert code == 2 and "cannot take 8x8" in err


def test_digits_command(tmp_path, cli):
    out = tmp_path / "digits"
    code, text, err = cli("data", "digits", out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(i) for i in range(10)]
    n_train = sum(1 for _ in (out / "train").rglob("*.png"))
    n_val = sum(1 for _ in (out / "val").rglob("*.png"))
    tests = sorted((out / "test").glob("*.png"))
    assert n_train + n_val + len(tests) == 1797
    with open(out / "test_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["image_name"] for r in rows} == {p.stem for p in tests}
    assert {r["label"] for r in rows} == {str(i) for i in range(10)}
    assert cli("data", "digits", out)[0] == 2  # refuses to overwrite silently
