"""torchrun as users run it: two nodes with c10d rendezvous, elastic restarts (``--max-restarts``)
that resume by themselves, and SIGTERM (what a scheduler sends before preempting) handled like
Ctrl-C. The multi-process cases are real torchrun runs on 127.0.0.1 (gloo) and are `slow`."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN, signal_after_first_epoch, train_parts, write_image_folder
from vr.models.checkpoint import load_checkpoint

EPOCHS = 3
# --batch-size 4 per process: 2 processes take the global batch 8 of the one-process tests.
DDP_TRAIN = [*TINY_TRAIN[:TINY_TRAIN.index("--batch-size")], "--batch-size", "4",
             *TINY_TRAIN[TINY_TRAIN.index("--batch-size") + 2:], "--epochs", str(EPOCHS)]
ENV = dict(os.environ, OMP_NUM_THREADS="1")  # two processes share two cores
NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_run(ref: Path, run: Path, ckpt: str) -> None:
    """Same metrics.csv rows (all but the wall time) and the same weights in ``ckpt``."""
    a, b = _rows(ref), _rows(run)
    assert [r["epoch"] for r in b] == [r["epoch"] for r in a] == [str(e) for e in range(1, EPOCHS + 1)]
    for ra, rb in zip(a, b):
        for k in NUMBERS:
            assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-5, abs=1e-7), (ra["epoch"], k)
    ca, cb = load_checkpoint(ref / ckpt), load_checkpoint(run / ckpt)
    assert ca.epoch == cb.epoch
    for k, v in ca.state_dict.items():
        torch.testing.assert_close(cb.state_dict[k], v, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, out_dir: Path, name: str) -> subprocess.Popen:
    """`torchrun ARGS` in its own session; stdout/stderr go to files (two agents at once)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *map(str, args)],
                            stdout=open(out_dir / f"{name}.out", "w"), stderr=open(out_dir / f"{name}.err", "w"),
                            env=ENV, start_new_session=True)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=max(1.0, timeout)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _log(out_dir: Path, name: str) -> tuple[str, str]:
    return (out_dir / f"{name}.out").read_text(), (out_dir / f"{name}.err").read_text()


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    """tiny_data's layout (12 train / 4 val images per class), shared by this module's runs."""
    root = tmp_path_factory.mktemp("elastic") / "data"
    write_image_folder(root / "train", 12, seed=0)
    write_image_folder(root / "val", 4, seed=1)
    return root


@pytest.fixture(scope="module")
def one_node_run(ddp_data) -> Path:
    """The reference: one node, two processes (`torchrun --standalone --nproc-per-node 2`)."""
    logs = ddp_data.parent
    run = logs / "one-node"
    p = _torchrun("--standalone", "--nproc-per-node", 2, "-m", "vr.cli", "train", ddp_data, "--out", run,
                  *DDP_TRAIN, out_dir=logs, name="one-node")
    assert _finish([p], 300) == [0], _log(logs, "one-node")
    return run


@pytest.mark.slow
def test_two_node_torchrun_equals_one_node_two_processes(ddp_data, one_node_run, tmp_path):
    """The README's multi-node command, as two agents on 127.0.0.1 sharing one run folder."""
    run, port = tmp_path / "two-node", _free_port()
    agents = [_torchrun("--nnodes", 2, "--nproc-per-node", 1, "--max-restarts", 3, "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vr-two-node",
                        "-m", "vr.cli", "train", ddp_data, "--out", run, *DDP_TRAIN, out_dir=tmp_path, name=f"node{i}")
              for i in range(2)]
    codes = _finish(agents, 300)
    logs = [_log(tmp_path, f"node{i}") for i in range(2)]
    assert codes == [0, 0], logs
    outs = [o for o, _ in logs]
    # c10d assigns the ranks: whichever agent got rank 0 prints, the other is silent
    assert sorted(o.count("done:") for o in outs) == [0, 1], outs
    main = next(o for o in outs if "done:" in o)
    assert "DDP: 2 processes (gloo)" in main and "torchrun restart" not in main
    assert not any("node_rank is only used" in e for _, e in logs)  # the README command draws no warning
    assert load_checkpoint(run / "last.pt").train_state["world_size"] == 2
    _assert_same_run(one_node_run, run, "best.pt")
    _assert_same_run(one_node_run, run, "last.pt")


def _workers(agent: int) -> dict[int, int]:
    """{rank: pid} of the `vr.cli train` workers a torchrun agent has started (from /proc)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env and "vr.cli" in (d / "cmdline").read_text():
            found[int(env["RANK"])] = int(d.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_kill_9_a_worker_torchrun_restarts_and_the_run_resumes_exactly(ddp_data, one_node_run, tmp_path):
    """`torchrun --max-restarts 1`: rank 0 killed mid-epoch; the restarted group resumes from
    last.pt by itself, redoes the epoch in progress, and ends as the uninterrupted run did."""
    run = tmp_path / "run"
    agent = _torchrun("--standalone", "--max-restarts", 1, "--monitor-interval", "0.1", "--nproc-per-node", 2,
                      "-m", "vr.cli", "train", ddp_data, "--out", run, *DDP_TRAIN, out_dir=tmp_path, name="agent")
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.csv").exists():
            assert agent.poll() is None, _log(tmp_path, "agent")
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        pids = _workers(agent.pid)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[0], signal.SIGKILL)
        killed_after = len(_rows(run))
    finally:
        code = _finish([agent], 300)[0]
    out, err = _log(tmp_path, "agent")
    assert code == 0, out[-3000:] + err[-3000:]
    assert killed_after < EPOCHS, "the kill came too late to test anything"
    assert out.count("torchrun restart 1: continuing the run in") == 1, out
    resumed = re.findall(r"resuming \S+ after epoch (\d+)", out)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < EPOCHS, out
    assert out.count("done:") == 1
    _assert_same_run(one_node_run, run, "last.pt")
    _assert_same_run(one_node_run, run, "best.pt")


def test_torchrun_restart_resumes_the_same_run_and_refuses_another(tiny_data, tmp_path, cli, monkeypatch):
    """What a restarted worker sees (TORCHELASTIC_RESTART_COUNT=1, one process): a last.pt of
    the same settings is continued without --resume, in one line; other settings are one error."""
    from vr.train.fit import fit

    class Crash(BaseException):
        pass

    run = tmp_path / "run"
    args = ["train", tiny_data, "--out", run, "--epochs", "2", *TINY_TRAIN]
    parts = train_parts(*args[1:])
    real_log = parts.logger.log

    def log(row):
        real_log(row)
        if row["epoch"] == 1:
            raise Crash  # the process dies after epoch 1

    parts.logger.log = log
    with pytest.raises(Crash):
        fit(parts)
    assert [r["epoch"] for r in _rows(run)] == ["1"]

    # not a restart: the folder is refused as before
    code, _, err = cli(*args)
    assert code == 2 and "already holds a run" in err

    for k, v in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                 "TORCHELASTIC_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(k, v)
    code, out, err = cli(*args, "--lr", "5e-3")  # the last --lr wins
    assert code == 2 and out.strip() == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "torchrun restart 1:" in lines[0] and "lr: 0.01 there, 0.005 now" in lines[0], err

    code, out, err = cli(*args)
    assert code == 0, err
    assert out.count("torchrun restart 1: continuing the run in") == 1
    assert "resuming" in out and "after epoch 1" in out
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"] and load_checkpoint(run / "last.pt").epoch == 2
    assert "resume: false" in (run / "config.yaml").read_text()


def test_sigterm_stops_like_ctrl_c_exit_143(tiny_data, tmp_path, cli):
    """A scheduler's SIGTERM after the first epoch: last.pt consistent, one resume line that
    works, exit 143 (128 + 15)."""
    import shlex

    run = tmp_path / "run"
    code, out, err = signal_after_first_epoch(["train", tiny_data, "--out", run, "--epochs", "3", "--workers", "1",
                                               *TINY_TRAIN], run, signal.SIGTERM)
    assert code == 143, out[-2000:] + err[-2000:]
    assert err.strip() == "", err
    last_line = out.rstrip().splitlines()[-1]
    assert last_line.startswith("interrupted by SIGTERM") and "Resume with: vr train" in last_line
    done = load_checkpoint(run / "last.pt").epoch
    assert done >= 1 and f"holds epoch {done}" in last_line
    assert [int(r["epoch"]) for r in _rows(run)] == list(range(1, done + 1))
    assert not list(run.glob(".*.tmp"))
    code, _, err = cli(*shlex.split(last_line.split("Resume with: ", 1)[1])[1:])
    assert code == 0, err
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2, 3]
