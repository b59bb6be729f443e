"""TensorRT engines built from vr's ONNX graph (preprocessing and TTA included).

TensorRT rejects ``Resize`` with ``antialias=1``, so the engine is built from the ``matmul``
variant of the graph (PIL's filter weights as MatMul), whose parity with PyTorch the exporter checks
on ONNX Runtime before TensorRT sees it. The preprocessing layers (named ``pre/...``) are pinned
to float32; only the backbone may run in FP16/INT8.

``tensorrt`` is imported inside the functions: the rest of vr works without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vr.errors import VrError

INSTALL_HINT = "pip install 'vr[gpu]' (or: pip install tensorrt)"
PRE_PREFIX = "pre/"
FP32_PREFIXES = (PRE_PREFIX, "ens/")  # preprocessing, and an ensemble's weighted sum of the members


def require_tensorrt():
    """The tensorrt module, or a one-line VrError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise VrError(f"--trt needs TensorRT and a CUDA GPU; TensorRT is not installed: {INSTALL_HINT}") from None
    import torch

    if not torch.cuda.is_available():
        raise VrError("--trt needs a CUDA GPU (TensorRT builds an engine for the GPU that will run it) and none is "
                      "visible to PyTorch: install a CUDA build of torch and check nvidia-smi")
    return trt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _pin_preprocessing_fp32(trt, network) -> int:
    """Run the preprocessing layers in float32 whatever the builder flags allow."""
    floats = {trt.float32, trt.float16}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(FP32_PREFIXES):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(o.dtype not in floats for o in outs):
            continue  # shape arithmetic, casts to int, comparisons
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def calibration_sample(root: str | Path, count: int) -> list[Path]:
    """A class-balanced sample (round robin over the classes) of an ImageFolder, or the first
    ``count`` images spread over a flat folder."""
    from vr.data.folders import list_images, scan_flat_folder
    from vr.data.classes import natural_key
    root = Path(root)
    if not root.is_dir():
        raise VrError(f"calibration folder not found: {root}")
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: natural_key(d.name))
    if not dirs:
        paths, _ = scan_flat_folder(root, verify=True, what="calibration")
        idx = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
        return [paths[i] for i in sorted(set(idx.tolist()))]
    per_class = [list_images(d) for d in dirs]
    rng = np.random.default_rng(0)
    for files in per_class:
        rng.shuffle(files)
    out: list[Path] = []
    depth = 0
    while len(out) < count and any(depth < len(f) for f in per_class):
        out += [f[depth] for f in per_class if depth < len(f)][: count - len(out)]
        depth += 1
    if not out:
        raise VrError(f"calibration folder {root} holds no images")
    return out


def _calibrator(trt, paths: Sequence[Path], batch: int, hw: tuple[int, int], cache: Path | None):
    """IInt8EntropyCalibrator2 over uint8 images resized (PIL, bilinear) to the calibration shape:
    the graph resizes them again, so the backbone sees ordinary preprocessed images."""
    import torch
    from PIL import Image

    from vr.data.images import UnreadableImage, load_rgb
    from vr.util.io import atomic_write_bytes

    h, w = hw

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.paths = list(paths)
            self.pos = 0
            self.device = torch.empty((batch, h, w, 3), dtype=torch.uint8, device="cuda")

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            arrs = []
            while len(arrs) < batch and self.pos < len(self.paths):
                p = self.paths[self.pos]
                self.pos += 1
                try:
                    arrs.append(np.asarray(load_rgb(p).resize((w, h), Image.BILINEAR), dtype=np.uint8))
                except UnreadableImage:
                    continue
            if len(arrs) < batch:
                return None
            self.device.copy_(torch.from_numpy(np.stack(arrs)))
            torch.cuda.synchronize()
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data):
            if cache is not None:
                atomic_write_bytes(cache, bytes(data))

    return Calibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, metadata: dict, fp16: bool = True,
                 int8: bool = False, calib_paths: Sequence[Path] | None = None,
                 batch: tuple[int, int, int] = (1, 1, 8), size: tuple[int, int, int] = (32, 512, 2048),
                 workspace_gib: float = 4.0, timing_cache: Path | None = None,
                 before_commit: Callable[[Path], None] | None = None) -> Path:
    """Build, check (``before_commit`` on the temporary engine) and write ``engine_path`` and
    ``engine_path + '.json'`` (the metadata plus the build settings), both atomically."""
    from vr.util.console import info
    from vr.util.io import atomic_path, atomic_write_bytes

    trt = require_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["unknown error"]
        raise VrError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors[0].splitlines()[0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    inp = network.get_input(0)
    (b0, b1, b2), (s0, s1, s2) = batch, size
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (b0, s0, s0, 3), (b1, s1, s1, 3), (b2, s2, s2, 3))
    config.add_optimization_profile(profile)
    precision = "fp32"
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        precision = "fp16"
    if int8:
        if not calib_paths:
            raise VrError("--int8 needs calibration images: pass --calib DIR")
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(inp.name, (b1, s1, s1, 3), (b1, s1, s1, 3), (b1, s1, s1, 3))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _calibrator(trt, calib_paths, b1, (s1, s1), None)
        precision = "int8+fp16" if fp16 else "int8"
    pinned = _pin_preprocessing_fp32(trt, network)
    if pinned:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    info(f"building the TensorRT {trt.__version__} engine ({precision}; {pinned} preprocessing layers in fp32; "
         f"batch {b0}/{b1}/{b2}, image side {s0}/{s1}/{s2}); this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VrError("TensorRT failed to build the engine (its log above says why)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    engine_path = Path(engine_path)
    sidecar = sidecar_path(engine_path)
    meta = dict(metadata)
    meta["tensorrt"] = json.dumps({
        "version": trt.__version__, "precision": precision, "profile_batch": list(batch),
        "profile_image_side": list(size), "device": _device_name()})
    with atomic_path(engine_path) as tmp_engine, atomic_path(sidecar) as tmp_side:
        tmp_engine.write_bytes(bytes(memoryview(serialized)))
        tmp_side.write_text(json.dumps(meta, indent=2) + "\n")
        if before_commit is not None:
            before_commit(tmp_engine)
    return engine_path


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_engine_metadata(engine_path: str | Path) -> dict:
    """The sidecar's metadata decoded like vr.export.onnx.read_onnx_metadata."""
    from vr.export.onnx import decode_metadata

    side = sidecar_path(engine_path)
    if not side.is_file():
        raise VrError(f"{engine_path} has no metadata file {side.name} (was it written by vr export --trt?)")
    try:
        props = json.loads(side.read_text())
    except ValueError as e:
        raise VrError(f"{side} is not valid JSON: {e}") from e
    meta = decode_metadata(props, side)
    if "tensorrt" in meta:
        meta["tensorrt"] = json.loads(meta["tensorrt"])
    return meta


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


class EngineRunner:
    """Run a vr engine on uint8 [N, H, W, 3] numpy batches; returns [N, C] float32 numpy."""

    def __init__(self, engine_path: str | Path):
        import torch

        trt = require_tensorrt()
        self.torch = torch
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise VrError(f"TensorRT {trt.__version__} cannot load {engine_path} (built by another TensorRT version "
                          f"or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self.stream = torch.cuda.Stream()

    def fits(self, shape: Sequence[int]) -> bool:
        return all(a <= s <= b for a, s, b in zip(self.min_shape, shape, self.max_shape))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        if not self.fits(batch.shape):
            raise VrError(f"input {tuple(batch.shape)} lies outside the engine's profile {self.min_shape}..{self.max_shape} "
                          f"(rebuild with --trt-batch/--trt-size)")
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8)).cuda(non_blocking=False)
            self.context.set_input_shape(self.input, tuple(x.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input, x.data_ptr())
            self.context.set_tensor_address(self.output, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise VrError("TensorRT execution failed (its log above says why)")
        self.stream.synchronize()
        return y.cpu().numpy()
