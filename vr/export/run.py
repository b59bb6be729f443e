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
    PyTorch reference probabilities (computed once, before anything is exported)."""

    cfg: ExportConfig
    ckpt: Any
    model: Any
    out: Path
    gate: Any = None  # parity.GateImages
    ref: Any = None  # np.ndarray [N, C]
    written: dict[str, Path] = field(default_factory=dict)


def default_out(cfg: ExportConfig, ckpt) -> Path:
    if cfg.out is not None:
        return cfg.out
    base = Path(ckpt.path).parent if ckpt.path is not None else Path(".")
    return base / "model.onnx"


def export_onnx_model(job: ExportJob) -> Path:
    """model.onnx: preprocessing + TTA + backbone + softmax + mean, gated against PyTorch."""
    from vr.export import parity
    from vr.export.onnx import export_onnx

    cfg = job.cfg

    def gate(tmp: Path) -> None:
        parity.check_parity(parity.onnx_runner(tmp), job.ref, job.gate, "ONNX Runtime (CPU)",
                            cfg.atol, cfg.min_agreement, cfg.static_batch)

    path = export_onnx(job.ckpt, job.out, cfg.tta, cfg.opset, cfg.static_batch, simplify=cfg.simplify,
                       resize_impl=cfg.resize_impl, model=job.model, before_commit=gate)
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
    from vr.export.onnx import build_metadata, export_onnx

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

        export_onnx(job.ckpt, trt_onnx, cfg.tta, cfg.opset, cfg.static_batch, simplify=cfg.simplify,
                    resize_impl="matmul", model=job.model, before_commit=gate_graph)

        def gate_engine(tmp: Path) -> None:
            parity.check_parity(tensorrt.EngineRunner(tmp), ref, sub, "TensorRT", trt_atol, trt_agree,
                                cfg.static_batch)

        meta = build_metadata(job.ckpt, cfg.tta, cfg.opset, "matmul")
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


def run(cfg: ExportConfig) -> dict[str, Path]:
    """Export the checkpoint in every requested format; returns {format: path}."""
    from vr.export import parity
    from vr.models.checkpoint import load_checkpoint
    from vr.util.console import info

    if cfg.trt:
        from vr.export.tensorrt import require_tensorrt

        require_tensorrt()  # fail in one line before minutes of work
    ckpt = load_checkpoint(cfg.checkpoint)
    out = default_out(cfg, ckpt)
    if out.suffix.lower() != ".onnx":
        raise VrError(f"--out must end in .onnx (got {out})")
    model = ckpt.create_model()
    gate = parity.gate_images(ckpt, cfg.verify, cfg.verify_count)
    info(f"parity gate on {gate.source}")
    ref = parity.torch_probs(model, ckpt.preprocess, gate.images, cfg.tta)
    job = ExportJob(cfg, ckpt, model, out, gate, ref)
    export_onnx_model(job)
    if cfg.trt:
        export_tensorrt_engine(job)
    for kind, path in job.written.items():
        info(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {kind})")
    info(f"input 'images': uint8 [N, H, W, 3] RGB, one size per batch; output 'probs': float32 "
         f"[N, {ckpt.num_classes}]; TTA {cfg.tta}")
    return job.written
