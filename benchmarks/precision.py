#!/usr/bin/env python
"""fp32, fp16, bf16 and int8 graphs of one checkpoint side by side on ONNX Runtime (CPU), in one
run: images/s through vr's runtime layer (what `vr eval` runs), top-1 accuracy on the val folder,
agreement with the fp32 PyTorch pipeline and the largest probability difference.

Each graph is written by `vr export --precision P` (the parity gate included) into a temp folder.
A precision ONNX Runtime cannot run on this CPU (bf16) is scored through its fp32 emulation and
gets no speed (there is no such kernel to time). Example (hymenoptera, a lite0 fine-tune):

    python benchmarks/precision.py RUN/best.pt ../shared/data/hymenoptera/val \\
        --calib ../shared/data/hymenoptera/train --rounds 3 --out docs/precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def export(ckpt: Path, out: Path, precision: str, val: Path, calib: Path | None, tta: str) -> Path:
    from vr.export.config import ExportConfig
    from vr.export.run import run

    cfg = ExportConfig(checkpoint=[ckpt], out=out, precision=precision, verify=val, tta=tta, verify_count=100000,
                       calib=calib if precision == "int8" else None)
    return run(cfg)["onnx"]


def timed_run(predictor, paths, batch: int, workers: int, rounds: int):
    from vr.runtime.runner import predict_files

    best, probs = None, None
    for _ in range(rounds):
        run = predict_files(predictor, paths, batch, workers)
        ips = run.images_per_second
        best = ips if best is None else max(best, ips)
        probs = run.probs
    return best, probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("val", type=Path, help="labelled images: VAL/<class>/<image>")
    ap.add_argument("--calib", type=Path, help="int8 calibration images (default: the checkpoint's train folder)")
    ap.add_argument("--precisions", default="fp32,fp16,bf16,int8")
    ap.add_argument("--tta", default="none")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per graph (the best is kept)")
    ap.add_argument("--out", type=Path, help="JSON results")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from vr.data.folders import scan_image_folder
    from vr.export.parity import torch_probs
    from vr.export.precision import runnable_on_ort_cpu
    from vr.export.parity import cpu_predictor
    from vr.models.checkpoint import load_checkpoint
    from vr.models.factory import model_from_checkpoint
    from vr.data.images import load_rgb

    ckpt = load_checkpoint(a.checkpoint)
    scan = scan_image_folder(a.val, classes=ckpt.classes, verify=False, what="val")
    paths, labels = [p for p, _ in scan.samples], np.array([y for _, y in scan.samples])
    ref = torch_probs(model_from_checkpoint(ckpt), ckpt.preprocess, [load_rgb(p) for p in paths], a.tta)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vr-precision-") as d:
        for precision in a.precisions.split(","):
            t0 = time.perf_counter()
            path = export(a.checkpoint, Path(d) / f"{precision}.onnx", precision, a.val, a.calib, a.tta)
            export_s = time.perf_counter() - t0
            runnable = runnable_on_ort_cpu(precision)
            predictor, runtime = cpu_predictor(path, precision, Path(d))
            predictor.batch_size = a.batch_size
            ips, probs = timed_run(predictor, paths, a.batch_size, a.workers, a.rounds if runnable else 1)
            rows.append({"precision": precision, "runtime": runtime, "images_per_second": round(ips, 2) if runnable
                         else None, "accuracy": float((probs.argmax(1) == labels).mean()),
                         "agreement_with_fp32_torch": float((probs.argmax(1) == ref.argmax(1)).mean()),
                         "max_abs_prob_diff": float(np.abs(probs - ref).max()), "export_seconds": round(export_s, 1),
                         "size_mb": round(path.stat().st_size / 1e6, 2)})
    torch_acc = float((ref.argmax(1) == labels).mean())
    print(f"\n{len(paths)} val images, TTA {a.tta}, batch {a.batch_size}, {a.workers} workers, best of {a.rounds}; "
          f"{cpu_name()}; PyTorch fp32 top-1 {100 * torch_acc:.2f}%\n")
    print("| precision | runtime | images/s | top-1 | agreement with fp32 PyTorch | max abs Δp | file MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ips = "-" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}"
        print(f"| {r['precision']} | {r['runtime']} | {ips} | {100 * r['accuracy']:.2f}% | "
              f"{100 * r['agreement_with_fp32_torch']:.2f}% | {r['max_abs_prob_diff']:.2e} | {r['size_mb']} |")
    fp32 = next((r for r in rows if r["precision"] == "fp32" and r["images_per_second"]), None)
    for r in rows:
        if fp32 and r["images_per_second"] and r is not fp32:
            print(f"{r['precision']} / fp32 images/s: {r['images_per_second'] / fp32['images_per_second']:.2f}x")
    if a.out:
        a.out.write_text(json.dumps({"machine": cpu_name(), "images": len(paths), "tta": a.tta,
                                     "torch_fp32_accuracy": torch_acc, "rows": rows,
                                     "median_fp32_ips": statistics.median([r["images_per_second"] for r in rows
                                                                           if r["images_per_second"]] or [0])},
                                    indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
