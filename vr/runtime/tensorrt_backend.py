"""TensorRT: a serialized engine from `vr export --trt` (TensorRT 10.x/11.x API, buffers in torch
CUDA tensors), with its ``NAME.engine.json`` metadata.

The only module that deserializes engines: the export's gate, eval, submit, predict, verify and
the GPU benchmark all run engines through TensorRTPredictor. UNVERIFIED: no TensorRT has been
available to this project's CI or GPU machine, so this has never run (docs/testing.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vr.errors import VrError
from vr.runtime.base import GraphPredictor
from vr.runtime.metadata import OUTPUT_NAME, read_metadata

INSTALL_HINT = "pip install 'vr[gpu]'"


def import_tensorrt():
    """The tensorrt module, or one line saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise VrError(f"TensorRT is not installed: {INSTALL_HINT} (it needs a CUDA GPU)") from e
    return trt


def gpu_identity(index: int = 0) -> dict:
    """The name and compute capability of CUDA device ``index``, as engines record them."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def check_engine_matches(path: Path, built: dict, trt_version: str, here: dict) -> None:
    """An engine runs only under the TensorRT version and on the GPU (compute capability) it was
    built for: anything else is one line telling the user to rebuild it from its .onnx."""
    source = built.get("source_onnx") or "the .onnx it was exported with"
    rebuild = f"rebuild it here: vr export {source} --trt"
    if built.get("version") and built["version"] != trt_version:
        raise VrError(f"{path.name} was built with TensorRT {built['version']} and this is TensorRT {trt_version}: "
                      f"{rebuild}")
    cc = built.get("compute_capability")
    if cc and cc != here["compute_capability"]:
        raise VrError(f"{path.name} was built for {built.get('gpu') or 'another GPU'} (compute capability {cc}) and "
                      f"this GPU is {here['gpu']} ({here['compute_capability']}): {rebuild}")


class TensorRTPredictor(GraphPredictor):
    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                 host_resize: bool = True, metadata: dict | None = None, **_options):
        path = Path(path)
        meta = metadata if metadata is not None else read_metadata(path)
        trt = import_tensorrt()
        import torch

        dev = (device or "auto").lower()
        if dev != "auto" and not dev.startswith("cuda"):
            raise VrError(f"a TensorRT engine runs only on a CUDA GPU, not --device {device}")
        if not torch.cuda.is_available():
            raise VrError(f"{path.name} is a TensorRT engine, which needs a CUDA GPU, and torch sees none")
        self.init_graph(path, meta, tta, batch_size, "tensorrt")
        self.device = torch.device("cuda" if dev == "auto" else dev)
        torch.cuda.set_device(self.device)
        here = gpu_identity(self.device.index or 0)
        check_engine_matches(path, meta.get("tensorrt") or {}, trt.__version__, here)
        self._deserialize(trt, path)
        self.provider = f"TensorRT {trt.__version__} on {here['gpu']}"
        self.choose_host_preprocess(host_resize)

    def _deserialize(self, trt, path: Path) -> None:
        import torch

        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise VrError(f"TensorRT {trt.__version__} cannot load {path} (engines only run with the TensorRT "
                          f"version and GPU they were built for): rebuild it here with vr export MODEL.onnx --trt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise VrError(f"{path} has inputs {ins} and outputs {outs}; vr expects one uint8 'images' input")
        self.input_name = ins[0]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outs else outs[0]
        if self.engine.get_tensor_dtype(self.input_name) != trt.DataType.UINT8:
            raise VrError(f"{path} takes {self.engine.get_tensor_dtype(self.input_name)} input; vr expects uint8 images")
        out_dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if self.engine.get_tensor_dtype(self.output_name) not in out_dtypes:
            raise VrError(f"{path} returns {self.engine.get_tensor_dtype(self.output_name)}; vr expects float probabilities")
        self._out_dtype = out_dtypes[self.engine.get_tensor_dtype(self.output_name)]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self._min_shape, self._max_shape = tuple(lo), tuple(hi)
        self.max_batch = int(hi[0])
        self._stream = torch.cuda.Stream(self.device)

    def run_array(self, batch: np.ndarray) -> np.ndarray:
        import torch

        n, h, w, _ = batch.shape
        lo, hi = self._min_shape, self._max_shape
        if not (lo[0] <= n <= hi[0] and lo[1] <= h <= hi[1] and lo[2] <= w <= hi[2]):
            raise VrError(f"{self.path.name} takes batches of {lo[0]}-{hi[0]} images from {lo[1]}x{lo[2]} to "
                          f"{hi[1]}x{hi[2]} pixels (its optimisation profile); got {n} of {h}x{w}: re-export with "
                          f"a larger --trt-batch / --trt-size")
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8)).to(self.device)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            y = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype,
                            device=self.device)
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise VrError(f"TensorRT failed to run {self.path.name} on {n} image(s) of {h}x{w}")
        self._stream.synchronize()
        return y.float().cpu().numpy()
