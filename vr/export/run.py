"""`vr export`: run(config) writes every format of the table (vr.formats.FORMATS) that the config
asks for, each through its export function here.

Every format goes through the same steps: build the artefact into a temporary file, run the
parity gate on it against PyTorch through the runtime layer (the predictor eval and submit use),
add the golden set, and only then move it into place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vr.errors import VrError
from vr.export.config import ExportConfig
from vr.formats import FORMATS, load_object


@dataclass
class ExportJob:
    """What every export function needs: the checkpoints (one, or an ensemble's members), their
    models, weights and parameter counts, the gate images with the PyTorch reference computed once,
    the golden set, the calibration images, and what has been written so far."""

    cfg: ExportConfig
    ckpts: list
    models: list
    weights: list  # normalised to sum 1
    counts: list
    out: Path
    gate: Any = None  # parity.GateImages
    ref: Any = None  # np.ndarray [N, C]
    golden: dict | None = None  # golden.build_golden, without its tolerance yet
    calib: list | None = None  # PIL images, for --precision int8
    tta_scores: list | None = None  # --tta auto: every mode's accuracy on the gate images
    written: dict[str, Path] = field(default_factory=dict)

    @property
    def ensemble(self) -> bool:
        return len(self.ckpts) > 1

    def write_onnx(self, path: Path, resize_impl: str, before_commit) -> Path:
        """The graph (one model or the ensemble) written atomically, gated by ``before_commit``."""
        from vr.export.onnx import export_onnx

        cfg = self.cfg
        one = not self.ensemble
        return export_onnx(self.ckpts[0] if one else self.ckpts, path, cfg.tta, cfg.opset, cfg.static_batch,
                           simplify=cfg.simplify, resize_impl=resize_impl,
                           model=self.models[0] if one else self.models, weights=None if one else self.weights,
                           before_commit=before_commit, precision=cfg.precision, calib=self.calib)

    def bars(self):
        from vr.export.parity import gate_bars

        return gate_bars(self.cfg.precision, self.cfg.atol, self.cfg.min_agreement)


def gate_graph(job: ExportJob, tmp: Path, what: str) -> None:
    """The parity gate and the golden set of a temporary .onnx: gated on ONNX Runtime (CPU, the
    portable reference) as eval will run it, then its golden set (with the tolerance measured
    here) and its graph hash are added to the file."""
    import tempfile

    from vr.export import golden, parity
    from vr.export.verify import check_golden

    precision = job.cfg.precision
    with tempfile.TemporaryDirectory(prefix="vr-gate-") as scratch:
        predictor, runtime = parity.cpu_predictor(tmp, precision, Path(scratch))
        parity.check_parity(predictor, job.ref, job.gate, f"{what}: {runtime}" if what else runtime, job.bars())
        got = predictor.predict(golden.golden_images(job.golden))
        measured = float(np.abs(got - np.asarray(job.golden["expected"])).max())
        g = golden.with_tolerance(job.golden, precision, measured)
        golden.add_to_onnx(tmp, {"golden": g, **({"tta_scores": job.tta_scores} if job.tta_scores else {})})
        check_golden(parity.cpu_predictor(tmp, precision, Path(scratch))[0], g, f"the written graph ({runtime})")


def export_onnx_model(job: ExportJob) -> Path:
    """model.onnx: preprocessing + TTA + backbone + softmax + mean, gated against PyTorch."""
    path = job.write_onnx(job.out, job.cfg.resize_impl, lambda tmp: gate_graph(job, tmp, ""))
    job.written["onnx"] = path
    return path


def trt_ready_onnx(job: ExportJob) -> Path:
    """MODEL.trt.onnx: the graph TensorRT builds from (MatMul resize: TensorRT rejects antialiased
    Resize), gated like model.onnx and checked against TensorRT's ONNX parser support; model.onnx
    itself when it already uses the MatMul resize."""
    from vr.export.trt_compat import require_tensorrt_compat

    if job.cfg.resize_impl == "matmul" and "onnx" in job.written:
        path = job.written["onnx"]
    else:
        path = job.write_onnx(job.out.with_suffix(".trt.onnx"), "matmul", lambda tmp: gate_graph(
            job, tmp, "the MatMul-resize graph TensorRT builds from"))
        job.written["trt_onnx"] = path
    import onnx

    require_tensorrt_compat(onnx.load(str(path)), str(path))
    return path


def _trt_gate_subset(job: ExportJob):
    """Gate images that fit the engine's optimisation profile, and their PyTorch reference."""
    from vr.export.parity import GateImages

    lo, hi = job.cfg.trt_size[0], job.cfg.trt_size[2]
    g = job.gate
    keep = [i for i, im in enumerate(g.images) if lo <= im.height <= hi and lo <= im.width <= hi]
    if not keep:
        raise VrError(f"none of the parity-gate images fits --trt-size {lo} {job.cfg.trt_size[1]} {hi}")
    sub = GateImages([g.images[i] for i in keep], [g.names[i] for i in keep],
                     [g.labels[i] for i in keep] if g.labels is not None else None,
                     g.source + (f", {len(keep)} inside the engine's size profile" if len(keep) < len(g.images) else ""))
    return sub, job.ref[keep]


def build_checked_engine(cfg: ExportConfig, onnx_path: Path, engine_path: Path, gate=None) -> Path:
    """The engine from ``onnx_path``, kept only when it passes ``gate(predictor)`` (the parity gate,
    when a checkpoint is at hand) and the golden set the graph carries."""
    from vr.export import tensorrt
    from vr.export.verify import check_golden
    from vr.runtime.load import load_predictor

    def check(tmp_engine: Path, meta: dict) -> None:
        predictor = load_predictor(tmp_engine, runtime="tensorrt", metadata=meta, device="cuda")
        if gate is not None:
            gate(predictor)
        if meta.get("golden"):
            check_golden(predictor, meta["golden"], "TensorRT")

    return tensorrt.build_engine(onnx_path, engine_path, batch=cfg.trt_batch, size=cfg.trt_size,
                                 workspace_gib=cfg.trt_workspace,
                                 timing_cache=cfg.trt_timing_cache or engine_path.with_name("timing.cache"),
                                 before_commit=check)


def export_tensorrt_engine(job: ExportJob) -> Path:
    """model.engine + model.engine.json, strongly typed from MODEL.trt.onnx, gated against PyTorch
    on the images inside its profile and on its golden set. UNVERIFIED on a GPU (docs/testing.md)."""
    from vr.export import parity

    cfg = job.cfg
    source = trt_ready_onnx(job)
    sub, ref = _trt_gate_subset(job)
    engine = build_checked_engine(cfg, source, job.out.with_suffix(".engine"), gate=lambda p: parity.check_parity(
        p, ref, sub, "TensorRT", job.bars()))
    job.written["engine"] = engine
    return engine


def engine_from_onnx(cfg: ExportConfig) -> dict[str, Path]:
    """`vr export MODEL.onnx --trt`: an engine for this machine from a graph vr exported (and gated)
    elsewhere, checked on the golden set it carries."""
    from vr.export.tensorrt import require_tensorrt
    from vr.export.trt_compat import require_tensorrt_compat
    from vr.runtime.metadata import read_metadata
    from vr.util.console import info

    import onnx

    src = Path(cfg.checkpoint[0])
    meta = read_metadata(src)
    if meta.get("resize_impl") != "matmul":
        raise VrError(f"{src} resizes with the antialiased ONNX Resize, which TensorRT rejects: build from its "
                      f"MODEL.trt.onnx, or re-export the checkpoint with --resize-impl matmul")
    require_tensorrt()
    require_tensorrt_compat(onnx.load(str(src)), str(src))
    out = cfg.out.with_suffix(".engine") if cfg.out is not None else src.with_name(src.name.removesuffix(".trt.onnx")
                                                                                  .removesuffix(".onnx") + ".engine")
    from vr.util.paths import check_outputs

    check_outputs([("the engine", out), ("the engine's metadata", out.with_name(out.name + ".json"))],
                  [("the graph", src)])
    engine = build_checked_engine(cfg, src, out)
    info(f"wrote {engine} ({engine.stat().st_size / 1e6:.1f} MB, TensorRT, from {src})")
    return {"engine": engine}


def checkpoint_split(ckpt, split: str) -> Path | None:
    data = (ckpt.config or {}).get("data")
    if not data:
        return None
    p = Path(str(data)) / split
    return p if p.is_dir() else None


def _member_line(ckpt, weight: float, n: int, ensemble: bool) -> str:
    from vr.util.fmt import params as format_params

    pre = ckpt.preprocess
    w = f", weight {weight:.3g}" if ensemble else ""
    return (f"{ckpt.path}: {ckpt.model_name}, {pre.input_size} px (resize {pre.resize_size}, {pre.interpolation}){w}, "
            f"{format_params(n)} parameters")


def calibration_images(cfg: ExportConfig, ckpt) -> list | None:
    """--precision int8: the calibration images (--calib, else the checkpoint's train folder)."""
    if cfg.precision != "int8":
        return None
    from vr.data.images import load_rgb
    from vr.export.calibration import calibration_sample
    from vr.util.console import info

    src = cfg.calib or checkpoint_split(ckpt, "train")
    if src is None:
        raise VrError("--precision int8 needs calibration images: pass --calib DIR (the checkpoint's train folder "
                      "is gone)")
    paths = calibration_sample(src, cfg.calib_count)
    info(f"int8 calibration on {len(paths)} images of {src}")
    return [load_rgb(p) for p in paths]


def choose_tta(cfg: ExportConfig, gate, probs_of, what: str):
    """--tta auto: every mode's PyTorch accuracy on the labelled gate images; the best mode (ties:
    the fewest views) replaces auto. Returns (config, the chosen mode's probabilities, scores)."""
    from vr.models.tta import choose_tta as choose, print_tta_scores, tta_scores

    if gate.labels is None:
        raise VrError("--tta auto needs labelled images to score the modes on: the checkpoint's val folder is gone, "
                      "so pass --verify DIR (an ImageFolder: DIR/<class>/<image>)")
    labels, probs = np.asarray(gate.labels), {}

    def accuracy_of(mode: str):
        probs[mode] = probs_of(mode)
        return int((probs[mode].argmax(1) == labels).sum()), None

    scores = tta_scores(accuracy_of, len(labels), gate.source)
    chosen = choose(scores)
    print_tta_scores(scores, chosen, what)
    return cfg.replace(tta=chosen), probs[chosen], scores


def check_export_paths(cfg: ExportConfig, ckpts: list, out: Path) -> None:
    """What export writes (the .onnx, and with --trt the .trt.onnx, .engine and its .json) is never
    a checkpoint or the --config file, nor inside a folder it reads images from (--verify,
    --calib, --golden, the checkpoint's data folder, whose val/ the gate reads)."""
    from vr.util.paths import check_outputs, check_owned_file, config_inputs, model_inputs

    outputs = [("--out", out)]
    if cfg.trt:
        engine = out.with_suffix(".engine")
        outputs += [("the TensorRT-ready graph", out.with_suffix(".trt.onnx")), ("the engine", engine),
                    ("the engine's metadata", engine.with_name(engine.name + ".json"))]
    dirs = [("the --verify folder", cfg.verify), ("the --calib folder", cfg.calib), ("the --golden folder", cfg.golden)]
    dirs += [(f"the data folder of {c.path}", Path(str((c.config or {}).get("data")))) for c in ckpts
             if (c.config or {}).get("data")]
    check_outputs(outputs, model_inputs([c.path for c in ckpts], "the checkpoint") + config_inputs(cfg), dirs)
    for what, path in outputs:
        check_owned_file(path, "export", what)


def prepare_job(cfg: ExportConfig) -> ExportJob:
    """Checkpoints, models, the budget, the gate images and their PyTorch reference, the golden
    set: everything checked before any export work starts."""
    from vr.export import golden, parity
    from vr.models.budget import check_param_budget
    from vr.models.checkpoint import load_checkpoint
    from vr.models.ensemble import normalised_weights
    from vr.models.factory import count_params, model_from_checkpoint
    from vr.util.console import info

    members = cfg.members()
    for m in members:
        if m.path.suffix.lower() not in (".pt", ".pth"):
            raise VrError(f"vr export takes vr checkpoints (.pt); {m.path} is not one")
    ckpts = [load_checkpoint(m.path) for m in members]
    orders = [None]
    if len(ckpts) > 1:
        from vr.export.onnx import ensemble_class_order

        orders = ensemble_class_order(ckpts)
    out = cfg.out or (Path(ckpts[0].path).parent / ("ensemble.onnx" if len(ckpts) > 1 else "model.onnx"))
    check_export_paths(cfg, ckpts, out)
    models = [model_from_checkpoint(c) for c in ckpts]
    counts = [count_params(m) for m in models]
    weights = normalised_weights(members)
    check_param_budget(counts, cfg.param_budget(), what=f"the ensemble of {len(ckpts)} checkpoints" if len(ckpts) > 1
                       else str(ckpts[0].path))
    for ckpt, w, n in zip(ckpts, weights, counts):
        info(("member " if len(ckpts) > 1 else "") + _member_line(ckpt, w, n, len(ckpts) > 1))
    gate = parity.gate_images(ckpts[0], cfg.verify, cfg.verify_count)
    info(f"parity gate on {gate.source}")
    pres = [c.preprocess for c in ckpts]
    scores = None
    if cfg.tta == "auto":
        cfg, ref, scores = choose_tta(cfg, gate, lambda mode: parity.ensemble_torch_probs(
            models, pres, weights, orders, gate.images, mode), str(ckpts[0].path))
    else:
        ref = parity.ensemble_torch_probs(models, pres, weights, orders, gate.images, cfg.tta)
    from vr.runtime.base import check_finite

    check_finite(ref, "+".join(str(c.path) for c in ckpts), gate.names)  # NaN weights: stop before exporting
    g_images, g_names = golden.synthetic_golden(ckpts[0].preprocess)
    source = f"{len(g_images)} synthetic images"
    if cfg.golden is not None:
        real, real_names = golden.real_golden(cfg.golden, cfg.golden_count)
        g_images, g_names, source = g_images + real, g_names + real_names, f"{source} + {len(real)} from {cfg.golden}"
    g_ref = parity.ensemble_torch_probs(models, pres, weights, orders, g_images, cfg.tta)
    return ExportJob(cfg, ckpts, models, weights, counts, out, gate, ref,
                     golden=golden.build_golden(g_images, g_names, g_ref, source),
                     calib=calibration_images(cfg, ckpts[0]), tta_scores=scores)


def run(cfg: ExportConfig) -> dict[str, Path]:
    """Export the checkpoint (or the ensemble of checkpoints) in every format of the table the
    config asks for; returns {format: path}. The budget and the classes are checked first."""
    from vr.util.console import info
    from vr.util.fmt import params as format_params

    wanted = [f for f in FORMATS if f.exporter and (f.export_flag is None or getattr(cfg, f.export_flag))]
    for f in wanted:  # fail in one line before minutes of work
        if f.runtime == "tensorrt":
            from vr.export.tensorrt import require_tensorrt

            require_tensorrt()
    if Path(cfg.checkpoint[0]).suffix.lower() == ".onnx":
        return engine_from_onnx(cfg)
    job = prepare_job(cfg)
    if job.out.suffix.lower() != ".onnx":
        raise VrError(f"--out must end in .onnx (got {job.out})")
    for f in wanted:
        load_object(f.exporter)(job)
    for kind, path in job.written.items():
        info(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {kind})")
    total = sum(job.counts)
    what = (f"ensemble of {len(job.ckpts)} ({' + '.join(format_params(n) for n in job.counts)})" if job.ensemble
            else "model")
    budget = cfg.param_budget()
    budget_note = f", within --max-params {format_params(budget)}" if budget is not None else ""
    info(f"parameters: {format_params(total)} ({total:,}), {what}{budget_note}")
    info(f"input 'images': uint8 [N, H, W, 3] RGB, one size per batch; output 'probs': float32 "
         f"[N, {job.ckpts[0].num_classes}]; TTA {job.cfg.tta}; precision {cfg.precision}"
         + (" in every member" if job.ensemble else ""))
    return job.written
