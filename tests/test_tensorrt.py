"""TensorRT on a CPU machine: what can be checked without TensorRT.

TensorRT cannot be installed here, so no test below builds or runs a real engine (the cuda-marked
tests in test_export.py / test_ensemble.py do, on a GPU machine that has it; none has run yet).
What is checked: the module uses none of the names TensorRT 11 removed; against an API surface
that has only TensorRT 11's names, `vr export --trt` builds strongly typed, sets no precision flag,
hands the parser exactly the gated MatMul-resize graph MODEL.trt.onnx, and writes the sidecar an
engine needs (version, GPU, compute capability, golden set, hashes); engines built elsewhere are
refused in one line that says how to rebuild them.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

import pytest

from test_export import CLASSES, make_checkpoint
from vr.errors import VrError

REPO = Path(__file__).resolve().parents[1]
# Removed by TensorRT 11 (NVIDIA's 10.x -> 11.x migration guide, ../shared/notes/tensorrt-11.md):
# the weakly typed builder flags, the INT8 calibrators, precision constraints and per-layer types.
REMOVED = ("BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.FP8", "BuilderFlag.INT4",
           "IInt8EntropyCalibrator2", "IInt8Calibrator", "int8_calibrator", "set_calibration_profile",
           "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS", "platform_has_fast_fp16",
           "platform_has_fast_int8", "set_output_type", "EXPLICIT_BATCH")


def test_tensorrt_code_uses_no_name_tensorrt_11_removed():
    for f in ("vr/export/tensorrt.py", "vr/runtime/tensorrt_backend.py"):
        code = (REPO / f).read_text()
        for name in REMOVED:
            assert name not in code, f"{f} uses {name}, which TensorRT 11 removed"
        assert not re.search(r"\.precision\s*=", code), f"{f} sets a layer precision (weak typing)"


class Trt11:
    """Only TensorRT 11's names (an attribute it lacks is an AttributeError, as on the real module).
    The 'engine' it serializes is the ONNX file it parsed, so the test can see what TensorRT got."""

    __version__ = "11.4.0"

    def __init__(self):
        self.seen: dict = {"flags": [], "network_flags": None}
        trt = self

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class MemoryPoolType:
            WORKSPACE = 0

        class Logger:
            WARNING, ERROR = 2, 1

            def __init__(self, level):
                pass

        class Network:
            def get_input(self, i):
                return types.SimpleNamespace(name="images")

        class Config:
            __slots__ = ()  # no int8_calibrator, no other attribute to set

            def set_memory_pool_limit(self, pool, size):
                trt.seen["workspace"] = size

            def add_optimization_profile(self, p):
                pass

            def set_flag(self, f):
                trt.seen["flags"].append(f)

            def create_timing_cache(self, data):
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"timing")

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                trt.seen["profile"] = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                trt.seen["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return Path(trt.seen["onnx"]).read_bytes()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                trt.seen["onnx"] = path
                return True

        self.NetworkDefinitionCreationFlag, self.MemoryPoolType, self.Logger = (
            NetworkDefinitionCreationFlag, MemoryPoolType, Logger)
        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.fixture
def fake_trt(monkeypatch):
    """TensorRT 11's API on a 'GPU' whose engines are run, for the gate and the golden check, by a
    stand-in predictor that reads the serialized bytes as the ONNX graph they are (ONNX Runtime)."""
    from vr.export import tensorrt as trt_mod
    from vr.runtime import onnxruntime_backend, tensorrt_backend

    trt = Trt11()
    monkeypatch.setattr(trt_mod, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_backend, "gpu_identity", lambda index=0: {"gpu": "Fake GPU", "compute_capability": "9.0"})

    class EngineAsGraph(onnxruntime_backend.OnnxPredictor):
        def __init__(self, path, device="auto", metadata=None, **kw):
            kw.pop("threads", None)
            super().__init__(path, "cpu", metadata=metadata, **kw)
            self.runtime = "tensorrt (stand-in: ONNX Runtime on the graph TensorRT was given)"

    monkeypatch.setattr(tensorrt_backend, "TensorRTPredictor", EngineAsGraph)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # "installed"
    return trt


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("trt") / "m.pt")


def test_export_trt_builds_strongly_typed_from_the_gated_matmul_graph(ckpt, cli, tmp_path, fake_trt):
    out = tmp_path / "m.onnx"
    code, stdout, err = cli("export", ckpt.path, "--out", out, "--trt", "--tta", "flip", "--trt-size", "16", "64", "512")
    assert code == 0, err
    trt_onnx, engine, side = tmp_path / "m.trt.onnx", tmp_path / "m.engine", tmp_path / "m.engine.json"
    assert out.is_file() and trt_onnx.is_file() and engine.is_file() and side.is_file()
    # What TensorRT was given is MODEL.trt.onnx, byte for byte: the graph that passed the gate.
    assert Path(fake_trt.seen["onnx"]) == trt_onnx and engine.read_bytes() == trt_onnx.read_bytes()
    assert fake_trt.seen["network_flags"] == 1 << 5 and fake_trt.seen["flags"] == []  # strongly typed, no flags
    assert fake_trt.seen["profile"] == ("images", (1, 16, 16, 3), (1, 64, 64, 3), (8, 512, 512, 3))
    from vr.runtime.metadata import read_metadata

    meta = read_metadata(engine)
    t = meta["tensorrt"]
    assert (t["version"], t["gpu"], t["compute_capability"], t["strongly_typed"]) == ("11.4.0", "Fake GPU", "9.0", True)
    assert t["source_onnx"] == str(trt_onnx) and t["source_sha256"] == hashlib.sha256(trt_onnx.read_bytes()).hexdigest()
    assert t["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert meta["class_names"] == list(CLASSES) and meta["resize_impl"] == "matmul" and meta["precision"] == "fp32"
    assert meta["golden"]["images"] and meta["golden"]["atol"] >= 0.01
    assert read_metadata(out)["resize_impl"] == "resize"  # model.onnx stays the fast ONNX Runtime graph
    assert "parity gate: PyTorch vs TensorRT" in stdout and "golden set" in stdout


def test_engine_rebuilt_from_the_trt_onnx_alone(ckpt, cli, tmp_path, fake_trt):
    """A deployment machine with only MODEL.trt.onnx builds its own engine, checked on the golden set."""
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "m.onnx", "--resize-impl", "matmul")
    assert code == 0, err
    code, stdout, err = cli("export", tmp_path / "m.onnx", "--trt")
    assert code == 0, err
    assert (tmp_path / "m.engine").is_file() and "TensorRT on its golden set" in stdout
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "r.onnx")  # the default antialiased Resize
    assert code == 0, err
    code, _, err = cli("export", tmp_path / "r.onnx", "--trt")
    assert code == 2 and "TensorRT rejects" in err and "trt.onnx" in err


def test_engines_from_another_tensorrt_or_gpu_say_how_to_rebuild():
    from vr.runtime.tensorrt_backend import check_engine_matches

    here = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    built = {"version": "10.13.0", "gpu": "NVIDIA H200", "compute_capability": "9.0", "source_onnx": "run/m.trt.onnx"}
    check_engine_matches(Path("m.engine"), built, "10.13.0", here)
    with pytest.raises(VrError, match=r"built with TensorRT 10.13.0 and this is TensorRT 11.4.0: rebuild it here: "
                                      r"vr export run/m.trt.onnx --trt"):
        check_engine_matches(Path("m.engine"), built, "11.4.0", here)
    with pytest.raises(VrError, match=r"compute capability 8.6\) and this GPU is NVIDIA H200 \(9.0\)"):
        check_engine_matches(Path("m.engine"), {**built, "gpu": "RTX 3090", "compute_capability": "8.6"}, "10.13.0", here)


def test_export_trt_without_tensorrt_is_one_line(ckpt, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, _, err = cli("export", ckpt.path, "--out", tmp_path / "m.onnx", "--trt")
    assert code == 2 and "pip install 'vr[gpu]'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "m.onnx").exists()


def test_gpu_extra_pins_the_tensorrt_range_the_code_is_written_for():
    from vr.export.tensorrt import TENSORRT_RANGE

    pyproject = (REPO / "pyproject.toml").read_text()
    gpu = re.search(r"^gpu = \[(.*)\]", pyproject, re.M).group(1)
    assert f'"tensorrt{TENSORRT_RANGE}"' in gpu, gpu
    assert json.loads(f"[{gpu}]")  # a valid list
