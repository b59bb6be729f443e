"""manifest.json: what produced a run folder or an eval report.

``write_manifest(folder, config, providers=None)`` records the vr version, the versions of Python
and of the libraries that decide the numbers (torch, torchvision, timm, onnx, onnxruntime,
tensorrt; None when not installed), the device (GPU name under CUDA, else the CPU model), the
execution providers, the command line and the config. Versions come from the installed package
metadata (importlib.metadata), so nothing is imported to read them (tensorrt never is); torch is
asked for the GPU name.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"

# distribution names tried in order for each library (GPU builds ship under other names)
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-cu13"),
}


def package_version(*dists: str) -> str | None:
    """The installed version of the first of ``dists`` that is installed, else None."""
    from importlib import metadata

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    import vr

    out: dict[str, str | None] = {"vr": vr.__version__, "python": platform.python_version()}
    out.update({name: package_version(*dists) for name, dists in PACKAGES.items()})
    return out


def cpu_name() -> str:
    """The CPU model: /proc/cpuinfo on Linux, else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_driver() -> bool:
    import shutil

    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl") \
        or shutil.which("nvidia-smi") is not None


def device_info() -> dict[str, Any]:
    """{"name": GPU SKU(s) when CUDA is available, else the CPU model; "cuda": [...]; "cpu": ...}."""
    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "cuda": []}
    # torch is asked for the GPU names when it is loaded already (training, checkpoints) or there is
    # an NVIDIA driver; a graph run on a CPU-only machine never imports torch (2-3 s of a `vr eval`)
    torch = sys.modules.get("torch")
    if torch is None and _nvidia_driver():
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                info["cuda_version"] = torch.version.cuda
        except Exception:  # a broken driver must not cost the run its manifest
            info["cuda"] = []
    names = info["cuda"]
    info["name"] = (names[0] if len(set(names)) == 1 else ", ".join(names)) if names else info["cpu"]
    return info


def _plain(v: Any) -> Any:
    """JSON-safe copy: paths and other objects become strings."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


_command: list[str] | None = None


def set_command(argv: list[str] | None) -> None:
    """Record the command line as the user typed it (the CLI calls this; sys.argv is the fallback)."""
    global _command
    _command = None if argv is None else [str(a) for a in argv]


def collect_manifest(config: dict | None = None, providers: Any = None, argv: list[str] | None = None) -> dict:
    versions = library_versions()
    return {
        "vr_version": versions["vr"],
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": versions,
        "platform": platform.platform(),
        "device": device_info(),
        "providers": _plain(providers),
        "command": list(argv if argv is not None else (_command or sys.argv)),
        "cwd": os.getcwd(),
        "config": _plain(config or {}),
    }


def write_manifest(folder: str | os.PathLike, config: dict | None = None, providers: Any = None) -> dict:
    """Write FOLDER/manifest.json atomically and return what was written.

    ``config`` is the command's config as a dict (``cfg.to_dict()``); ``providers`` what actually
    ran, e.g. ``["cpu"]`` for a training run or, for an eval, one entry per model with its runtime
    and execution providers read back from the session.
    """
    from vr.util.io import atomic_write_json

    manifest = collect_manifest(config, providers)
    atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)
    return manifest
