"""Shared fixtures: tiny real image folders written in tmp_path, and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MPLBACKEND", "Agg")

# A suite started in the background (nohup, `cmd &`) inherits SIGINT ignored, and so would every
# vr process it starts (exec keeps SIG_IGN): the Ctrl-C tests would then wait on a process that
# cannot be interrupted. Python's own handler here means SIG_DFL in the children (exec resets it).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """vr's cache (vr.util.cache) in a folder of this session, never the user's ~/.cache/vr; the
    CLI runs in subprocesses inherit it."""
    old = os.environ.get("VR_CACHE_DIR")
    os.environ["VR_CACHE_DIR"] = str(tmp_path_factory.mktemp("vr-cache"))
    yield
    if old is None:
        os.environ.pop("VR_CACHE_DIR", None)
    else:
        os.environ["VR_CACHE_DIR"] = old

# Colour-coded classes: a tiny model separates them in a couple of epochs, so accuracy checks
# mean something. Numeric names check the natural class order ("2" before "10").
CLASS_COLOURS = {"1": (200, 40, 40), "2": (40, 180, 60), "10": (50, 60, 200)}


def colour_image(rng: np.random.Generator, colour, size) -> Image.Image:
    w, h = size
    base = np.array(colour, dtype=np.float32)
    arr = base + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def write_image_folder(root: Path, per_class: int, seed: int = 0, sizes=((40, 40), (48, 36), (36, 52))) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(rng, colour, sizes[i % len(sizes)]).save(d / f"img{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """tmp/data/{train,val}/{1,2,10}/*.png: 12 train and 4 val images per class."""
    root = tmp_path / "data"
    write_image_folder(root / "train", 12, seed=0)
    write_image_folder(root / "val", 4, seed=1)
    return root


@pytest.fixture
def cli(capsys):
    """Run `vr ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from vr.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def run_vr(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run `python -m vr.cli ARGS...` in a fresh process (sees exit codes such as SIGILL)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "vr.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


TINY_TRAIN = ["--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--workers", "0",
              "--batch-size", "8", "--lr", "1e-2", "--warmup-epochs", "0"]


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the same thread count as subprocesses started with
    OMP_NUM_THREADS=1 (so results compare bit for bit), and no spin-waiting between two threads
    on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def signal_after_first_epoch(args, run: Path, sig: int, timeout: float = 180) -> tuple[int, str, str]:
    """Start `python -m vr.cli ARGS...` (one torch thread), wait until RUN/metrics.csv shows a
    finished epoch, send ``sig`` to that process alone (as a terminal's Ctrl-C or a kill -9 would
    reach it) and return (exit status, stdout, stderr). Its whole process group goes with a
    SIGKILL, and with any failure of the test, so no worker outlives it."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "vr.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (Path(run) / "metrics.csv").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        p.send_signal(sig)
        if sig == signal.SIGKILL:  # DataLoader workers hold the pipes open until they notice
            _kill_group(p.pid)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            _kill_group(p.pid)
    return p.returncode, out, err


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # every process of the group has already gone
        pass


def train_config(*args):
    """`vr train ARGS` parsed by the real CLI into its TrainConfig (nothing trains)."""
    import vr.train.loop as loop
    from vr.cli import main

    got, real = [], loop.run
    loop.run = got.append
    try:
        code = main(["train", *map(str, args)])
    finally:
        loop.run = real
    assert code == 0 and len(got) == 1, code
    return got[0]


def train_parts(*args):
    """The parts of the run `vr train ARGS` would train (vr.train.setup.TrainRun), built and
    checked but not trained: a test changes a part, then calls vr.train.fit.fit(run)."""
    from vr.train import distributed as D
    from vr.train.setup import setup

    cfg = train_config(*args)
    return setup(cfg, D.DistContext(), cfg.device)
