"""TensorRT engines, built strongly typed from exactly the ONNX graph that passed the parity gate.

The graph decides every layer's precision (fp32 preprocessing and post-processing, an fp32, fp16
or bf16 backbone, or INT8 Q/DQ pairs: vr.export.precision), so the build sets no precision flag,
no calibrator and no per-layer constraint. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is
required on TensorRT 10.x (weak typing is deprecated from 10.12) and accepted (ignored) on 11.x,
whose weakly typed API is gone: one code path serves both. TensorRT rejects ``Resize`` with
``antialias=1``, so engines are built from the ``matmul`` resize variant of the graph.

UNVERIFIED: TensorRT cannot be installed on this project's machines; this module has never built
an engine (docs/testing.md). ``tensorrt`` is imported inside the functions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from vr.errors import VrError, first_line
from vr.export.trt_compat import TENSORRT_RANGE  # the versions this module is written for (the gpu extra)
from vr.util.io import file_sha256


def require_tensorrt():
    """The tensorrt module, with a CUDA GPU visible, or one line saying what is missing."""
    from vr.runtime.tensorrt_backend import import_tensorrt

    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise VrError("--trt needs a CUDA GPU (TensorRT builds an engine for the GPU that will run it) and none is "
                      "visible to PyTorch: install a CUDA build of torch and check nvidia-smi")
    return trt


def create_network(trt, builder):
    """A strongly typed network definition (TensorRT 10.x and 11.x)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise VrError(f"TensorRT {trt.__version__} has no strongly typed networks; vr needs TensorRT "
                      f"{TENSORRT_RANGE.replace(',', ' and ')}: pip install 'vr[gpu]'")
    return builder.create_network(1 << int(flag))


def parse_onnx(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["unknown error"]
        raise VrError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {first_line(ValueError(errors[0]))}")


def builder_config(trt, builder, input_name: str, batch: tuple[int, int, int], size: tuple[int, int, int],
                   workspace_gib: float, timing_cache: Path | None):
    """Workspace, one optimisation profile over batch x height x width, the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    (b0, b1, b2), (s0, s1, s2) = batch, size
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (b0, s0, s0, 3), (b1, s1, s1, 3), (b2, s2, s2, 3))
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def engine_metadata(graph_meta: dict, trt_version: str, gpu: dict, onnx_path: Path,
                    batch: tuple[int, int, int], size: tuple[int, int, int]) -> dict:
    """The sidecar: the graph's metadata (class names, preprocessing, precision, golden set...) and
    what the engine is bound to (TensorRT version, GPU, compute capability) and built from."""
    meta = dict(graph_meta)
    meta["tensorrt"] = {
        "version": trt_version, "precision": graph_meta.get("precision", "fp32"), "strongly_typed": True,
        "gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"], "profile_batch": list(batch),
        "profile_image_side": list(size), "source_onnx": str(onnx_path),
        "source_sha256": file_sha256(onnx_path),
    }
    return meta


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, batch: tuple[int, int, int] = (1, 1, 8), size: tuple[int, int, int] = (32, 512, 2048),
                 workspace_gib: float = 4.0, timing_cache: Path | None = None,
                 before_commit: Callable[[Path, dict], None] | None = None) -> Path:
    """Build ``engine_path`` (+ ``NAME.engine.json``) from the graph at ``onnx_path``. The engine
    and its sidecar are written atomically, after ``before_commit(tmp_engine, sidecar_metadata)``
    (the gate and the golden check) passes on the temporary engine."""
    from vr.runtime.metadata import read_metadata, sidecar_path, sidecar_text
    from vr.runtime.tensorrt_backend import gpu_identity
    from vr.util.console import info
    from vr.util.io import atomic_path, atomic_write_bytes

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    graph_meta = read_metadata(onnx_path)
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = create_network(trt, builder)
    parse_onnx(trt, network, logger, onnx_path)
    config = builder_config(trt, builder, network.get_input(0).name, batch, size, workspace_gib, timing_cache)
    info(f"building the TensorRT {trt.__version__} engine, strongly typed from {onnx_path.name} "
         f"({graph_meta['precision']}; batch {'/'.join(map(str, batch))}, image side {'/'.join(map(str, size))}); "
         f"this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VrError("TensorRT failed to build the engine (its log above says why)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    meta = engine_metadata(graph_meta, trt.__version__, gpu_identity(0), onnx_path, batch, size)
    meta["tensorrt"]["engine_sha256"] = hashlib.sha256(bytes(memoryview(serialized))).hexdigest()
    with atomic_path(engine_path) as tmp_engine, atomic_path(sidecar_path(engine_path)) as tmp_side:
        tmp_engine.write_bytes(bytes(memoryview(serialized)))
        tmp_side.write_text(sidecar_text(meta))
        if before_commit is not None:
            before_commit(tmp_engine, meta)
    return engine_path
