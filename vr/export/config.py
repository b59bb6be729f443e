"""ExportConfig: every option of `vr export`, validated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, check_choice, option
from vr.models.ensemble import SPELLING, MemberSpec, expand_members

# Kept here (not imported from vr.models.tta / vr.export.onnx) so that building the CLI does not
# import torch; tests check they agree.
TTA_MODES = ("none", "flip", "five-crop", "ten-crop")
MIN_OPSET, MAX_OPSET = 18, 20  # antialiased Resize needs 18; PyTorch's TorchScript exporter stops at 20
RESIZE_IMPLS = ("resize", "matmul")

G, V, T, E = "Graph", "Parity gate", "TensorRT", "Ensemble and budget"


@dataclass
class ExportConfig(ConfigBase):
    checkpoint: list[Path] = option(help=f"A vr checkpoint (.pt) written by vr train. Several (or {SPELLING}) export one soft-voting ensemble: one graph in which every member runs its own preprocessing (size, resize, crop, mean/std), the same --tta views and its backbone, and the members' probabilities are averaged (--weights). Members must share their class names.", argument=True)
    out: Optional[Path] = option(None, "Output ONNX file (default: model.onnx beside the checkpoint; ensemble.onnx beside the first checkpoint of an ensemble).", group=G)
    tta: str = option("none", "Test-time augmentation inside the graph: none; flip (centre crop + mirror); five-crop (centre + 4 corners of the resized image); ten-crop (five-crop + mirrors). Probabilities are averaged over the views.", choices=TTA_MODES, group=G)
    opset: int = option(18, f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (antialiased Resize needs 18).", group=G)
    static_batch: Optional[int] = option(None, "Fix the batch dimension to N (default: dynamic).", group=G)
    simplify: bool = option(False, "Simplify the graph with onnxslim (pip install onnxslim).", group=G)
    resize_impl: str = option("resize", "How the graph resizes: resize = the ONNX Resize op with antialiasing (fastest on ONNX Runtime); matmul = PIL's filter weights applied with MatMul (plain ops, for runtimes without antialiased Resize; --trt always uses it).", choices=RESIZE_IMPLS, group=G)
    verify: Optional[Path] = option(None, "Images for the parity gate: an ImageFolder (DIR/<class>/<image>) or a flat folder. Default: the checkpoint's val folder when it still exists, else generated images.", group=V)
    verify_count: int = option(200, "At most this many images are used by the parity gate (spread evenly over the folder).", group=V)
    atol: float = option(0.01, "Largest absolute difference in any class probability allowed between PyTorch and the export.", group=V)
    min_agreement: float = option(0.995, "Smallest fraction of images on which PyTorch and the export must pick the same top-1 class (near-ties in PyTorch's output, top two within 1e-3, are not counted as disagreements).", group=V)
    trt: bool = option(False, "Also build a TensorRT engine (needs a CUDA GPU and TensorRT: pip install tensorrt, or vr's gpu extra).", group=T)
    fp16: bool = option(True, "TensorRT precision: --fp16 lets TensorRT use half precision in the network; --fp32 keeps float32. Preprocessing always runs in float32.", flag="--fp16/--fp32", group=T)
    int8: bool = option(False, "TensorRT INT8 with entropy calibration (needs --calib or the checkpoint's train folder).", group=T)
    calib: Optional[Path] = option(None, "INT8 calibration images: an ImageFolder (a class-balanced sample is drawn) or a flat folder (default: the checkpoint's train folder).", group=T)
    calib_count: int = option(500, "Number of INT8 calibration images.", group=T)
    trt_batch: tuple[int, int, int] = option((1, 1, 8), "TensorRT optimisation profile for the batch: MIN OPT MAX.", group=T)
    trt_size: tuple[int, int, int] = option((32, 512, 2048), "TensorRT optimisation profile for the image height and width in pixels: MIN OPT MAX.", group=T)
    trt_workspace: float = option(4.0, "TensorRT builder workspace limit in GiB.", group=T)
    trt_timing_cache: Optional[Path] = option(None, "TensorRT timing cache file, read and updated (default: timing.cache beside the engine).", group=T)
    weights: Optional[str] = option(None, "Ensemble member weights, comma-separated in the order of the checkpoints, e.g. 0.6,0.4: positive, normalised to sum 1 (default: equal).", group=E)
    max_params: Optional[str] = option(None, "Parameter budget, e.g. 100M, 25.5M or 500K: refuse (before exporting anything) a model, or an ensemble with all its members together, that has more parameters.", group=E)

    def __post_init__(self):
        check(len(self.checkpoint) > 0, "give a checkpoint to export")
        self.members()  # the ensemble spelling and --weights, checked now
        self.param_budget()
        check_choice("TTA mode", self.tta, TTA_MODES)
        check_choice("resize implementation", self.resize_impl, RESIZE_IMPLS)
        check(MIN_OPSET <= self.opset <= MAX_OPSET,
              f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}] (got {self.opset}): antialiased Resize needs opset 18 "
              f"and PyTorch's TorchScript exporter stops at {MAX_OPSET}")
        check(self.static_batch is None or self.static_batch >= 1, f"--static-batch must be >= 1 (got {self.static_batch})")
        check(self.verify_count >= 1, f"--verify-count must be >= 1 (got {self.verify_count})")
        check(0 < self.atol <= 1, f"--atol is a probability difference in (0, 1] (got {self.atol})")
        check(0 <= self.min_agreement <= 1, f"--min-agreement is a fraction in [0, 1] (got {self.min_agreement})")
        check(self.out is None or self.out.suffix.lower() == ".onnx", f"--out must end in .onnx (got {self.out})")
        check(self.calib_count >= 1, f"--calib-count must be >= 1 (got {self.calib_count})")
        check(self.trt or not (self.int8 or self.calib is not None), "--int8 and --calib need --trt")
        check(self.trt_workspace > 0, "--trt-workspace must be positive")
        for name in ("trt_batch", "trt_size"):
            lo, opt, hi = (int(v) for v in getattr(self, name))
            flag = "--" + name.replace("_", "-")
            check(1 <= lo <= opt <= hi, f"{flag} needs 1 <= MIN <= OPT <= MAX (got {lo} {opt} {hi})")
            setattr(self, name, (lo, opt, hi))
        if self.static_batch is not None and self.trt:
            lo, opt, hi = self.trt_batch
            check(lo <= self.static_batch <= hi,
                  f"--static-batch {self.static_batch} lies outside --trt-batch {lo} {opt} {hi}")
            self.trt_batch = (self.static_batch,) * 3

    def members(self) -> list[MemberSpec]:
        """The checkpoints to export, each with its --weights / @weight (None: equal shares)."""
        return expand_members(self.checkpoint, self.weights)

    def param_budget(self) -> Optional[int]:
        """--max-params as a parameter count (None: no budget)."""
        from vr.models.budget import parse_param_budget

        return parse_param_budget(self.max_params)
