"""Crash safety and the other training options: kill -9 then --resume, Ctrl-C, non-finite loss,
EMA, gradient accumulation and clipping, early stopping, top-k checkpoints, torch.compile."""

from __future__ import annotations

import csv
import shlex
import signal
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, signal_after_first_epoch, train_parts
from vr.data.dataset import ImageDataset
from vr.data.folders import scan_image_folder
from vr.models.checkpoint import load_checkpoint
from vr.models.factory import model_from_checkpoint

FAST = [*TINY_TRAIN, "--no-tensorboard"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in _rows(run)]


def _eval_loss(ck, data: Path) -> float:
    model = model_from_checkpoint(ck)
    ds = ImageDataset(scan_image_folder(data / "val", classes=ck.classes).samples, ck.preprocess)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).item()


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_data, tmp_path, cli):
    epochs = 6
    opts = ["--epochs", epochs, "--ema", "--ema-decay", "0.8", "--aug", "light", "--hflip", "0.5", *FAST]
    ref = tmp_path / "ref"
    assert cli("train", tiny_data, "--out", ref, *opts)[0] == 0

    run = tmp_path / "run"
    # --workers 1: the result must not depend on it
    code, _, _ = signal_after_first_epoch(["train", tiny_data, "--out", run, *opts, "--workers", "1"], run,
                                          signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = load_checkpoint(run / "last.pt").epoch
    assert 1 <= killed_at < epochs, "the kill came too late to test anything"
    assert _epochs(run) in (list(range(1, killed_at + 1)), list(range(1, killed_at)))  # csv may lag last.pt
    assert not list(run.glob(".*.tmp"))

    code, out, err = cli("train", tiny_data, "--config", run / "config.yaml", "--resume")
    assert code == 0, err
    assert f"resuming {run} after epoch {killed_at}" in out
    assert _epochs(run) == list(range(1, epochs + 1))  # no epoch repeated or skipped

    # Exact resume: same batches, augmentations, optimizer/schedule/EMA state -> same history and weights.
    for a, b in zip(_rows(ref), _rows(run)):
        for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), (a["epoch"], k)
    last_ref, last = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    assert last.epoch == epochs
    for k, v in last_ref.state_dict.items():
        torch.testing.assert_close(last.state_dict[k], v, rtol=1e-4, atol=1e-5)
    for k, v in last_ref.train_state["ema"].items():
        torch.testing.assert_close(last.train_state["ema"][k], v, rtol=1e-4, atol=1e-5)
    assert load_checkpoint(run / "best.pt").epoch == load_checkpoint(ref / "best.pt").epoch


def test_crash_between_last_pt_and_metrics_csv_neither_repeats_nor_skips(tiny_data, tmp_path, cli):
    """The worst instant for a kill: last.pt holds epoch 2 but metrics.csv still ends at 1."""
    from vr.train.fit import fit

    class Crash(BaseException):
        pass

    run = tmp_path / "run"
    parts = train_parts(tiny_data, "--out", run, "--epochs", "3", *FAST)
    real_log = parts.logger.log

    def log(row):
        if row["epoch"] == 2:
            raise Crash
        real_log(row)

    parts.logger.log = log
    with pytest.raises(Crash):
        fit(parts)
    assert load_checkpoint(run / "last.pt").epoch == 2 and _epochs(run) == [1]
    code, _, err = cli("train", tiny_data, "--config", run / "config.yaml", "--resume")
    assert code == 0, err
    assert _epochs(run) == [1, 2, 3]
    hist = load_checkpoint(run / "last.pt").train_state["history"]
    assert float(_rows(run)[1]["val_loss"]) == pytest.approx(hist[1]["val_loss"], rel=1e-5)


def test_ctrl_c_keeps_last_pt_prints_one_resume_line_that_works(tiny_data, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = signal_after_first_epoch(["train", tiny_data, "--out", run, "--epochs", "5", "--workers", "1",
                                               *FAST], run, signal.SIGINT)
    assert code == 130, out[-2000:] + err[-2000:]
    assert err.strip() == "", err  # no traceback, no second message
    last_line = out.rstrip().splitlines()[-1]
    assert last_line.startswith("interrupted") and "Resume with: vr train" in last_line
    done = load_checkpoint(run / "last.pt").epoch
    assert done >= 1 and f"holds epoch {done}" in last_line and _epochs(run) == list(range(1, done + 1))

    # the printed command resumes the run to its end
    resume = shlex.split(last_line.split("Resume with: ", 1)[1])
    assert resume[0] == "vr"
    code, out, err = cli(*resume[1:])
    assert code == 0, err
    assert _epochs(run) == [1, 2, 3, 4, 5] and load_checkpoint(run / "last.pt").epoch == 5


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, cli):
    from vr.errors import VrError
    from vr.train.fit import fit

    run = tmp_path / "run"
    parts = train_parts(tiny_data, "--out", run, "--epochs", "3", *FAST)
    ce, calls = parts.step.criterion, {"n": 0}

    def loss(logits, y):
        if torch.is_grad_enabled():  # training steps only: 36 images / batch 8 = 4 per epoch
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, step 2
                return ce(logits, y) * float("nan")
        return ce(logits, y)

    parts.step.criterion = loss
    with pytest.raises(VrError) as e:
        fit(parts)
    err = str(e.value)
    assert "loss became nan or inf at epoch 2 (by step 2 of 4)" in err and "keeps epoch 1" in err
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 1 and all(torch.isfinite(v).all() for v in last.state_dict.values() if v.is_floating_point())
    assert _epochs(run) == [1] and load_checkpoint(run / "best.pt").epoch == 1

    # a learning rate that blows up in the first epoch: nothing to keep, said so
    code, _, err = cli("train", tiny_data, "--out", tmp_path / "r2", "--epochs", "2", *FAST, "--lr", "1e30")
    assert code == 2 and "at epoch 1" in err and "no checkpoint" in err
    assert not (tmp_path / "r2" / "last.pt").exists()


def test_ema_accum_top_k_and_patience(tiny_data, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli("train", tiny_data, "--out", run, "--epochs", "12", "--ema", "--ema-decay", "0.5",
                         "--accum-steps", "3", "--clip-grad", "1.0", "--save-top-k", "2", "--patience", "2", *FAST)
    assert code == 0, err
    rows = _rows(run)
    n = len(rows)
    assert "early stop" in out and n < 12  # colour classes reach val acc 1.0 at once, then cannot improve
    best_epoch = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))["epoch"]
    assert n == int(best_epoch) + 2
    last = load_checkpoint(run / "last.pt")
    # 4 batches per epoch, accumulated 3 + 1: 2 optimizer steps per epoch
    assert last.train_state["schedule"]["step_num"] == 2 * n
    # best.pt and the top-k files hold the EMA weights, which are what was validated
    best = load_checkpoint(run / "best.pt")
    assert _eval_loss(best, tiny_data) == pytest.approx(float(rows[best.epoch - 1]["val_loss"]), rel=1e-4)
    ema, raw = last.train_state["ema"], last.state_dict
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    tops = sorted(f.name for f in run.glob("epoch*.pt"))
    ranked = sorted(rows, key=lambda r: (-float(r["val_acc"]), int(r["epoch"])))[:2]
    assert tops == sorted(f"epoch{int(r['epoch']):03d}.pt" for r in ranked)
    for f in tops:
        ck = load_checkpoint(run / f)
        assert ck.train_state is None
        assert _eval_loss(ck, tiny_data) == pytest.approx(float(rows[ck.epoch - 1]["val_loss"]), rel=1e-4)

    # resuming a run that stopped early with the same patience stops again at once
    code, out, err = cli("train", tiny_data, "--config", run / "config.yaml", "--resume")
    assert code == 0 and "early stop" in out and len(_rows(run)) == n


def _tiny_step(clip=None):
    from vr.train.step import TrainStep
    from vr.train.optim import LRSchedule
    from vr.train.config import TrainConfig
    from vr.util.device import resolve_runtime

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    cfg = TrainConfig(data="x", sched="none", warmup_epochs=0, lr=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    rt = resolve_runtime("cpu", False, verbose=False)
    step = TrainStep(model, model, opt, LRSchedule(opt, cfg, 10), torch.amp.GradScaler("cpu", enabled=False),
                     torch.nn.CrossEntropyLoss(), rt, clip_grad=clip)
    return model, step


def test_accumulation_equals_one_big_batch_and_clipping_bounds_the_update():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 3, (8,), generator=g)
    a, step_a = _tiny_step()
    step_a(x, y)
    b, step_b = _tiny_step()
    step_b(x[:4], y[:4], update=False, div=2)
    step_b(x[4:], y[4:], update=True, div=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert step_b.seen == 8 and step_b.schedule.step_num == 1

    before = [p.detach().clone() for p in _tiny_step()[0].parameters()]
    c, step_c = _tiny_step(clip=1e-3)
    step_c(x, y)
    delta = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(c.parameters(), before)))
    assert delta.item() <= 0.5 * 1e-3 * (1 + 1e-4)  # lr x max norm
    unclipped = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(a.parameters(), before)))
    assert unclipped.item() > 10 * delta.item()


@pytest.mark.slow
def test_compile_trains(tiny_data, tmp_path, cli):
    # torch.compile on CPU needs a C++ compiler and minutes of compiling; the result must train.
    run = tmp_path / "run"
    code, out, err = cli("train", tiny_data, "--out", run, "--epochs", "2", "--compile", *FAST)
    assert code == 0, err
    assert _epochs(run) == [1, 2] and float(_rows(run)[-1]["val_acc"]) >= 0.9
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(run / "best.pt").state_dict)


def test_resume_keeps_the_runs_own_defaults_when_today_s_differ(tiny_data, tmp_path, cli, monkeypatch):
    """A run is resumed with the lr / EMA / memory format it started with, even when the defaults
    of the vr that resumes it differ (a new version) and the resume line leaves them unset;
    options given on the resume line still win."""
    import yaml

    from vr.models.checkpoint import load_checkpoint
    from vr.train import config as C

    run = tmp_path / "run"
    flags = [*TINY_TRAIN, "--no-tensorboard"]
    code, _, err = cli("train", tiny_data, "--out", run, "--epochs", "1", *flags)
    assert code == 0, err
    first = yaml.safe_load((run / "config.yaml").read_text())
    assert (first["ema"], first["backbone_lr_mult"]) == (False, 1.0)
    # the next version's defaults: an EMA and a gentler backbone for every run
    monkeypatch.setattr(C, "SCRATCH", {**C.SCRATCH, "ema": True, "backbone_lr_mult": 0.5})
    code, _, err = cli("train", tiny_data, "--out", run, "--epochs", "2", "--resume", *flags)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["ema"], saved["backbone_lr_mult"], saved["ema_decay"]) == (False, 1.0, first["ema_decay"])
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 2 and not last.train_state.get("ema")
    assert "backbone_lr" not in (run / "metrics.csv").read_text()
    code, _, err = cli("train", tiny_data, "--out", run, "--epochs", "3", "--resume", "--ema", *flags)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["ema"] is True  # given: wins
