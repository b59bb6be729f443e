"""`vr export`: the formats, one export_* function each, and run(config) that the CLI calls.

Every format goes through the same steps: build the artefact into a temporary file, run the
parity gate on it against PyTorch, and only then move it into place.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vr.errors import VrError
from vr.export.config import ExportConfig
from vr.models.factory import model_from_checkpoint

# name, --flag, file suffix, export function, what it needs (Ultralytics-style table)
FORMATS: tuple[tuple[str, str, str, str, str], ...] = (
    ("ONNX", "(always)", ".onnx", "export_onnx_model", "onnx + onnxruntime (installed with vr)"),
    ("TensorRT", "--trt", ".engine", "export_tensorrt_engine", "a CUDA GPU and pip install 'vr[gpu]'"),
)


def export_formats() -> list[dict[str, str]]:
    return [dict(zip(("format", "flag", "suffix", "function", "needs"), row)) for row in FORMATS]


@dataclass
class ExportJob:
    """What every export_* function needs: the checkpoint, its model, the gate images and the
    PyTorch reference probabilities (computed once, before anything is exported). An ensemble
    has several checkpoints (``ckpts``); ``ckpt`` and ``model`` are then the first member's."""

    cfg: ExportConfig
    ckpt: Any
    model: Any
    out: Path
    gate: Any = None  # parity.GateImages
    ref: Any = None  # np.ndarray [N, C]
    written: dict[str, Path] = field(default_factory=dict)
    ckpts: list = field(default_factory=list)  # every member, in order (default: [ckpt])
    models: list = field(default_factory=list)
    weights: list = field(default_factory=list)  # normalised to sum 1
    param_counts: list = field(default_factory=list)

    def __post_init__(self):
        self.ckpts = self.ckpts or [self.ckpt]
        self.models = self.models or [self.model]
        self.weights = self.weights or [1.0 / len(self.ckpts)] * len(self.ckpts)

    @property
    def ensemble(self) -> bool:
        return len(self.ckpts) > 1

    def write_onnx(self, path: Path, resize_impl: str, before_commit) -> Path:
        """The graph (one model or the ensemble) written atomically, gated by ``before_commit``."""
        from vr.export.onnx import export_onnx

        cfg = self.cfg
        if self.ensemble:
            return export_onnx(self.ckpts, path, cfg.tta, cfg.opset, cfg.static_batch, simplify=cfg.simplify,
                               resize_impl=resize_impl, model=self.models, weights=self.weights,
                               before_commit=before_commit)
        return export_onnx(self.ckpt, path, cfg.tta, cfg.opset, cfg.static_batch, simplify=cfg.simplify,
                           resize_impl=resize_impl, model=self.model, before_commit=before_commit)

    def metadata(self, resize_impl: str) -> dict[str, str]:
        from vr.export.onnx import build_ensemble_metadata, build_metadata
        from vr.models.factory import count_params

        cfg = self.cfg
        counts = self.param_counts or [count_params(m) for m in self.models]
        if self.ensemble:
            return build_ensemble_metadata(self.ckpts, self.weights, counts, cfg.tta, cfg.opset, resize_impl)
        return build_metadata(self.ckpt, cfg.tta, cfg.opset, resize_impl, param_count=counts[0])


def default_out(cfg: ExportConfig, ckpt, ensemble: bool = False) -> Path:
    if cfg.out is not None:
        return cfg.out
    base = Path(ckpt.path).parent if ckpt.path is not None else Path(".")
    return base / ("ensemble.onnx" if ensemble else "model.onnx")


def export_onnx_model(job: ExportJob) -> Path:
    """model.onnx: preprocessing + TTA + backbone + softmax + mean, gated against PyTorch."""
    from vr.export import parity

    cfg = job.cfg

    def gate(tmp: Path) -> None:
        parity.check_parity(parity.onnx_runner(tmp), job.ref, job.gate, "ONNX Runtime (CPU)",
                            cfg.atol, cfg.min_agreement, cfg.static_batch)

    path = job.write_onnx(job.out, cfg.resize_impl, gate)
    job.written["onnx"] = path
    return path


def _trt_gate_subset(job: ExportJob, batch: tuple[int, int, int], size: tuple[int, int, int]):
    """Gate images that fit the engine's optimisation profile."""
    from vr.export.parity import GateImages

    lo, hi = size[0], size[2]
    keep = [i for i, im in enumerate(job.gate.images) if lo <= im.height <= hi and lo <= im.width <= hi]
    if not keep:
        raise VrError(f"none of the parity-gate images fits --trt-size {size[0]} {size[1]} {size[2]}")
    g = job.gate
    sub = GateImages([g.images[i] for i in keep], [g.names[i] for i in keep],
                     [g.labels[i] for i in keep] if g.labels is not None else None,
                     g.source + (f", {len(keep)} inside the engine's size profile" if len(keep) < len(g.images) else ""))
    return sub, job.ref[keep]


def export_tensorrt_engine(job: ExportJob) -> Path:
    """model.engine + model.engine.json, built from the MatMul-resize variant of the graph.

    UNVERIFIED on real TensorRT in this repository's CI (no GPU): see vr/export/tensorrt.py.
    """
    from vr.export import parity, tensorrt

    cfg = job.cfg
    trt_atol, trt_agree = trt_bars(cfg)
    engine_path = job.out.with_suffix(".engine")
    sub, ref = _trt_gate_subset(job, cfg.trt_batch, cfg.trt_size)
    calib = None
    if cfg.int8:
        src = cfg.calib or _checkpoint_split(job.ckpt, "train")
        if src is None:
            raise VrError("--int8 needs calibration images: pass --calib DIR (the checkpoint's train folder is gone)")
        calib = tensorrt.calibration_sample(src, cfg.calib_count)
    with tempfile.TemporaryDirectory(prefix="vr-trt-") as tmpdir:
        trt_onnx = Path(tmpdir) / "model.matmul.onnx"

        def gate_graph(tmp: Path) -> None:
            parity.check_parity(parity.onnx_runner(tmp), job.ref, job.gate,
                                "ONNX Runtime (the MatMul-resize graph TensorRT builds from)", cfg.atol,
                                cfg.min_agreement, cfg.static_batch)

        job.write_onnx(trt_onnx, "matmul", gate_graph)

        def gate_engine(tmp: Path) -> None:
            parity.check_parity(tensorrt.EngineRunner(tmp), ref, sub, "TensorRT", trt_atol, trt_agree,
                                cfg.static_batch)

        meta = job.metadata("matmul")
        tensorrt.build_engine(
            trt_onnx, engine_path, metadata=meta, fp16=cfg.fp16, int8=cfg.int8, calib_paths=calib,
            batch=cfg.trt_batch, size=cfg.trt_size, workspace_gib=cfg.trt_workspace,
            timing_cache=cfg.trt_timing_cache or engine_path.with_name("timing.cache"),
            before_commit=gate_engine)
    job.written["engine"] = engine_path
    return engine_path


def trt_bars(cfg: ExportConfig) -> tuple[float, float]:
    """Reduced precision moves probabilities more than the preprocessing does: FP16 gets
    max(--atol, 0.03), INT8 max(--atol, 0.15) and agreement >= min(--min-agreement, 0.97)."""
    if cfg.int8:
        return max(cfg.atol, 0.15), min(cfg.min_agreement, 0.97)
    if cfg.fp16:
        return max(cfg.atol, 0.03), cfg.min_agreement
    return cfg.atol, cfg.min_agreement


def _checkpoint_split(ckpt, split: str) -> Path | None:
    data = (ckpt.config or {}).get("data")
    if not data:
        return None
    p = Path(str(data)) / split
    return p if p.is_dir() else None


def _member_line(ckpt, weight: float, n: int, ensemble: bool) -> str:
    from vr.models.factory import format_params

    pre = ckpt.preprocess
    w = f", weight {weight:.3g}" if ensemble else ""
    return (f"{ckpt.path}: {ckpt.model_name}, {pre.input_size} px (resize {pre.resize_size}, {pre.interpolation}){w}, "
            f"{format_params(n)} parameters")


def run(cfg: ExportConfig) -> dict[str, Path]:
    """Export the checkpoint (or the ensemble of checkpoints) in every requested format; returns
    {format: path}. The parameter budget and the class lists are checked before any work."""
    from vr.export import parity
    from vr.models.budget import check_param_budget
    from vr.models.checkpoint import load_checkpoint
    from vr.models.ensemble import normalised_weights
    from vr.models.factory import count_params, format_params
    from vr.util.console import info

    members = cfg.members()
    budget = cfg.param_budget()
    if cfg.trt:
        from vr.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail in one line before minutes of work
    for m in members:
        if m.path.suffix.lower() not in (".pt", ".pth"):
            raise VrError(f"vr export takes vr checkpoints (.pt); {m.path} is not one")
    ckpts = [load_checkpoint(m.path) for m in members]
    ensemble = len(ckpts) > 1
    orders = [None]
    if ensemble:
        from vr.export.onnx import ensemble_class_order

        orders = ensemble_class_order(ckpts)
    out = default_out(cfg, ckpts[0], ensemble)
    if out.suffix.lower() != ".onnx":
        raise VrError(f"--out must end in .onnx (got {out})")
    models = [model_from_checkpoint(c) for c in ckpts]
    counts = [count_params(m) for m in models]
    weights = normalised_weights(members)
    total = check_param_budget(counts, budget, what=f"the ensemble of {len(ckpts)} checkpoints" if ensemble
                               else str(ckpts[0].path))
    for ckpt, w, n in zip(ckpts, weights, counts):
        info(("member " if ensemble else "") + _member_line(ckpt, w, n, ensemble))
    gate = parity.gate_images(ckpts[0], cfg.verify, cfg.verify_count)
    info(f"parity gate on {gate.source}")
    ref = parity.ensemble_torch_probs(models, [c.preprocess for c in ckpts], weights, orders, gate.images, cfg.tta)
    job = ExportJob(cfg, ckpts[0], models[0], out, gate, ref, ckpts=ckpts, models=models, weights=weights,
                    param_counts=counts)
    export_onnx_model(job)
    if cfg.trt:
        export_tensorrt_engine(job)
    for kind, path in job.written.items():
        info(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {kind})")
    what = f"ensemble of {len(ckpts)} ({' + '.join(format_params(n) for n in counts)})" if ensemble else "model"
    budget_note = f", within --max-params {format_params(budget)}" if budget is not None else ""
    info(f"parameters: {format_params(total)} ({total:,}), {what}{budget_note}")
    info(f"input 'images': uint8 [N, H, W, 3] RGB, one size per batch; output 'probs': float32 "
         f"[N, {ckpts[0].num_classes}]; TTA {cfg.tta}" + (" in every member" if ensemble else ""))
    return job.written
