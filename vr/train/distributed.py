"""Multi-process training plumbing: torchrun's environment (and its elastic restarts), process
groups, reductions, the unpadded validation shard, Ctrl-C / SIGTERM handling shared by all ranks,
and the ``--nproc-per-node`` launcher (``vr train`` re-running itself through
``python -m torch.distributed.run``).

A process is distributed when torchrun started it (``LOCAL_RANK``/``WORLD_SIZE`` set) with a world
size above one. Everything here degrades to plain single-process behaviour otherwise, so the
training loop has one code path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vr.errors import VrError

# Set by the `vr train --nproc-per-node` launcher for its workers: a private folder where each
# worker leaves its pid (so the launcher can pass Ctrl-C to it: torchrun puts every worker in a
# session of its own) and rank 0 records the exit code of an outcome all ranks agreed on (Ctrl-C,
# non-finite loss). The workers then exit 0, so torchrun reports no failure, and the launcher
# exits with the recorded code.
LAUNCH_DIR_ENV = "VR_TRAIN_LAUNCH_DIR"


class AgreedError(VrError):
    """An error every rank raises together (after a collective), so it is reported once."""


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted the worker group (``--max-restarts``); 0 outside
    torchrun and on the first attempt."""
    if not under_torchrun():
        return 0
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def launched_by_vr() -> bool:
    return bool(os.environ.get(LAUNCH_DIR_ENV)) and under_torchrun()


def register_worker() -> None:
    """Leave this worker's pid where the launcher looks for it."""
    d = os.environ.get(LAUNCH_DIR_ENV)
    if d and under_torchrun():
        from vr.util.io import atomic_write_text

        atomic_write_text(Path(d) / f"pid.{os.environ['LOCAL_RANK']}", f"{os.getpid()}\n")


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    ctrl_group: Any = None  # gloo group for small CPU control messages (the default group under gloo)
    _quieted: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (no-ops in a single process) -------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any_flags(self, flags: list[int]) -> list[int]:
        """Element-wise sum of small integer flags over all ranks (on the CPU control group)."""
        if not self.enabled:
            return flags
        t = torch.tensor(flags, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.ctrl_group)
        return t.tolist()

    def broadcast_module_state(self, module: torch.nn.Module) -> None:
        """Make every rank hold rank 0's parameters and buffers (e.g. BatchNorm running stats,
        which DDP leaves per-rank after the last step), so all ranks evaluate exactly the
        weights rank 0 saves."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                dist.broadcast(t, src=0)

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if any rank raised VrError, all ranks raise it together."""
        if not self.enabled:
            return fn()
        result, err = None, None
        try:
            result = fn()
        except VrError as e:
            err = str(e)
        errs: list = [None] * self.world_size
        dist.all_gather_object(errs, err, group=self.ctrl_group)
        for r, e in enumerate(errs):
            if e:
                raise AgreedError(e if r == 0 else f"rank {r}: {e}")
        return result

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and hand its result (or its VrError) to every rank."""
        if not self.enabled:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box = [("ok", fn())]
            except VrError as e:
                box = [("err", str(e))]
        dist.broadcast_object_list(box, src=0, group=self.ctrl_group)
        kind, value = box[0]
        if kind == "err":
            raise AgreedError(value)
        return value


def resolve_dist_device(device: str, local_rank: int) -> str:
    """The device string for this rank: ``cuda:LOCAL_RANK`` when on GPU, else ``cpu``."""
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "mps":
        raise VrError("distributed training needs CUDA GPUs or the CPU; MPS is not supported")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VrError(f"--device {device} was asked for but no CUDA GPU is visible to torch")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise VrError(f"local rank {local_rank} has no GPU: only {n} visible (lower --nproc-per-node)")
        return f"cuda:{local_rank}"
    return "cpu"


def _init_process_group(ctx: DistContext) -> None:
    """Join torchrun's group. After a restart (--max-restarts) the group's keys go under a prefix
    of this attempt's: torchrun's agent keeps one store for every attempt, and a restarted rank
    could otherwise read the addresses the dead group left there (gloo then connects to a dead
    process, or waits for ever)."""
    attempt = restart_count()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=ctx.backend)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group(backend=ctx.backend, store=dist.PrefixStore(f"vr/attempt_{attempt}", store),
                            rank=ctx.rank, world_size=ctx.world_size)


def setup(device: str) -> tuple[DistContext, str]:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU); silence consoles off rank 0.

    Returns the context and the device string this rank trains on.
    """
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(), device
    ctx = DistContext(world_size=int(os.environ["WORLD_SIZE"]), rank=int(os.environ["RANK"]),
                      local_rank=int(os.environ["LOCAL_RANK"]),
                      local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    dev = resolve_dist_device(device, ctx.local_rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(ctx.local_rank)
        ctx.backend = "nccl"
    else:
        ctx.backend = "gloo"
    if not dist.is_initialized():
        _init_process_group(ctx)
    # Control messages (flags, errors, small objects) ride on gloo so they never touch the GPU.
    ctx.ctrl_group = dist.new_group(backend="gloo") if ctx.backend != "gloo" else None
    if not ctx.is_main:
        from vr.util.console import console, err_console

        console.quiet = err_console.quiet = True
        ctx._quieted = True
    return ctx, dev


def unquiet(ctx: DistContext) -> None:
    if ctx._quieted:
        from vr.util.console import console, err_console

        console.quiet = err_console.quiet = False
        ctx._quieted = False


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Leave the process group. After a failure it is left to process exit: destroying a group
    whose peers are gone can block."""
    unquiet(ctx)
    if ctx.enabled and clean and dist.is_initialized():
        dist.destroy_process_group()


def write_status(code: int) -> None:
    d = os.environ.get(LAUNCH_DIR_ENV)
    if d:
        from vr.util.io import atomic_write_text

        atomic_write_text(Path(d) / "status", f"{code}\n")


class ShardSampler(Sampler[int]):
    """Rank r takes items r, r + W, r + 2W, ... of the dataset: every item exactly once over all
    ranks, no padding (DistributedSampler pads with duplicates, which would bias val metrics)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


# The signals that stop training gracefully: Ctrl-C, and SIGTERM, which schedulers send before
# preempting and torchrun sends its workers when it shuts them down.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_exit_code(signum: int | None) -> int:
    """The shell's status for a process stopped by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


class GracefulInterrupt:
    """First Ctrl-C or SIGTERM: ask the loop to stop at the next step boundary (all ranks stop
    together and the last completed epoch stays in last.pt). A second one: KeyboardInterrupt
    right away. ``exit_code`` follows the first signal (130 if the stop came from another rank)."""

    def __init__(self):
        self.count = 0
        self.signum: int | None = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handler(self, signum, frame):
        self.count += 1
        self.signum = self.signum or signum
        if self.count >= 2:
            raise KeyboardInterrupt

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def ignore_stop_signals_in_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C and SIGTERM are for the training process, which stops
    the loader itself; a worker dying on them (torchrun signals each worker's whole process group)
    would break the graceful stop. A worker still exits when the training process is gone."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


ignore_sigint_in_worker = ignore_stop_signals_in_worker  # the name vr.train.data uses


# --- the `vr train --nproc-per-node N` launcher ----------------------------------------------

def _child_setup() -> None:  # pragma: no cover - runs in the forked child before exec
    # torchrun ignores SIGINT (the launcher passes Ctrl-C to the workers itself) and gets SIGTERM
    # if the launcher dies, so a killed `vr train` leaves no orphaned workers behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass


def torchrun_command(cfg, nproc: int) -> tuple[list[str], dict]:
    from vr.config import config_argv

    argv, yaml_only = config_argv(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--signals-to-handle", "SIGTERM,SIGHUP,SIGQUIT", "-m", "vr.cli", "train", *argv]
    return cmd, yaml_only


def _worker_pids(d: Path) -> list[int]:
    pids = []
    for f in d.glob("pid.*"):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def launch(cfg) -> int:
    """Run ``cfg`` as ``nproc_per_node`` DDP processes under torchrun; return the exit code.

    Ctrl-C and SIGTERM reach the launcher only (torchrun runs in a session of its own) and are
    passed to each worker, which stop together after the current step; rank 0 prints the resume
    line and the launcher exits 130 (Ctrl-C) or 143 (SIGTERM). A second signal stops the workers
    at once, a third kills them.
    """
    nproc = cfg.nproc_per_node
    cmd, yaml_only = torchrun_command(cfg, nproc)
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    with tempfile.TemporaryDirectory(prefix="vr-ddp-") as tmp:
        d = Path(tmp)
        env[LAUNCH_DIR_ENV] = str(d)
        if yaml_only:
            import yaml

            extra = d / "extra.yaml"
            extra.write_text(yaml.safe_dump(yaml_only))
            cmd += ["--config", str(extra)]
        from vr.util.console import info

        info(f"launching {nproc} processes: torchrun --standalone --nproc-per-node {nproc} -m vr.cli train ...")
        interrupts: list[int] = []
        try:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_child_setup)
        except OSError as e:
            raise VrError(f"cannot start torchrun: {e}") from e

        def _kill(pid: int, sig: int) -> None:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        def on_signal(signum, frame):
            interrupts.append(signum)
            workers = _worker_pids(d)
            if len(interrupts) >= 3:
                for pid in workers:
                    _kill(pid, signal.SIGKILL)
                _kill(proc.pid, signal.SIGKILL)
            elif workers:
                for pid in workers:
                    _kill(pid, signum)
            else:  # still starting up: nothing to lose, let torchrun stop them
                _kill(proc.pid, signal.SIGTERM)

        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s_: signal.signal(s_, on_signal) for s_ in STOP_SIGNALS}
        try:
            rc = proc.wait()
        finally:
            for s_, h in old.items():
                signal.signal(s_, h)
        status = d / "status"
        if status.is_file():
            try:
                return int(status.read_text().strip())
            except ValueError:
                pass
        if interrupts and rc != 0:
            return signal_exit_code(interrupts[0])
        return 1 if rc < 0 else rc
