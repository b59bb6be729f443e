#!/usr/bin/env python
"""Inference (and optionally training) throughput of timm backbones, every backend side by side.

What it measures, for each ``--models NAME@SIZE`` (timm, random init, ``--classes`` outputs, the
same weights in every row) at ``--batch-size`` images of SIZE x SIZE:

* ``torch-fp32``            eager PyTorch, float32, NCHW, under ``torch.inference_mode`` (the baseline;
                            PyTorch's default math flags, printed in the header: cuDNN convolutions
                            may use TF32 unless ``--strict-fp32``);
* ``torch-bf16-cl``         the same + ``torch.autocast(bfloat16)`` + channels_last (GPUs with bf16 only:
                            bf16 autocast is never used on the CPU, where oneDNN's bf16 kernels can
                            kill the process with SIGILL);
* ``torch-bf16-cl-compile`` the same + ``torch.compile`` (``--compile-mode``); the compile time is timed
                            apart (``setup_s``) and left out of the numbers; ``--no-compile`` skips it;
* ``ort-cuda``/``ort-trt``  vr's own exported graph (``vr export``: uint8 images in, preprocessing, softmax
                            inside; fp32 for ort-cuda, fp16 backbone for ort-trt) run by vr's runtime
                            layer (``vr.runtime.load.load_predictor``, the predictor ``vr eval`` uses)
                            on ONNX Runtime's CUDA / TensorRT execution provider; host-device copies
                            of the uint8 batch and the probabilities are inside the timing; a row
                            counts only if the session runs on the provider asked for;
* ``trt-fp16``/``trt-int8`` the same graph at --precision fp16 / int8 (Q/DQ calibrated on synthetic
                            images: its speed is real, its accuracy means nothing), built into a
                            strongly typed TensorRT engine by ``vr export --trt`` and run by vr's
                            TensorRT predictor. The export gate is relaxed (speed only: random
                            weights); UNVERIFIED: no TensorRT has been available to run these rows;
* ``--train``               training images/s of the first model at its size on random data, 1 GPU:
                            ``train-vr`` is vr's own training step (``vr.train.step.TrainStep``: AMP as
                            ``vr train`` picks it, bf16 autocast where supported, GradScaler only for
                            fp16; channels_last; vr's fused AdamW; loss/accuracy bookkeeping on the
                            device), ``train-plain`` the plain loop (autocast + AdamW(fused) +
                            zero_grad/backward/step) as in benchmarks/train_throughput.py.

Timing: ``--warmup`` untimed batches, then ``--iters`` timed batches, each wrapped in
``torch.cuda.synchronize()`` (device-wide, so ONNX Runtime's and TensorRT's own streams count) and
a wall clock; the median (p50) batch time is reported and images/s = batch / p50. Speed-up is
against ``torch-fp32`` of the same model and size. The issue's goal: TensorRT FP16 >= 5x eager
FP32 (the summary line says met / not met / not measured).

Robustness: every row runs in its own try block; a failure gives a row marked FAILED with a
one-line reason (``--debug`` prints the traceback) and the run goes on. A backend that cannot run
(no CUDA, no bf16, package missing, provider not active) gives a row marked skipped with the
reason. Rows run cheapest-first (fp32, bf16, trt-fp16, training, compile, ORT, int8) under an
overall ``--budget-s`` and a per-row ``--row-timeout-s``; rows left when the budget is spent are
skipped saying so. The JSON (``--out``) is rewritten atomically (temp file + os.replace) after every
row, so a run killed at its time limit still leaves the rows it finished.

On the lent GPU machine (one H100, a bare image with torch, timm, onnx and the CPU build of
onnxruntime, but no onnxruntime-gpu and no tensorrt; nothing can be downloaded there): the
onnxruntime-gpu wheel (~256 MB) and the tensorrt wheels (far larger) do not fit in the 64 MiB that
one call may carry, so only the torch rows (and --train) are expected to run there; the ORT and
TensorRT rows then say "skipped: onnxruntime-gpu not installed" / "tensorrt not installed". Where
those packages are present they run as well. vr itself need not be installed: the repo root is put
on sys.path. Run it in one call, e.g. (not yet timed on a GPU; expect a few minutes, mostly torch.compile):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_throughput.py --models resnet152@512,seresnext101d_32x8d@224 \\
        --batch-size 32 --train --budget-s 480 --out "$OUT/gpu_throughput.json"

or through scripts/gpu_check.sh. Smoke test on a CPU (GPU-only rows are skipped with reasons):

    python benchmarks/gpu_throughput.py --device cpu --models test_resnet@64 --batch-size 4 --iters 3 \\
        --train --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

INFER_BACKENDS = ("torch-fp32", "torch-bf16-cl", "torch-bf16-cl-compile", "ort-cuda", "ort-trt", "trt-fp16",
                  "trt-int8")
TRAIN_BACKENDS = ("train-vr", "train-plain")
# Measured in this order (cheap and most wanted first) so that a spent budget costs the rest.
PRIORITY = ("torch-fp32", "torch-bf16-cl", "trt-fp16", "train-vr", "train-plain", "torch-bf16-cl-compile",
            "ort-cuda", "ort-trt", "trt-int8")
GOAL_BACKEND, GOAL_SPEEDUP = "trt-fp16", 5.0


class Skip(Exception):
    """A backend that cannot run here; the message is the reason shown in the row."""


class RowTimeout(Exception):
    pass


@dataclass
class Row:
    model: str
    size: int
    backend: str
    status: str = "ok"  # ok | skipped | failed
    images_per_s: float | None = None
    p50_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    speedup_vs_fp32: float | None = None
    setup_s: float | None = None  # export / compile / engine build / first run, excluded from the timings
    max_rel_diff: float | None = None  # max |out - fp32 eager out| / max |fp32 eager out|, same input
    note: str = ""
    reason: str = ""


# ----------------------------------------------------------------------------------- helpers

def one_line(e: BaseException, limit: int = 240) -> str:
    msg = " ".join(str(e).split()) if str(e).strip() else ""
    first = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_models(spec: str) -> list[tuple[str, int | None]]:
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, size = item.partition("@")
        if size and not size.isdigit():
            raise SystemExit(f"error: --models: bad size in {item!r} (want NAME@PIXELS, e.g. resnet152@512)")
        out.append((name, int(size) if size else None))
    if not out:
        raise SystemExit("error: --models is empty")
    return out


def is_cuda(dev: torch.device) -> bool:
    return dev.type == "cuda"


def sync(dev: torch.device) -> None:
    if is_cuda(dev):
        torch.cuda.synchronize(dev)


def time_batches(fn, dev: torch.device, iters: int, warmup: int) -> list[float]:
    """Milliseconds per call of fn, each call between two device-wide synchronisations."""
    for _ in range(warmup):
        fn()
    sync(dev)
    ms = []
    for _ in range(iters):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def fill_timing(row: Row, ms: list[float], batch: int) -> None:
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]  # noqa: E731
    row.p50_ms = statistics.median(s)
    row.p10_ms, row.p90_ms, row.mean_ms = q(0.1), q(0.9), statistics.fmean(s)
    row.images_per_s = batch * 1e3 / row.p50_ms


def rel_diff(out: torch.Tensor, ref: torch.Tensor | None) -> float | None:
    if ref is None:
        return None
    out, ref = out.detach().float().cpu(), ref.float()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def row_timeout(seconds: float):
    """Raise RowTimeout in the main thread after ``seconds`` (POSIX; elsewhere no limit). A call
    stuck inside one native op is interrupted only when that op returns."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise RowTimeout(f"row took longer than --row-timeout-s {seconds:.0f}")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def pkg_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args, dev: torch.device):
        self.args, self.dev = args, dev
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_throughput_"))
        self._onnx: dict[tuple[str, int], Path | BaseException] = {}
        self._ref: dict[tuple[str, int], torch.Tensor] = {}
        self._inputs: dict[int, torch.Tensor] = {}

    # -- shared pieces
    def model(self, name: str) -> torch.nn.Module:
        import timm

        torch.manual_seed(self.args.seed)  # the same weights in every row
        return timm.create_model(name, pretrained=False, num_classes=self.args.classes).eval()

    def input_cpu(self, size: int) -> torch.Tensor:
        if size not in self._inputs:
            g = torch.Generator().manual_seed(self.args.seed + 1)
            self._inputs[size] = torch.randn(self.args.batch_size, 3, size, size, generator=g)
        return self._inputs[size]

    def reference(self, name: str, size: int) -> torch.Tensor | None:
        """The fp32 eager output on the fixed input (from the torch-fp32 row), for the diff column."""
        return self._ref.get((name, size))

    def need_cuda(self, what: str) -> None:
        if not is_cuda(self.dev):
            raise Skip(f"{what} needs a CUDA GPU (--device {self.dev.type})")

    def need_bf16(self) -> None:
        if not is_cuda(self.dev):
            raise Skip("bf16 autocast is never used on the CPU (oneDNN bf16 kernels can SIGILL on these CPUs)")
        if not torch.cuda.is_bf16_supported():
            raise Skip(f"{torch.cuda.get_device_name(self.dev)} lacks bf16")

    # -- torch rows
    def run_torch(self, row: Row, name: str, size: int, bf16: bool, compile_: bool) -> None:
        if bf16:
            self.need_bf16()
        if compile_:
            if self.args.no_compile:
                raise Skip("--no-compile")
            if not hasattr(torch, "compile"):
                raise Skip(f"torch {torch.__version__} has no torch.compile")
        dev = self.dev
        m = self.model(name).to(dev)
        x = self.input_cpu(size).to(dev)
        if bf16:
            m = m.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        fwd = m
        if compile_:
            mode = None if self.args.compile_mode == "default" else self.args.compile_mode
            fwd = torch.compile(m, mode=mode)
            row.note = f"compile mode={self.args.compile_mode}"

        def step():
            with torch.inference_mode(), ctx():
                return fwd(x)

        try:
            t0 = time.perf_counter()
            out = step()  # the compile, when there is one
            sync(dev)
            first = time.perf_counter() - t0
            if compile_:
                row.setup_s = first
            if not bf16 and not compile_:
                self._ref[(name, size)] = out.float().cpu()
            else:
                row.max_rel_diff = rel_diff(out, self.reference(name, size))
            del out
            fill_timing(row, time_batches(step, dev, self.args.iters, self.args.warmup), self.args.batch_size)
            prec = "bf16 autocast, channels_last" if bf16 else "fp32, NCHW"
            row.note = "; ".join(filter(None, [prec, row.note]))
        finally:
            if compile_:
                with contextlib.suppress(Exception):
                    torch._dynamo.reset()  # frees the compiled graphs before the next row

    # -- vr graph rows (ONNX Runtime providers, TensorRT): through vr's runtime layer
    def vr_export(self, name: str, size: int, precision: str, trt: bool) -> Path:
        """A vr checkpoint of the model (the bench's weights; crop = input: no resize in the graph)
        exported by vr export at ``precision`` (with its engine for ``trt``), gate relaxed: speed only."""
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from PIL import Image

        from vr.data.classes import ClassMap
        from vr.export.config import ExportConfig
        from vr.export.run import run as export
        from vr.models.checkpoint import Checkpoint, save_checkpoint
        from vr.models.preprocess import Preprocess

        d = self.tmp / f"{name.replace('/', '_')}_{size}_{precision}{'_trt' if trt else ''}"
        d.mkdir(exist_ok=True)
        ckpt = d / "m.pt"
        save_checkpoint(ckpt, Checkpoint(name, self.args.classes, self.model(name).state_dict(),
                                         ClassMap(tuple(str(i) for i in range(self.args.classes))),
                                         Preprocess(size, size, "bilinear")))
        calib = None
        if precision == "int8":
            calib = d / "calib"
            calib.mkdir(exist_ok=True)
            g = torch.Generator().manual_seed(self.args.seed + 2)
            for i in range(16):
                arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(calib / f"{i}.png")
        b = self.args.batch_size
        cfg = ExportConfig(checkpoint=[ckpt], out=d / "m.onnx", precision=precision, calib=calib, calib_count=16,
                           resize_impl="matmul", atol=1.0, min_agreement=0.0, verify_count=4, trt=trt,
                           trt_batch=(1, b, b), trt_size=(size, size, size))
        written = export(cfg)
        return written["engine"] if trt else written["onnx"]

    def run_graph(self, row: Row, name: str, size: int, backend: str) -> None:
        import numpy as np

        providers = {"ort-cuda": ["CUDAExecutionProvider"], "ort-trt": ["TensorrtExecutionProvider"]}.get(backend)
        precision = {"ort-cuda": "fp32", "ort-trt": "fp16", "trt-fp16": "fp16", "trt-int8": "int8"}[backend]
        if providers:
            try:
                import onnxruntime as ort
            except ImportError:
                raise Skip("onnxruntime not installed") from None
            if providers[0] not in ort.get_available_providers():
                raise Skip(f"onnxruntime-gpu not installed or without {providers[0]} (onnxruntime {ort.__version__} "
                           f"offers {', '.join(ort.get_available_providers())})")
        elif importlib.util.find_spec("tensorrt") is None:
            raise Skip("tensorrt not installed")
        self.need_cuda(backend)
        from vr.runtime.load import load_predictor

        t0 = time.perf_counter()
        path = self.vr_export(name, size, precision, trt=providers is None)
        predictor = load_predictor(path, device=str(self.dev), batch_size=self.args.batch_size, host_resize=False,
                                   providers=providers)
        rng = np.random.default_rng(self.args.seed + 1)
        batch = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(self.args.batch_size)]

        def step():
            predictor.run(batch)

        step()  # the TensorRT EP builds its engine here
        sync(self.dev)
        row.setup_s = time.perf_counter() - t0
        row.note = (f"vr graph ({precision}) on {predictor.provider}: uint8 in, preprocessing and softmax in the "
                    f"graph, host<->device copies timed")
        fill_timing(row, time_batches(step, self.dev, self.args.iters, self.args.warmup), self.args.batch_size)

    # -- training rows
    def run_train(self, row: Row, name: str, size: int, use_vr: bool) -> None:
        from torch import nn

        dev, b = self.dev, self.args.batch_size
        g = torch.Generator().manual_seed(self.args.seed + 3)
        b = self.args.train_batch_size or b
        batches = [(torch.randn(b, 3, size, size, generator=g).to(dev),
                    torch.randint(0, self.args.classes, (b,), generator=g).to(dev)) for _ in range(2)]
        m = self.model(name).to(dev).to(memory_format=torch.channels_last).train()
        lr, wd = 1e-3, 0.05
        if use_vr:
            try:
                if str(REPO) not in sys.path:
                    sys.path.insert(0, str(REPO))
                from vr.train.config import TrainConfig
                from vr.train.step import TrainStep, build_criterion
                from vr.train.optim import LRSchedule, create_optimizer
                from vr.util.device import resolve_runtime
            except Exception as e:
                raise Skip(f"vr not importable ({one_line(e, 120)}); see train-plain") from None
            cfg = TrainConfig(data=Path("unused"), lr=lr, weight_decay=wd, sched="cosine", warmup_epochs=0,
                              label_smoothing=0.1, epochs=1, channels_last=True)
            rt = resolve_runtime(str(dev), amp=True, verbose=False)
            opt = create_optimizer(m, cfg)
            sched = LRSchedule(opt, cfg, steps_per_epoch=self.args.iters + self.args.warmup + 1)
            scaler = torch.amp.GradScaler(dev.type, enabled=rt.use_scaler)
            vr_step = TrainStep(m, m, opt, sched, scaler, build_criterion(cfg), rt, channels_last=True)
            it = iter(range(10**9))

            def step():
                x, y = batches[next(it) % 2]
                vr_step(x, y)

            row.note = f"batch {b}; vr TrainStep: {rt.reason}; channels_last; AdamW fused={opt.defaults.get('fused')}"
            check = lambda: int(vr_step.bad.item())  # noqa: E731
        else:
            amp_dtype, use_scaler = None, False
            if is_cuda(dev):
                amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                use_scaler = amp_dtype is torch.float16
            opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, **({"fused": True} if is_cuda(dev) else {}))
            scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
            crit = nn.CrossEntropyLoss(label_smoothing=0.1)
            bad = torch.zeros((), dtype=torch.int64, device=dev)
            it = iter(range(10**9))

            def step():
                x, y = batches[next(it) % 2]
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = crit(m(x).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                bad.add_(torch.isfinite(loss.detach()).logical_not())

            prec = {None: "fp32 (AMP off on CPU)", torch.bfloat16: "bf16 autocast",
                    torch.float16: "fp16 autocast + GradScaler"}[amp_dtype]
            row.note = f"batch {b}; plain loop: {prec}; channels_last; torch AdamW fused={is_cuda(dev)}"
            check = lambda: int(bad.item())  # noqa: E731
        t0 = time.perf_counter()
        step()
        sync(dev)
        row.setup_s = time.perf_counter() - t0
        fill_timing(row, time_batches(step, dev, self.args.iters, self.args.warmup), b)
        if check():
            raise RuntimeError("non-finite loss during the timed steps")


# ----------------------------------------------------------------------------------- report

def header(dev: torch.device, args) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "timm": pkg_version("timm"),
            "onnx": pkg_version("onnx"), "cpu": cpu_name(), "threads": torch.get_num_threads()}
    if is_cuda(dev):
        p = torch.cuda.get_device_properties(dev)
        info.update(device=f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                           f"{p.multi_processor_count} SMs)",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(device=f"CPU: {info['cpu']} ({info['threads']} torch threads)", cuda=None, cudnn=None, bf16=False)
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} ({', '.join(ort.get_available_providers())})"
    except Exception as e:
        info["onnxruntime"] = f"not importable ({one_line(e, 80)})"
    if importlib.util.find_spec("tensorrt") is None:
        info["tensorrt"] = "not installed"
    else:
        try:
            import tensorrt as trt

            info["tensorrt"] = trt.__version__
        except Exception as e:
            info["tensorrt"] = f"not importable ({one_line(e, 80)})"
    info["math"] = (f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} "
                    f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32} "
                    f"cudnn.benchmark={torch.backends.cudnn.benchmark}")
    info["settings"] = (f"batch {args.batch_size}, {args.classes} classes, warm-up {args.warmup}, {args.iters} timed "
                        f"batches (median), compile mode {args.compile_mode}, budget {args.budget_s:.0f} s")
    return info


def fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    lines = ["| model | size | backend | images/s | p50 ms/batch | speed-up vs eager fp32 | setup s | note |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.status == "ok" and r.images_per_s is not None:
            ips, p50 = f"{r.images_per_s:.1f}", f"{r.p50_ms:.2f}"
            sp = fmt(r.speedup_vs_fp32, ".2f") + ("x" if r.speedup_vs_fp32 is not None else "")
            note = r.note + (f"; max rel diff vs fp32 {r.max_rel_diff:.1e}" if r.max_rel_diff is not None else "")
        else:
            ips, p50, sp = ("FAILED" if r.status == "failed" else "skipped"), "-", "-"
            note = r.reason
        lines.append(f"| {r.model} | {r.size} | {r.backend} | {ips} | {p50} | {sp} | {fmt(r.setup_s, '.1f')} | "
                     f"{note.replace('|', '/')} |")
    return "\n".join(lines)


def goal_lines(rows: list[Row], models) -> list[str]:
    out = []
    for name, size in models:
        r = next((r for r in rows if (r.model, r.size, r.backend) == (name, size, GOAL_BACKEND)), None)
        if r is None or r.status != "ok" or r.speedup_vs_fp32 is None:
            why = r.reason if r is not None and r.reason else "no torch-fp32 baseline" if r else "not run"
            out.append(f"goal {GOAL_BACKEND} >= {GOAL_SPEEDUP:g}x eager fp32, {name}@{size}: not measured ({why})")
        else:
            verdict = "met" if r.speedup_vs_fp32 >= GOAL_SPEEDUP else "NOT met"
            out.append(f"goal {GOAL_BACKEND} >= {GOAL_SPEEDUP:g}x eager fp32, {name}@{size}: "
                       f"{r.speedup_vs_fp32:.2f}x, {verdict}")
    return out


# ----------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet152@512,seresnext101d_32x8d@224",
                    help="comma-separated timm NAME@SIZE (SIZE default: the model's own input size)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--iters", type=int, default=30, help="timed batches per row (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches per row before the timed ones")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--backends", default=",".join(INFER_BACKENDS),
                    help=f"comma-separated subset of {', '.join(INFER_BACKENDS)}")
    ap.add_argument("--no-compile", action="store_true", help="skip torch-bf16-cl-compile")
    ap.add_argument("--compile-mode", default="default",
                    choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                    help="torch.compile mode (max-autotune* can take many minutes on a deep convnet)")
    ap.add_argument("--train", action="store_true", help="also time training (train-vr, train-plain) on the first model")
    ap.add_argument("--train-batch-size", type=int, default=None, help="batch of the --train rows (default: --batch-size)")
    ap.add_argument("--strict-fp32", action="store_true", help="turn TF32 off (cuDNN and matmul) for all torch rows")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="no new row starts after this many seconds; the rest are skipped saying so")
    ap.add_argument("--row-timeout-s", type=float, default=300.0, help="a row running longer fails (0: no limit)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 avoids spin-waiting on a small, busy CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results (rewritten after every row)")
    ap.add_argument("--debug", action="store_true", help="print the traceback of a failed row")
    args = ap.parse_args(argv)
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        ap.error("--batch-size and --iters must be >= 1, --warmup >= 0")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in INFER_BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(INFER_BACKENDS)}")
    models = parse_models(args.models)

    want = args.device.lower()
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA GPU is visible to torch {torch.__version__}", file=sys.stderr)
        return 2
    dev = torch.device(want)
    if args.threads:
        torch.set_num_threads(args.threads)
    if is_cuda(dev):
        torch.cuda.set_device(dev)
    if args.strict_fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True

    import timm

    # Resolve default sizes (and check the names) before anything heavy.
    resolved = []
    for name, size in models:
        if size is None:
            try:
                size = int(timm.get_pretrained_cfg_value(name, "input_size")[-1])
            except Exception:
                size = 224
        resolved.append((name, size))
    models = resolved

    info = header(dev, args)
    print("# gpu_throughput", flush=True)
    for k in ("device", "torch", "cuda", "cudnn", "onnxruntime", "tensorrt", "timm", "onnx", "python", "math",
              "settings"):
        print(f"- {k}: {info[k]}")
    print(f"- goal: {GOAL_BACKEND} >= {GOAL_SPEEDUP:g}x {INFER_BACKENDS[0]}", flush=True)

    bench = Bench(args, dev)
    rows: dict[tuple[str, int, str], Row] = {}
    order: list[tuple[str, int, str]] = [(n, s, b) for n, s in models for b in INFER_BACKENDS if b in backends]
    if args.train:
        order += [(models[0][0], models[0][1], b) for b in TRAIN_BACKENDS]
    # Cheapest and most wanted first; torch-fp32 (the baseline and the reference output) leads.
    todo = sorted(order, key=lambda k: (PRIORITY.index(k[2]), order.index(k)))
    start = time.perf_counter()

    def dump(complete: bool) -> None:
        if args.out is None:
            return
        ordered = [rows[k] for k in order if k in rows]
        atomic_write_json(args.out, {"meta": info, "complete": complete, "goal": goal_lines(ordered, models),
                                     "rows": [asdict(r) for r in ordered]})

    runners = {
        "torch-fp32": lambda r, n, s: bench.run_torch(r, n, s, bf16=False, compile_=False),
        "torch-bf16-cl": lambda r, n, s: bench.run_torch(r, n, s, bf16=True, compile_=False),
        "torch-bf16-cl-compile": lambda r, n, s: bench.run_torch(r, n, s, bf16=True, compile_=True),
        "ort-cuda": lambda r, n, s: bench.run_graph(r, n, s, "ort-cuda"),
        "ort-trt": lambda r, n, s: bench.run_graph(r, n, s, "ort-trt"),
        "trt-fp16": lambda r, n, s: bench.run_graph(r, n, s, "trt-fp16"),
        "trt-int8": lambda r, n, s: bench.run_graph(r, n, s, "trt-int8"),
        "train-vr": lambda r, n, s: bench.run_train(r, n, s, use_vr=True),
        "train-plain": lambda r, n, s: bench.run_train(r, n, s, use_vr=False),
    }
    print(flush=True)
    interrupted = False
    try:
        for key in todo:
            name, size, backend = key
            row = rows[key] = Row(name, size, backend)
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                row.status, row.reason = "skipped", f"time budget used up (--budget-s {args.budget_s:.0f})"
            else:
                t0 = time.perf_counter()
                try:
                    with row_timeout(min(args.row_timeout_s or 1e9, max(30.0, args.budget_s - elapsed + 60))):
                        runners[backend](row, name, size)
                except Skip as e:
                    row.status, row.reason = "skipped", str(e)
                except KeyboardInterrupt:
                    row.status, row.reason = "failed", "interrupted (SIGINT, e.g. the caller's timeout)"
                    raise
                except Exception as e:  # noqa: BLE001  (RowTimeout, OOM, build errors: one row FAILED, go on)
                    row.status, row.reason = "failed", one_line(e)
                    if args.debug:
                        traceback.print_exc()
                finally:
                    free_memory()
                took = time.perf_counter() - t0
                if row.status == "ok":
                    print(f"  {name}@{size} {backend}: {row.images_per_s:.1f} images/s, p50 {row.p50_ms:.2f} ms "
                          f"({took:.0f} s)", flush=True)
                else:
                    print(f"  {name}@{size} {backend}: {row.status.upper() if row.status == 'failed' else row.status}"
                          f": {row.reason}", flush=True)
            for r in rows.values():
                b = rows.get((r.model, r.size, "torch-fp32"))
                if r.status == "ok" and r.backend in INFER_BACKENDS and b is not None and b.status == "ok":
                    r.speedup_vs_fp32 = r.images_per_s / b.images_per_s
            dump(complete=False)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: the rows so far follow", flush=True)
    finally:
        ordered = [rows[k] for k in order if k in rows]
        print()
        print(table(ordered))
        print()
        for line in goal_lines(ordered, models):
            print(line)
        if any(r.backend == "trt-int8" and r.status == "ok" for r in ordered):
            print("note: trt-int8 is calibrated on random (or --calib-dir) images: its speed is real, its accuracy "
                  "is not measured")
        dump(complete=len(rows) == len(order))
        if args.out is not None:
            print(f"wrote {args.out}")
        import shutil

        shutil.rmtree(bench.tmp, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
