"""`vr predict MODEL IMAGE...`: the top-k classes of a few images, for any model file.

PredictConfig is light (the CLI imports it at start-up); run_predict imports the runtimes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, check_choice, option
from vr.evaluate.config import DEVICE_HELP, DEVICE_KINDS, TTA_CHOICES


@dataclass
class PredictConfig(ConfigBase):
    model: Path = option(help="Model file: .pt checkpoint, .onnx export or TensorRT .engine.", argument=True)
    images: list[Path] = option(help="Image files, or folders whose images (not recursive) are all predicted.",
                                argument=True)
    top_k: int = option(5, "How many classes to print per image (capped at the class count).")
    tta: Optional[str] = option(None, "Test-time augmentation for a .pt checkpoint (an export has its own built in).",
                                choices=TTA_CHOICES)
    device: str = option("auto", DEVICE_HELP)
    batch_size: int = option(16, "Images per batch.")
    json: bool = option(False, "Print one JSON object per image instead of a table.")

    def __post_init__(self):
        check(self.top_k > 0, f"--top-k must be positive (got {self.top_k})")
        check(self.batch_size > 0, f"--batch-size must be positive (got {self.batch_size})")
        check(len(self.images) > 0, "give at least one image file or folder")
        check_choice("device", str(self.device).split(":")[0].lower(), DEVICE_KINDS)


def expand_images(items: list[Path]) -> list[Path]:
    """Files as given; folders replaced by their images in natural order. Missing paths are an error."""
    from vr.data.folders import list_images
    from vr.errors import VrError
    from vr.util.paths import display

    out: list[Path] = []
    for p in items:
        p = Path(p)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise VrError(f"no images in {display(p)}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise VrError(f"image not found: {display(p)}")
    return out


def top_k(probs, k: int) -> list[list[tuple[int, float]]]:
    """Per row, the k (index, probability) pairs in decreasing probability; ties keep index order."""
    from vr.evaluate.metrics import top_k_indices

    order = top_k_indices(probs, k)
    return [[(int(j), float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def run_predict(cfg: PredictConfig) -> list[dict]:
    """Predict every image, print the top-k per image and return the same as dicts."""
    import typer

    from vr.runtime.load import load_predictor
    from vr.runtime.runner import predict_files
    from vr.util.paths import display

    paths = expand_images(cfg.images)
    predictor = load_predictor(cfg.model, device=cfg.device, tta=cfg.tta, batch_size=cfg.batch_size)
    run = predict_files(predictor, paths, batch_size=cfg.batch_size)
    k = min(cfg.top_k, predictor.num_classes)
    names = predictor.classes.names
    results = []
    for path, pairs in zip(paths, top_k(run.probs, k)):
        results.append({"image": str(path),
                        "top": [{"class": names[j], "index": j, "prob": round(p, 6)} for j, p in pairs]})
    if cfg.json:
        for r in results:
            typer.echo(json.dumps(r))
        return results
    # The JSON lines keep names exactly (\udcNN escapes); the table shows a non-UTF-8 name as \xNN.
    typer.echo(f"{display(cfg.model)} · {predictor.runtime} ({predictor.provider}) · tta {predictor.tta}", err=True)
    width = max(len(display(r["image"])) for r in results)
    for r in results:
        top = "  ".join(f"{display(t['class'])} {t['prob']:.4f}" for t in r["top"])
        typer.echo(f"{display(r['image']):<{width}}  {top}")
    return results
