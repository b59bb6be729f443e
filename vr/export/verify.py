"""`vr verify MODEL`: run an .onnx or .engine on its golden set on this machine, with no dataset,
and check its graph hash; also what `vr export --trt` runs on every fresh engine."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vr.errors import VrError
from vr.export.config import VerifyConfig
from vr.util.io import file_sha256


def check_golden(predictor, golden: dict, what: str):
    """Predict the golden images with ``predictor``; VrError when any probability is further from
    PyTorch's than the golden set's tolerance (which also bounds every top-1 flip to a near-tie)."""
    from vr.export.golden import golden_images
    from vr.export.parity import compare, print_result
    from vr.runtime.base import check_finite

    names = list(golden.get("names") or [])
    got = check_finite(predictor.predict(golden_images(golden)), predictor.path, names)
    expected = np.asarray(golden["expected"], dtype=np.float32)
    r = compare(expected, got, names, None, float(golden["atol"]), 0.0)
    print_result(r, f"{what} on its golden set ({golden.get('precision', 'fp32')}, tolerance {golden['atol']:g})",
                 golden.get("source", "golden set"))
    if not r.passed:
        raise VrError(f"{predictor.path} fails its golden set: {'; '.join(r.failures)}")
    return r


def check_integrity(path: Path, meta: dict) -> str:
    """The file is the one vr exported: the graph hash for an .onnx, the engine hash for an
    .engine. Returns what was checked, in words."""
    if path.suffix.lower() == ".engine":
        want = (meta.get("tensorrt") or {}).get("engine_sha256")
        if not want:
            return "no engine hash recorded"
        if file_sha256(path) != want:
            raise VrError(f"{path} is not the engine vr built: its bytes changed since export (rebuild it)")
        return "engine bytes unchanged since the build"
    import onnx

    from vr.export.golden import graph_sha256

    want = meta.get("graph_sha256")
    if not want:
        return "no graph hash recorded"
    if graph_sha256(onnx.load(str(path))) != want:
        raise VrError(f"{path} is not the graph vr exported: its nodes or weights changed since export")
    return "graph and weights unchanged since export"


def _predictor(path: Path, meta: dict, device: str, scratch: Path):
    """The model's predictor here, and what runs it in words; an .onnx of a precision ONNX Runtime
    cannot execute on this CPU runs as its fp32 emulation, said so."""
    from vr.runtime.load import load_predictor

    try:
        p = load_predictor(path, device=device)
        return p, f"{p.runtime} on {p.provider}"
    except VrError:
        if path.suffix.lower() != ".onnx" or meta.get("precision") != "bf16" or device not in ("auto", "cpu"):
            raise
    from vr.export.parity import cpu_predictor

    return cpu_predictor(path, meta["precision"], scratch)


def run(cfg: VerifyConfig) -> dict:
    from vr.runtime.metadata import read_metadata
    from vr.util.console import info

    path = Path(cfg.model)
    if path.suffix.lower() not in (".onnx", ".engine"):
        raise VrError(f"vr verify checks exported models (.onnx, .engine); {path} is not one")
    meta = read_metadata(path)
    golden = meta.get("golden")
    if not isinstance(golden, dict) or not golden.get("images"):
        raise VrError(f"{path} carries no golden set (exported by an older vr): re-export it with vr export")
    integrity = check_integrity(path, meta)
    with tempfile.TemporaryDirectory(prefix="vr-verify-") as scratch:
        predictor, runtime = _predictor(path, meta, cfg.device, Path(scratch))
        info(f"{path}: {runtime} · precision {predictor.precision} · {integrity}")
        r = check_golden(predictor, golden, runtime)
    info(f"verified: {r.n} golden images, max |Δp| {r.max_abs_diff:.2e} <= {golden['atol']:g}, top-1 agreement "
         f"{r.agreement:.0%}")
    return {"path": str(path), "max_abs_diff": r.max_abs_diff, "agreement": r.agreement, "atol": golden["atol"],
            "integrity": integrity}
