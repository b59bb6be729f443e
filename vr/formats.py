"""The one table of model formats. It drives suffix detection (``format_for``), dispatch to a
predictor (``vr.runtime.load.load_predictor``), what ``vr export`` writes (``vr.export.run``), and
what each format needs installed. Light on purpose: the CLI reads it at start-up.

Adding a runtime is one backend file in ``vr/runtime/`` plus one row here (docs/architecture.md
shows a worked example).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vr.errors import VrError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # --precision of vr export: what the graph's backbone computes in


@dataclass(frozen=True)
class Format:
    runtime: str  # what reports call it: torch, onnxruntime, tensorrt
    name: str  # in words
    noun: str  # the file, in a sentence: "a .pt checkpoint"
    suffixes: tuple[str, ...]  # the first is what vr writes
    predictor: str  # "module:Class" behind vr.runtime.base.Predictor
    exporter: str | None  # "module:function(job) -> Path" run by vr export; None: written by vr train
    export_flag: str | None  # the ExportConfig field that asks for it; None: always exported
    needs: str  # what it needs, in words (help text and errors)
    modules: tuple[str, ...]  # Python modules it imports
    install: str  # how to get them

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def missing_module(self) -> str | None:
        """The first of ``modules`` that cannot be imported (None: all present)."""
        import importlib.util
        import sys

        for m in self.modules:
            if m in sys.modules:  # imported already (None: blocked, as `import` would fail)
                if sys.modules[m] is None:
                    return m
                continue
            try:
                if importlib.util.find_spec(m) is None:
                    return m
            except (ImportError, ValueError):
                return m
        return None


FORMATS: tuple[Format, ...] = (
    Format("torch", "PyTorch checkpoint", "a .pt checkpoint", (".pt", ".pth"), "vr.runtime.torch_backend:TorchPredictor", None, None,
           "torch (installed with vr)", ("torch",), "pip install vr"),
    Format("onnxruntime", "ONNX model", "an .onnx model", (".onnx",), "vr.runtime.onnxruntime_backend:OnnxPredictor",
           "vr.export.run:export_onnx_model", None, "onnx + onnxruntime (installed with vr)",
           ("onnx", "onnxruntime"), "pip install vr"),
    Format("tensorrt", "TensorRT engine", "a TensorRT .engine", (".engine",), "vr.runtime.tensorrt_backend:TensorRTPredictor",
           "vr.export.run:export_tensorrt_engine", "trt", "a CUDA GPU and TensorRT 10.x or 11.x",
           ("tensorrt",), "pip install 'vr[gpu]'"),
)


def model_suffixes() -> tuple[str, ...]:
    return tuple(s for f in FORMATS for s in f.suffixes)


def by_runtime(runtime: str) -> Format:
    for f in FORMATS:
        if f.runtime == runtime:
            return f
    raise KeyError(runtime)


def describe_suffixes() -> str:
    """'a .pt checkpoint, an .onnx model or a TensorRT .engine', for errors."""
    nouns = [f.noun for f in FORMATS]
    return ", ".join(nouns[:-1]) + " or " + nouns[-1]


def format_for(path: str | Path) -> Format:
    """The format of a model file, by its suffix; a missing file, a folder or an unknown suffix is
    one line."""
    path = Path(path)
    if not path.exists():
        raise VrError(f"model not found: {path}")
    if path.is_dir():
        raise VrError(f"{path} is a folder; pass a model file ({describe_suffixes()})")
    suffix = path.suffix.lower()
    for f in FORMATS:
        if suffix in f.suffixes:
            return f
    raise VrError(f"cannot run {path}: expected {describe_suffixes()}")


def load_object(spec: str) -> Any:
    """``"package.module:name"`` -> the object (imported now, not at start-up)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
