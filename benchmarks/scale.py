#!/usr/bin/env python
"""How vr's costs grow with the number of images: 1k, 10k and 100k tiny generated images.

For each size N the script writes an image folder (10 colour-coded classes of 32x32 PNGs:
train/ with N images, val/ with N/10, and a flat test/ of N hard links to the train images), then
measures, each as a fresh process timed to its exit:

* data scan: ``scan_image_folder`` over train/ (header check of every file, as ``vr train`` and
  ``vr eval`` do), in this process;
* ``vr eval`` of a tiny checkpoint on train/ (N labelled images, report.html on) and ``vr submit``
  on test/ (N images): wall time and peak RSS;
* ``vr train`` for one epoch on train/ + val/ (``test_resnet`` at 32 px): wall time, the training
  steps, validation, and everything else (the per-epoch overhead beyond the steps: setup, data
  scan and check, checkpoints, logs), from vr's own phase marks (VR_PHASES).

The goal is linear time and memory flat in N apart from the [N, classes] probability array (40
bytes per image here): the table prints time per 1k images and the RSS growth per 1k images so a
cost that grows faster shows as a rising column. The checkpoint is trained once, untimed, on the
smallest set. Usage: python benchmarks/scale.py [--sizes 1000 10000 100000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import child_env, timed, wait_quiet  # noqa: E402  (one way to time a whole process)

CLASSES = 10
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
MODEL = ["--model", "test_resnet", "--img-size", "32"]


def write_folder(root: Path, n: int, seed: int) -> None:
    """``n`` noisy 32x32 PNGs spread over the classes (written once; reused when present)."""
    import numpy as np
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        img = np.clip(np.array(COLOURS[c], np.int16) + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"c{c}" / f"{i:06d}.png", compress_level=1)
    done.write_text("")


def make_sets(work: Path, n: int) -> Path:
    data = work / f"n{n}"
    write_folder(data / "train", n, seed=n)
    write_folder(data / "val", max(CLASSES * 5, n // 10), seed=n + 1)
    test = data / "test"
    if not (test / ".complete").is_file():
        test.mkdir(parents=True, exist_ok=True)
        for f in sorted((data / "train").glob("c*/*.png")):
            target = test / f"{f.parent.name}_{f.name}"
            if not target.exists():
                os.link(f, target)
        (test / ".complete").write_text("")
    return data


def scan_seconds(root: Path) -> float:
    from vr.data.folders import scan_image_folder

    t = time.perf_counter()
    scan = scan_image_folder(root)
    seconds = time.perf_counter() - t
    assert len(scan.samples) > 0
    return seconds


def vr(*args: str) -> list[str]:
    return [sys.executable, "-m", "vr.cli", *args]


def phase_sum(phases: list[tuple[str, float]], names: set[str]) -> float:
    return sum(s for name, s in phases if name in names)


def measure(work: Path, n: int, ckpt: Path, quiet: float) -> dict:
    data = make_sets(work, n)
    out = work / "out" / f"n{n}"
    out.mkdir(parents=True, exist_ok=True)
    row = {"n": n, "scan_s": scan_seconds(data / "train")}
    jobs = {
        "eval": vr("eval", str(ckpt), "--data", str(data / "train"), "--out", str(out / "eval"), "--device", "cpu",
                   "--batch-size", "256", "--workers", "2"),
        "submit": vr("submit", str(ckpt), "--test-dir", str(data / "test"), "--out", str(out / "sub.csv"),
                     "--device", "cpu", "--batch-size", "256", "--workers", "2"),
        "train": vr("train", str(data), *MODEL, "--epochs", "1", "--batch-size", "256", "--workers", "2",
                    "--device", "cpu", "--out", str(out / "train"), "--no-tensorboard"),
    }
    for name, cmd in jobs.items():
        wait_quiet(quiet, 300)
        marks = out / f"{name}.phases"
        marks.unlink(missing_ok=True)
        run, _, _ = timed(cmd, child_env(VR_PHASES=str(marks)), marks, out / f"{name}.log")
        if run.rc != 0:
            raise SystemExit(f"{name} at N={n} failed ({run.rc}); see {out / (name + '.log')}")
        row[f"{name}_s"], row[f"{name}_rss_mb"] = run.wall, run.max_rss_mb
        if name == "train":
            steps = phase_sum(run.phases, {"train steps", "first batch"})
            val = phase_sum(run.phases, {"validation"})
            row.update(train_steps_s=steps, train_val_s=val, train_other_s=run.wall - steps - val,
                       train_phases=run.phases)
    return row


def table(rows: list[dict]) -> str:
    head = ("| images | scan s | eval s (per 1k) | eval RSS MB | submit s (per 1k) | submit RSS MB | "
            "train epoch s | steps s (per 1k) | val s | other s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        k = r["n"] / 1000
        lines.append(
            f"| {r['n']:,} | {r['scan_s']:.2f} | {r['eval_s']:.1f} ({r['eval_s'] / k:.2f}) | {r['eval_rss_mb']:.0f} | "
            f"{r['submit_s']:.1f} ({r['submit_s'] / k:.2f}) | {r['submit_rss_mb']:.0f} | {r['train_s']:.1f} | "
            f"{r['train_steps_s']:.1f} ({r['train_steps_s'] / k:.2f}) | {r['train_val_s']:.1f} | "
            f"{r['train_other_s']:.1f} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """Time and peak RSS per extra 1k images between consecutive sizes: the marginal costs (a
    cost that grows faster than linearly shows as a rising row; the fixed start-up cost cancels)."""
    lines = []
    for a, b in zip(rows, rows[1:]):
        dk = (b["n"] - a["n"]) / 1000
        t = ", ".join(f"{k} {(b[k + '_s'] - a[k + '_s']) / dk:.3f} s"
                      for k in ("scan", "eval", "submit", "train", "train_steps", "train_other"))
        m = ", ".join(f"{k} {(b[k + '_rss_mb'] - a[k + '_rss_mb']) / dk:+.2f} MB" for k in ("eval", "submit", "train"))
        lines.append(f"per extra 1k images, {a['n']:,} -> {b['n']:,}: {t}; peak RSS {m}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vr-scale")
    ap.add_argument("--quiet", type=float, default=1.0, help="wait for the 1-minute load to drop below this")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()
    import torch

    print(f"{platform.processor() or platform.machine()} · {os.cpu_count()} cores · torch {torch.__version__} · "
          f"Python {platform.python_version()}")
    sizes = sorted(a.sizes)
    base = make_sets(a.work, sizes[0])
    ckpt_run = a.work / "ckpt"
    if not (ckpt_run / "best.pt").is_file():  # the model eval and submit run: trained once, untimed
        import subprocess

        subprocess.run(vr("train", str(base), *MODEL, "--epochs", "1", "--device", "cpu", "--workers", "0",
                          "--out", str(ckpt_run), "--no-tensorboard"), check=True, env=child_env(),
                       stdout=subprocess.DEVNULL)
    rows = []
    for n in sizes:
        rows.append(measure(a.work, n, ckpt_run / "best.pt", a.quiet))
        r = rows[-1]
        print(f"N={n:,}: scan {r['scan_s']:.2f} s · eval {r['eval_s']:.1f} s {r['eval_rss_mb']:.0f} MB · "
              f"submit {r['submit_s']:.1f} s {r['submit_rss_mb']:.0f} MB · train {r['train_s']:.1f} s "
              f"(steps {r['train_steps_s']:.1f}, val {r['train_val_s']:.1f}, other {r['train_other_s']:.1f})",
              flush=True)
    print()
    print(table(rows))
    print(growth(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
