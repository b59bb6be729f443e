"""DDP on CPU: two gloo processes through `vr train --nproc-per-node 2` (torchrun underneath);
Ctrl-C and SIGTERM to the launcher."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, colour_image, run_vr, signal_after_first_epoch
from vr.data.dataset import ImageDataset
from vr.data.folders import scan_image_folder
from vr.models.checkpoint import load_checkpoint
from vr.config import config_argv
from vr.train import distributed as D
from vr.train.config import TrainConfig
from vr.models.factory import model_from_checkpoint

# One thread per process: two ranks share two cores (and tiny tensors gain nothing from more).
ENV = {"OMP_NUM_THREADS": "1"}
EXPECTED_FILES = {"best.pt", "last.pt", "metrics.csv", "per_class.csv", "curves.png", "classes.json", "config.yaml",
                  "manifest.json", "tb", "data_check.json"}


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _eval(ck, samples) -> tuple[float, float]:
    """Single-process loss and accuracy of a checkpoint on the given (path, label) samples."""
    model = model_from_checkpoint(ck)
    ds = ImageDataset(samples, ck.preprocess)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    label_smoothing = ck.config.get("label_smoothing", 0.1)
    with torch.no_grad():
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing).item()
    return loss, (logits.argmax(1) == y).float().mean().item()


@pytest.fixture
def odd_val_data(tiny_data):
    """tiny_data with 13 val images: with 2 ranks, a padded sampler would count one twice."""
    import numpy as np

    colour_image(np.random.default_rng(7), (200, 40, 40), (40, 40)).save(tiny_data / "val" / "1" / "extra.png")
    return tiny_data


def test_ddp_ctrl_c_resume_reduced_metrics_and_rank0_writes(odd_val_data, tmp_path):
    """Two launches (DDP start-up is the slow part): a run stopped by Ctrl-C, then resumed."""
    data, run = odd_val_data, tmp_path / "run"
    args = [a for a in TINY_TRAIN]
    args[args.index("--batch-size") + 1] = "4"  # per process: global batch 8
    # SIGINT to the launcher only, as a terminal's Ctrl-C would reach it
    code, out, err = signal_after_first_epoch(["train", data, "--out", run, "--epochs", "30", "--nproc-per-node", "2",
                                               *args], run, signal.SIGINT, timeout=300)
    assert code == 130, out[-2000:] + err[-2000:]
    assert "DDP: 2 processes (gloo)" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and out.rstrip().splitlines()[-1] == lines[0]  # once (rank 0), and last
    assert "Resume with: vr train" in lines[0] and "--resume" in lines[0]
    assert err.strip() == "", err[-2000:]  # no failure reported by torchrun, no second message
    done = int(load_checkpoint(run / "last.pt").epoch)
    assert done < 30 and [int(r["epoch"]) for r in _rows(run)] == list(range(1, done + 1))

    # Resume in DDP (config.yaml carries --nproc-per-node 2) for 2 more epochs.
    p = run_vr("train", data, "--config", run / "config.yaml", "--resume", "--epochs", str(done + 2),
               env=ENV, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "DDP: 2 processes (gloo)" in out and "resuming" in out
    # rank 0 alone prints, draws progress bars and writes files
    assert out.count("done:") == 1 and out.count("test_resnet: ") == 1 and out.count(f"epoch {done + 1}/") == 1
    assert "Traceback" not in p.stderr
    assert {f.name for f in run.iterdir()} == EXPECTED_FILES
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    per_folder = {e.parent: 0 for e in events}
    for e in events:
        per_folder[e.parent] += 1
    assert events and set(per_folder.values()) == {2}  # one writer per launch, not one per rank
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, done + 3))

    # Validation is sharded over the ranks and reduced: metrics.csv holds the loss and accuracy
    # over all 13 images, as a single process computes them from the saved weights.
    ck = load_checkpoint(run / "last.pt")
    assert ck.epoch == done + 2 and ck.train_state["world_size"] == 2
    samples = scan_image_folder(data / "val", classes=ck.classes).samples
    assert len(samples) == 13
    full_loss, full_acc = _eval(ck, samples)
    assert float(rows[-1]["val_loss"]) == pytest.approx(full_loss, rel=1e-4)
    assert float(rows[-1]["val_acc"]) == pytest.approx(full_acc, abs=1e-6)
    shard_loss, _ = _eval(ck, samples[0::2])  # what rank 0 alone would have logged
    assert abs(shard_loss - full_loss) > 1e-3, "the check cannot tell a reduced loss from one rank's"
    best = load_checkpoint(run / "best.pt")
    best_row = next(r for r in rows if int(r["epoch"]) == best.epoch)
    assert float(best_row["val_loss"]) == pytest.approx(_eval(best, samples)[0], rel=1e-4)
    # Training counts both ranks' samples: 2 ranks x 4 full batches of 4 = 32 an epoch (rank 0 alone
    # saw 16), in per_class.csv's supports, and train_acc is the share right over those 32.
    import csv

    with open(run / "per_class.csv", newline="") as f:
        per_class = list(csv.DictReader(f))
    for r in rows:
        mine = [c for c in per_class if int(c["epoch"]) == int(r["epoch"])]
        assert sum(int(c["train_support"]) for c in mine) == 32, r["epoch"]
        right = sum(float(c["train_acc"]) * int(c["train_support"]) for c in mine if c["train_acc"])
        assert float(r["train_acc"]) == pytest.approx(right / 32, abs=1e-6)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_exit_143(tiny_data, tmp_path):
    """A scheduler's SIGTERM to `vr train --nproc-per-node 2` reaches both workers, which stop
    together as after Ctrl-C: last.pt consistent, one resume line from rank 0, exit 143."""
    data, run = tiny_data, tmp_path / "run"
    args = [a for a in TINY_TRAIN]
    args[args.index("--batch-size") + 1] = "4"
    code, out, err = signal_after_first_epoch(["train", data, "--out", run, "--epochs", "30", "--nproc-per-node", "2",
                                               "--workers", "1", *args], run, signal.SIGTERM, timeout=300)
    assert code == 143, out[-2000:] + err[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and out.rstrip().splitlines()[-1] == lines[0]
    assert lines[0].startswith("interrupted by SIGTERM") and "Resume with: vr train" in lines[0]
    assert err.strip() == "", err[-2000:]  # no failure reported by torchrun or the DataLoader workers
    done = int(load_checkpoint(run / "last.pt").epoch)
    assert 1 <= done < 30 and [int(r["epoch"]) for r in _rows(run)] == list(range(1, done + 1))
    assert f"holds epoch {done}" in lines[0] and not list(run.glob(".*.tmp"))


def test_sigterm_and_ctrl_c_stop_gracefully_once_then_at_once():
    """GracefulInterrupt: the first signal asks for a stop (exit status 128 + its number), the
    second raises KeyboardInterrupt; the previous handlers come back afterwards."""
    import os

    before = {s: signal.getsignal(s) for s in D.STOP_SIGNALS}
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with D.GracefulInterrupt() as stop:
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.exit_code == code and stop.signal_name == sig.name
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            assert stop.exit_code == code  # the first signal decides
    assert {s: signal.getsignal(s) for s in D.STOP_SIGNALS} == before
    assert D.GracefulInterrupt().exit_code == 130  # stopped by another rank


def test_launcher_argv_rebuilds_the_config(tmp_path, cli, monkeypatch):
    cfg = TrainConfig(data=tmp_path / "d", model="test_resnet", lr=3e-4, mean=(0.5, 0.25, 0.125), amp=False,
                      clip_grad=1.5, sched="step", out=tmp_path / "my run", nproc_per_node=2, ema=True,
                      ema_decay=0.99, hflip=0.5)
    argv, yaml_only = config_argv(cfg)
    assert yaml_only == {}
    assert "--no-amp" in argv and "--nproc-per-node" in argv and "--workers" not in argv  # defaults omitted
    seen = []
    import vr.train.loop as loop

    monkeypatch.setattr(loop, "run", lambda c: seen.append(c))
    code, _, err = cli("train", *argv)
    assert code == 0, err
    assert seen[0] == cfg
    cmd, _ = D.torchrun_command(cfg, 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("-m", 3):][:3] == ["-m", "vr.cli", "train"]


def test_shard_sampler_takes_every_item_once():
    n, w = 13, 4
    shards = [list(D.ShardSampler(n, r, w)) for r in range(w)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(D.ShardSampler(n, r, w)) for r in range(w)] == [len(s) for s in shards]


def test_sync_bn_on_cpu_is_refused_before_launch(tiny_data, tmp_path, cli):
    code, _, err = cli("train", tiny_data, "--out", tmp_path / "run", "--nproc-per-node", "2", "--sync-bn", *TINY_TRAIN)
    assert code == 2 and "--sync-bn needs CUDA" in err
