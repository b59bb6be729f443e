"""ExportConfig: every option of `vr export`, validated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, check_choice, option
from vr.formats import PRECISIONS
from vr.models.ensemble import SPELLING, MemberSpec, expand_members
from vr.models.tta import AUTO, TTA_MODES

MIN_OPSET, MAX_OPSET = 18, 20  # antialiased Resize needs 18; PyTorch's TorchScript exporter stops at 20
RESIZE_IMPLS = ("resize", "matmul")

G, V, P, T, E = "Graph", "Parity gate", "Precision", "TensorRT", "Ensemble and budget"


@dataclass
class ExportConfig(ConfigBase):
    checkpoint: list[Path] = option(help=f"A vr checkpoint (.pt) written by vr train. Several (or {SPELLING}) export one soft-voting ensemble: one graph in which every member runs its own preprocessing (size, resize, crop, mean/std), the same --tta views and its backbone, and the members' probabilities are averaged (--weights). Members must share their class names. With --trt, an .onnx written by vr export (its TensorRT-ready MODEL.trt.onnx, or any export with --resize-impl matmul) builds an engine on this machine from that graph alone, checked against the golden set it carries.", argument=True)
    out: Optional[Path] = option(None, "Output ONNX file (default: model.onnx beside the checkpoint; ensemble.onnx beside the first checkpoint of an ensemble).", group=G)
    tta: str = option("none", "Test-time augmentation inside the graph: none; flip (centre crop + mirror); five-crop (centre + 4 corners of the resized image); ten-crop (five-crop + mirrors). Probabilities are averaged over the views. auto: every mode scored (PyTorch) on the gate's labelled images (the checkpoint's val folder or --verify DIR), the best kept (ties: the fewest views), the table printed and stored in the model's metadata (tta_scores).", choices=TTA_MODES + (AUTO,), group=G)
    opset: int = option(18, f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (antialiased Resize needs 18).", group=G)
    static_batch: Optional[int] = option(None, "Fix the batch dimension to N (default: dynamic).", group=G)
    simplify: bool = option(False, "Simplify the graph with onnxslim (pip install onnxslim).", group=G)
    resize_impl: str = option("resize", "How the graph resizes: resize = the ONNX Resize op with antialiasing (fastest on ONNX Runtime); matmul = PIL's filter weights applied with MatMul (plain ops, for runtimes without antialiased Resize; --trt always uses it).", choices=RESIZE_IMPLS, group=G)
    verify: Optional[Path] = option(None, "Images for the parity gate: an ImageFolder (DIR/<class>/<image>) or a flat folder. Default: the checkpoint's val folder when it still exists, else generated images.", group=V)
    verify_count: int = option(200, "At most this many images are used by the parity gate (spread evenly over the folder).", group=V)
    atol: float = option(0.01, "Largest absolute difference in any class probability allowed between PyTorch and the export.", group=V)
    min_agreement: float = option(0.995, "Smallest fraction of images on which PyTorch and the export must pick the same top-1 class (near-ties in PyTorch's output, top two within 1e-3, are not counted as disagreements).", group=V)
    precision: str = option("fp32", "What the backbone computes in, written into the graph: fp32; fp16 or bf16 (weights and activations cast, Casts at its borders); int8 (explicit QuantizeLinear/DequantizeLinear pairs, calibrated on --calib images). Preprocessing, softmax and the TTA mean always stay float32. The variant must pass the parity gate against the fp32 PyTorch pipeline: fp16/bf16 top-1 agreement >= 99.5%, int8 top-1 accuracy within 1 point. A TensorRT engine (--trt) is built strongly typed from this graph.", choices=PRECISIONS, group=P)
    calib: Optional[Path] = option(None, "INT8 calibration images: an ImageFolder (a class-balanced sample is drawn) or a flat folder (default: the checkpoint's train folder).", group=P)
    calib_count: int = option(200, "Number of INT8 calibration images.", group=P)
    golden: Optional[Path] = option(None, "Also embed up to --golden-count real images of this folder in the model's golden set (off by default: they are your data). The golden set (synthetic structured images by default) and PyTorch's probabilities for them let `vr verify MODEL` check the model on any machine, without a dataset.", group=V)
    golden_count: int = option(4, "Real images taken from --golden.", group=V)
    trt: bool = option(False, "Also build a TensorRT engine, strongly typed, from the gated TensorRT-ready graph MODEL.trt.onnx (needs a CUDA GPU and TensorRT 10.x/11.x: pip install 'vr[gpu]'). Never verified on a GPU yet.", group=T)
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
        check_choice("TTA mode", self.tta, TTA_MODES + (AUTO,))
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
        check(self.golden_count >= 1, f"--golden-count must be >= 1 (got {self.golden_count})")
        check_choice("precision", self.precision, PRECISIONS)
        check(self.precision == "int8" or self.calib is None, "--calib is for --precision int8")
        graphs = [m for m in self.checkpoint if Path(m).suffix.lower() == ".onnx"]
        if graphs:
            check(self.trt and len(self.checkpoint) == 1,
                  f"{graphs[0]} is already exported: vr export takes an .onnx only with --trt, alone, to build "
                  "a TensorRT engine from it")
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


@dataclass
class VerifyConfig(ConfigBase):
    model: Path = option(help="An .onnx or TensorRT .engine written by vr export: its golden set (images and "
                              "PyTorch's probabilities, stored in its metadata) is run on this machine, and its "
                              "graph (or engine) hash checked.", argument=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N: where the model runs (an .onnx: ONNX Runtime's "
                                 "TensorRT, CUDA or CPU provider; an .engine: the GPU).")
