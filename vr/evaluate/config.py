"""EvalConfig and SubmitConfig: the options of `vr eval` and `vr submit` (no heavy imports here:
the CLI imports this module at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, check_choice, option
from vr.formats import model_suffixes
from vr.models.tta import AUTO, TTA_MODES
from vr.models.ensemble import SPELLING, MemberSpec, expand_members, is_ensemble_spec

TTA_CHOICES = TTA_MODES  # declared once, in vr.models.tta
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")

_TTA_HELP = ("Test-time augmentation of a .pt checkpoint: class probabilities averaged over the views "
             "(default: none). An .onnx/.engine has its TTA built in at export: leave this out, or give the "
             "same mode (another mode is an error).")
DEVICE_HELP = ("auto, cpu, cuda, cuda:N or mps. auto: .pt on CUDA, else MPS, else CPU; .onnx tries the TensorRT, "
                "CUDA and CPU execution providers in that order. Asking for cuda and getting CPU is an error.")
_WORKERS_HELP = "DataLoader worker processes that decode and preprocess images (0: in the main process)."
_BUDGET_HELP = ("Parameter budget, e.g. 100M, 25.5M or 500K: refuse, before reading any image, a model (an ensemble: "
                "all its members together) with more parameters.")


def _param_budget(cfg):
    from vr.models.budget import parse_param_budget

    return parse_param_budget(cfg.max_params)


def _check_common(cfg, auto: bool = False) -> None:
    check(cfg.batch_size > 0, f"--batch-size must be positive (got {cfg.batch_size})")
    check(cfg.workers >= 0, f"--workers must be >= 0 (got {cfg.workers})")
    check_choice("device", str(cfg.device).split(":")[0].lower(), DEVICE_KINDS)
    if cfg.tta is not None:
        check_choice("TTA mode", cfg.tta, TTA_CHOICES + ((AUTO,) if auto else ()))


@dataclass
class EvalConfig(ConfigBase):
    models: list[Path] = option(help="Model files to evaluate and compare: .pt checkpoints, .onnx exports, TensorRT "
                                     ".engine files (with their .json sidecar). One argument spelled "
                                     f"{SPELLING} is one soft-voting ensemble (each member with its own "
                                     "preprocessing), reported with its members' accuracy and agreement.",
                                argument=True)
    data: Optional[Path] = option(None, "Labelled images, DIR/<class>/<image> (required). If DIR holds a val/ folder "
                                        "and no model has a class named 'val', DIR/val is used, so a dataset root "
                                        "works. Class folders are matched to each model's classes by name; a folder "
                                        "the model does not know is an error. Unreadable images are skipped with a "
                                        "warning naming each.")
    out: Path = option(Path("runs/eval"), "Report folder: report.json, report.md, report.html, manifest.json, "
                                          "predictions_<model>.csv, confusion_<model>.png/.csv.")
    tta: Optional[str] = option(None, _TTA_HELP + " auto: each checkpoint is scored with every mode on these images "
                                "and reported with the best (ties: the fewest views), with the table of all; an "
                                "optimistic score, since it is chosen on the images it reports.",
                                choices=TTA_CHOICES + (AUTO,))
    batch_size: int = option(32, "Images per batch.")
    device: str = option("auto", DEVICE_HELP)
    worst_k: int = option(5, "How many of the lowest-F1 classes to list per model.")
    workers: int = option(2, _WORKERS_HELP)
    html: bool = option(True, "Also write report.html: one self-contained page (offline, thumbnails embedded) "
                              "with the confusion matrix whose cells list their images, the worst classes' "
                              "mistakes, the flips between models and a sortable per-class table.")
    max_params: Optional[str] = option(None, _BUDGET_HELP)

    def __post_init__(self):
        check(self.data is not None, "--data is required: the folder of labelled images (DIR/<class>/<image>)")
        check(len(self.models) > 0, "give at least one model file")
        check(self.worst_k >= 0, f"--worst-k must be >= 0 (got {self.worst_k})")
        _check_common(self, auto=True)
        for m in self.models:
            expand_members([m])  # the ensemble spelling, checked now
        self.param_budget()

    def param_budget(self) -> Optional[int]:
        return _param_budget(self)


@dataclass
class SubmitConfig(ConfigBase):
    model: list[Path] = option(help="Model file: .pt checkpoint, .onnx export or TensorRT .engine. Several (or one "
                                    f"argument {SPELLING}) are soft-voted into one submission, each member with its "
                                    "own preprocessing (--weights), and their agreement is printed. The test folder "
                                    "may also be given as the last argument: vr submit MODEL TEST_DIR.",
                               argument=True)
    test_dir: Optional[Path] = option(None, "Folder of unlabelled test images (directly inside it, not in "
                                            "sub-folders).")
    out: Path = option(Path("prediction.csv"), "CSV to write (atomically: an interrupted run leaves the previous "
                                               "file intact). Columns image_name (file name without extension) and "
                                               "pred_label (class folder name), one row per image in natural order.")
    zip: bool = option(False, "Also write OUT with the suffix .zip, holding the CSV as prediction.csv (the "
                              "leaderboard upload).")
    check_csv: Optional[Path] = option(None, "Validate this existing CSV instead of predicting: header, every test "
                                             "image exactly once, every label one of the model's classes.",
                                       flag="--check")
    tta: Optional[str] = option(None, _TTA_HELP, choices=TTA_CHOICES)
    batch_size: int = option(32, "Images per batch.")
    device: str = option("auto", DEVICE_HELP)
    workers: int = option(2, _WORKERS_HELP)
    weights: Optional[str] = option(None, "Ensemble member weights, comma-separated in the order of the models, "
                                          "e.g. 0.6,0.4: positive, normalised to sum 1 (default: equal).")
    max_params: Optional[str] = option(None, _BUDGET_HELP)

    def __post_init__(self):
        _check_common(self)
        self.model = list(self.model)
        last = self.model[-1] if self.model else None
        if self.test_dir is None and len(self.model) >= 2 and (
                Path(last).is_dir() or (Path(last).suffix.lower() not in model_suffixes() and not is_ensemble_spec(last))):
            self.test_dir = self.model.pop()  # the older spelling: vr submit MODEL TEST_DIR
        check(len(self.model) > 0, "give a model file")
        check(self.test_dir is not None, "give the folder of test images: vr submit MODEL --test-dir DIR")
        self.members()
        self.param_budget()

    def members(self) -> list[MemberSpec]:
        """The model, or the ensemble's members with their weights (None: equal shares)."""
        return expand_members(self.model, self.weights)

    def param_budget(self) -> Optional[int]:
        return _param_budget(self)
