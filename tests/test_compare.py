"""`vr compare` and `vr sweep` on tiny real runs."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TINY_TRAIN, write_image_folder
from vr.train.logging import read_metrics
from vr.models.factory import model_from_checkpoint

PICTURES = ("overview.png", "loss.png", "accuracy.png", "gap.png", "lr.png")
# matplotlib's tab10: the colours of runs 0, 1, 2 in every picture
RUN_RGB = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 2-epoch tiny runs: (cosine, lr 1e-2) and (step, lr 5e-3)."""
    from vr.cli import main

    d = tmp_path_factory.mktemp("compare")
    data = d / "data"
    write_image_folder(data / "train", 12, seed=0)
    write_image_folder(data / "val", 4, seed=1)
    out = []
    for name, extra in (("a", ["--sched", "cosine"]), ("b", ["--sched", "step", "--lr", "5e-3"])):
        # TINY_TRAIN sets --lr 1e-2; a later --lr wins
        assert main(["train", str(data), "--out", str(d / name), "--epochs", "2", "--no-tensorboard", *TINY_TRAIN,
                     *extra]) == 0
        out.append(d / name)
    return {"dir": d, "data": data, "runs": out}


def _png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = Image.open(path)
    img.load()
    assert img.width >= 500 and img.height >= 300, (path, img.size)
    arr = np.asarray(img.convert("RGB"))
    packed = (arr[..., 0].astype(np.int32) << 16) | (arr[..., 1].astype(np.int32) << 8) | arr[..., 2]
    assert len(np.unique(packed)) > 50, f"{path} looks blank"
    return arr


def _count_colour(arr: np.ndarray, rgb) -> int:
    return int((np.abs(arr.astype(int) - np.array(rgb)).sum(-1) <= 6).sum())


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _best(rows):
    return max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))


def test_compare_pictures_and_tables(runs, tmp_path, cli):
    from vr.models.checkpoint import load_checkpoint
    from vr.models.factory import count_params

    a, b = runs["runs"]
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", a, b, "--out", out)
    assert code == 0, err
    for name in PICTURES:
        arr = _png(out / name)
        for i, rgb in enumerate(RUN_RGB[:2]):  # every run drawn, in its own colour, in every picture
            assert _count_colour(arr, rgb) > 30, f"run {i} colour missing from {name}"
    assert not (out / "worst_classes.png").exists()  # no eval reports

    labels = ["lr=0.01,sched=cosine", "lr=0.005,sched=step"]
    rows = _csv(out / "compare.csv")
    assert [r["label"] for r in rows] == labels
    n_params = count_params(model_from_checkpoint(load_checkpoint(a / "best.pt")))
    for row, run in zip(rows, (a, b)):
        metrics = read_metrics(run / "metrics.csv")
        best, last = _best(metrics), metrics[-1]
        assert int(row["best_epoch"]) == best["epoch"]
        assert float(row["best_val_acc"]) == pytest.approx(best["val_acc"])
        assert float(row["final_train_loss"]) == pytest.approx(last["train_loss"], rel=1e-5)
        assert float(row["final_val_loss"]) == pytest.approx(last["val_loss"], rel=1e-5)
        assert float(row["seconds"]) == pytest.approx(sum(m["seconds"] for m in metrics), rel=1e-4)
        assert int(row["epochs_run"]) == 2 and row["model"] == "test_resnet"
        assert int(row["params"]) == n_params
    assert [r["sched"] for r in rows] == ["cosine", "step"]
    assert [r["lr"] for r in rows] == ["0.01", "0.005"]

    md = (out / "compare.md").read_text()
    assert "(`lr`, `sched`)" in md  # the differing hyperparameters, and nothing else (not out, data)
    for lab, row in zip(labels, rows):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| **{lab}** |"))
        cells = [x.strip() for x in line.strip("|").split("|")]
        assert cells[1] == f"{100 * float(row['best_val_acc']):.2f}%" and cells[2] == row["best_epoch"]
        assert cells[3] == "2/2"
    for name in PICTURES:
        assert f"]({name})" in md
    assert "Worst classes" not in md
    assert "lr=0.005,sched=step" in stdout  # the console summary


def _report(run: Path, f1s: dict[str, float], decoy: bool = False) -> None:
    """A `vr eval` report.json (the schema of vr/evaluate) in RUN/eval/."""
    def per_class(scores):
        return {k: {"precision": v, "recall": v, "f1": v, "support": 4} for k, v in scores.items()}

    models = [{"name": "best", "path": str(run / "best.pt"), "runtime": "torch", "accuracy": 0.9,
               "macro_f1": sum(f1s.values()) / len(f1s), "per_class": per_class(f1s), "worst_classes": []}]
    if decoy:  # another model in the same report: compare must pick RUN/best.pt
        models.insert(0, {"name": "model", "path": str(run / "model.onnx"), "runtime": "onnxruntime",
                          "per_class": per_class({k: 0.01 for k in f1s}), "worst_classes": []})
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps({"data": "val", "data_classes": list(f1s),
                                                          "models": models, "agreement": []}))


def test_compare_worst_classes_side_by_side(runs, tmp_path, cli):
    a, b = (shutil.copytree(r, tmp_path / r.name) for r in runs["runs"])
    c = shutil.copytree(b, tmp_path / "c")  # a third run, without a report
    _report(a, {"1": 0.9, "2": 0.5, "10": 1.0}, decoy=True)
    _report(b, {"1": 0.7, "2": 0.6, "10": 0.95})
    out = tmp_path / "cmp"
    code, _, err = cli("compare", a, b, c, "--out", out, "--worst-k", "2", "--labels", "A,B,C")
    assert code == 0, err
    arr = _png(out / "worst_classes.png")
    assert _count_colour(arr, RUN_RGB[0]) > 100 and _count_colour(arr, RUN_RGB[1]) > 100
    md = (out / "compare.md").read_text()
    section = md.split("## Worst classes", 1)[1]
    table = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| class")]
    # mean F1: "2" 0.55, "1" 0.8, "10" 0.975 -> the two worst, worst first; C has no report
    assert table == ["| 2 | 50.00% | 60.00% | – |", "| 1 | 90.00% | 70.00% | – |"]
    assert "No eval report (–): C" in section
    rows = _csv(out / "worst_classes.csv")
    assert [(r["class"], float(r["A"]), float(r["B"]), r["C"]) for r in rows] == [("2", 0.5, 0.6, ""),
                                                                                 ("1", 0.9, 0.7, "")]
    assert [r["label"] for r in _csv(out / "compare.csv")] == ["A", "B", "C"]

    # --worst-k 0 leaves the section out
    code, _, err = cli("compare", a, b, "--out", tmp_path / "k0", "--worst-k", "0")
    assert code == 0, err
    assert not (tmp_path / "k0" / "worst_classes.png").exists()
    assert "Worst classes" not in (tmp_path / "k0" / "compare.md").read_text()


def test_compare_errors_are_one_line(runs, tmp_path, cli):
    a, b = runs["runs"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((a, tmp_path / "nope"), "run folder not found"),
        ((a, empty), "has no metrics.csv"),
        ((a, b, "--labels", "x,y,z"), "--labels gives 3 label(s) for 2 run(s)"),
        ((a, b, "--labels", "x,x"), "--labels repeats x"),
        ((a, a), "given more than once"),
        ((a, "--worst-k", "-1"), "--worst-k must be >= 0"),
    ]
    for args, msg in cases:
        code, _, err = cli("compare", *args, "--out", tmp_path / "cmp")
        assert code == 2, (args, err)
        assert msg in err and err.strip().count("\n") == 0, err
    (empty / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n")
    code, _, err = cli("compare", a, empty, "--out", tmp_path / "cmp")
    assert code == 2 and "lists no epochs" in err


def test_labels_come_from_differing_hyperparameters(tmp_path):
    from vr.experiments.compare import RunInfo, derive_labels

    base = {"data": "/d1", "model": "resnet18", "lr": 0.001, "sched": "cosine", "img_size": None,
            "out": "runs/x", "workers": 2, "seed": 0}
    row = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 1e-3,
            "seconds": 1.0}]

    def run(name, **changes):
        return RunInfo(path=tmp_path / name, rows=row, config={**base, **changes})

    # out, data and workers differ too, but do not describe the experiment
    got = derive_labels([run("r1", out="o1", data="/d2", workers=0), run("r2", lr=3e-4, img_size=224, out="o2")])
    assert got == ["lr=0.001,img_size=none", "lr=0.0003,img_size=224"]
    assert derive_labels([run("r1"), run("r2", workers=8)]) == ["r1", "r2"]  # nothing relevant differs
    assert derive_labels([run("x/run"), run("y/run", seed=1)]) == ["seed=0", "seed=1"]
    assert derive_labels([run("x/run"), run("y/run")]) == ["x/run", "y/run"]


# --- sweep -------------------------------------------------------------------------------------
def _sweep_yaml(path: Path, data: Path, epochs: int = 1) -> Path:
    cfg = {"data": str(data), "model": "test_resnet", "img_size": 32, "device": "cpu", "workers": 0,
           "batch_size": 8, "lr": 0.01, "warmup_epochs": 0, "epochs": epochs, "tensorboard": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _sweep_interrupted_after_first_run(cfg: Path, out: Path) -> tuple[int, str, str]:
    """`vr sweep` in its own process group, SIGINT to the whole group (a terminal's Ctrl-C) as soon
    as the first run's done.json exists."""
    import signal
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "vr.cli", "sweep", str(cfg), "--set", "sched=cosine,step",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not (out / "sched=cosine" / "done.json").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the first sweep run did not finish in time"
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, stdout, stderr


def test_sweep_dry_run_interrupt_resume_and_compare(tiny_data, tmp_path, cli):
    cfg = _sweep_yaml(tmp_path / "sweep.yaml", tiny_data)
    out = tmp_path / "sw"

    # --dry-run: one `vr train` line per grid point (then the compare line); nothing trained
    code, stdout, err = cli("sweep", cfg, "--set", "sched=cosine,step", "--set", "lr=1e-2,5e-3", "--out", out,
                            "--dry-run")
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 5 and all(ln.startswith("vr train ") for ln in lines[:4])
    assert lines[0] == (f"vr train {tiny_data} --config {cfg} --sched cosine --lr 0.01 "
                        f"--out {out}/sched=cosine,lr=1e-2")
    assert lines[4].startswith("vr compare ")
    assert not out.exists()

    # Ctrl-C (to the whole terminal group) once the first run is done: the sweep stops with a hint
    code, _, err = _sweep_interrupted_after_first_run(cfg, out)
    assert code == 130 and "run the same command again" in err, err
    assert (out / "sched=cosine" / "done.json").is_file()
    assert not (out / "sched=step" / "done.json").exists()
    (out / "sched=step" / "last.pt").unlink(missing_ok=True)  # Ctrl-C may land after its first epoch
    first = out / "sched=cosine" / "last.pt"
    mtime = first.stat().st_mtime_ns

    # what is left, as commands: the step run only
    code, stdout, err = cli("sweep", cfg, "--set", "sched=cosine,step", "--out", out, "--dry-run")
    assert code == 0 and [ln for ln in stdout.splitlines() if ln.startswith("vr train")] == [
        f"vr train {tiny_data} --config {cfg} --sched step --out {out}/sched=step"]
    assert "skipped sched=cosine" in err

    # resumed: the finished run is skipped, the other trained, both compared. Without its done.json
    # (a run trained by a printed command) the finished run is recognised by its last.pt epoch.
    (out / "sched=cosine" / "done.json").unlink()
    code, stdout, err = cli("sweep", cfg, "--set", "sched=cosine,step", "--out", out)
    assert code == 0, err
    assert "sched=cosine: skipped" in stdout and "1 trained, 1 skipped" in stdout
    assert first.stat().st_mtime_ns == mtime
    rows = _csv(out / "compare" / "compare.csv")
    assert [r["label"] for r in rows] == ["sched=cosine", "sched=step"]
    assert [r["sched"] for r in rows] == ["cosine", "step"]
    for name in PICTURES:
        _png(out / "compare" / name)
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["sched=cosine", "sched=step"]

    # everything finished: nothing trains
    step_mtime = (out / "sched=step" / "last.pt").stat().st_mtime_ns
    code, stdout, err = cli("sweep", cfg, "--set", "sched=cosine,step", "--out", out)
    assert code == 0 and "0 trained, 2 skipped" in stdout, err
    assert (out / "sched=step" / "last.pt").stat().st_mtime_ns == step_mtime

    # more epochs in the config: an unfinished run (last.pt short of them) is resumed with --resume
    cfg2 = _sweep_yaml(tmp_path / "sweep2.yaml", tiny_data, epochs=2)
    code, stdout, _ = cli("sweep", cfg2, "--set", "sched=step", "--out", out, "--dry-run")
    assert stdout.splitlines()[0].endswith(f"--out {out}/sched=step --resume")
    code, stdout, err = cli("sweep", cfg2, "--set", "sched=step", "--out", out, "--no-compare")
    assert code == 0, err
    assert "resuming" in stdout
    assert [r["epoch"] for r in read_metrics(out / "sched=step" / "metrics.csv")] == [1, 2]
    assert json.loads((out / "sched=step" / "done.json").read_text())["epochs"] == 2


def test_sweep_dry_run_commands_are_valid_vr_train_commands(tiny_data, tmp_path, cli, monkeypatch):
    """A printed line, run as is (say as a cluster job), is the `vr train` of that grid point."""
    from vr.train import loop

    cfg = _sweep_yaml(tmp_path / "sweep.yaml", tiny_data)
    out = tmp_path / "sw"
    code, stdout, err = cli("sweep", cfg, "--set", "aug=none,light", "--set", "tensorboard=false",
                            "--set", "mean=0.5 0.4 0.3", "--out", out, "--dry-run")
    assert code == 0, err
    got = []
    monkeypatch.setattr(loop, "run", got.append)
    for line, aug in zip(stdout.splitlines()[:2], ("none", "light")):
        args = shlex.split(line)
        assert args[:2] == ["vr", "train"] and "--no-tensorboard" in args
        code, _, err = cli(*args[1:])
        assert code == 0, err
        c = got[-1]
        assert (c.aug, c.tensorboard, tuple(c.mean), c.model, c.epochs) == (
            aug, False, (0.5, 0.4, 0.3), "test_resnet", 1)
        assert c.out == out / f"aug={aug},tensorboard=false,mean=0.5_0.4_0.3" and c.resume is False
    assert len(got) == 2 and not out.exists()


def test_sweep_errors_are_one_line(tiny_data, tmp_path, cli):
    cfg = _sweep_yaml(tmp_path / "sweep.yaml", tiny_data)
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text("model: test_resnet\n")
    cases = [
        ((cfg, "--set", "schd=cosine"), "unknown key 'schd'"),
        ((cfg, "--set", "sched"), "expected KEY=V1,V2"),
        ((cfg, "--set", "sched=cosine,"), "empty value"),
        ((cfg, "--set", "sched=cosine", "--set", "sched=step"), "sched is given twice"),
        ((cfg, "--set", "out=a,b"), "out cannot be swept"),
        ((cfg, "--set", "lr=1e-3,-1"), "sweep run lr=-1: --lr must be positive"),
        ((cfg, "--set", "sched=cosine,bogus"), "unknown scheduler 'bogus'"),
        ((cfg,), "give at least one --set"),
        ((nodata, "--set", "sched=step"), "has no data: key"),
        ((tmp_path / "nope.yaml", "--set", "sched=step"), "config file not found"),
    ]
    for args, msg in cases:
        code, _, err = cli("sweep", *args, "--out", tmp_path / "sw", "--dry-run")
        assert code == 2, (args, err)
        assert msg in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "sw").exists()


def test_a_failed_sweep_run_does_not_stop_the_sweep(tiny_data, tmp_path, cli):
    """Each grid point is its own `vr train` process: one that fails is reported and the next runs."""
    cfg = _sweep_yaml(tmp_path / "sweep.yaml", tiny_data)
    out = tmp_path / "sw"
    code, stdout, err = cli("sweep", cfg, "--set", "model=no_such_model,test_resnet", "--out", out, "--no-compare")
    assert code == 2
    assert "sweep run model=no_such_model failed" in err and "1 of 2 sweep runs failed" in err
    assert "1 trained" in stdout
    done = json.loads((out / "model=test_resnet" / "done.json").read_text())
    assert done["epochs"] == 1 and 0.0 <= done["best_acc"] <= 1.0 and done["best_epoch"] == 1
    assert not (out / "model=no_such_model" / "done.json").exists()
