"""ONNX Runtime: an .onnx graph from `vr export` (execution providers TensorRT -> CUDA -> CPU).

The only module that creates ONNX Runtime sessions: the parity gate, eval, submit, predict,
verify and the benchmarks all run graphs through OnnxPredictor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vr.errors import VrError, first_line
from vr.runtime.base import GraphPredictor
from vr.runtime.metadata import OUTPUT_NAME, read_metadata
from vr.util.phases import mark

ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_CPU = "CPUExecutionProvider"


def check_onnx_file(path: Path) -> None:
    """onnx.checker on the file: a damaged or foreign graph is one line, before ONNX Runtime sees it."""
    import onnx

    if not Path(path).is_file():
        raise VrError(f"ONNX model not found: {path}")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # DecodeError, ValidationError, OSError ...
        raise VrError(f"{path} is not a valid ONNX model ({first_line(e)})") from e


def ort_providers(device: str, available: Sequence[str]) -> list:
    """The execution providers to ask for, in order, for ``--device``."""
    dev = (device or "auto").lower()
    gpu = [p for p in ORT_GPU_PROVIDERS if p in available]
    if dev == "cpu":
        return [ORT_CPU]
    if dev == "auto":
        return gpu + [ORT_CPU]
    if dev.startswith("cuda"):
        if not gpu:
            raise VrError(f"--device {device} was asked for but ONNX Runtime has no CUDA or TensorRT execution "
                          f"provider (available: {', '.join(available)}); install onnxruntime-gpu: "
                          f"pip install 'vr[gpu]'")
        try:
            idx = int(dev.split(":", 1)[1]) if ":" in dev else 0
        except ValueError as e:
            raise VrError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
        return [(p, {"device_id": idx}) for p in gpu]
    raise VrError(f"--device {device} is not available to ONNX Runtime: use auto, cpu, cuda or cuda:N")


def session_options(ort, threads: int | None = None):
    """Full graph optimisation, and intra-op threads that sleep instead of spinning while they
    wait. The DataLoader workers decode images on the same cores; spinning threads take CPU time
    from them (measured on a busy 2-core machine: with spinning, ~20% more CPU time per image and
    ~15% fewer images/s; the predictions are identical)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def cpu_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session on a graph that is not a vr model (a backbone alone, a probe), for
    the exporter's precision tools; vr models load through OnnxPredictor."""
    import onnxruntime as ort

    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    opts = session_options(ort, threads)
    opts.log_severity_level = 4
    return ort.InferenceSession(data, opts, providers=[ORT_CPU])


def _name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


class OnnxPredictor(GraphPredictor):
    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                 host_resize: bool = True, metadata: dict | None = None, threads: int | None = None,
                 providers: list[str] | None = None):
        path = Path(path)
        check_onnx_file(path)
        self.init_graph(path, metadata if metadata is not None else read_metadata(path), tta, batch_size,
                        "onnxruntime")
        mark("onnx check + metadata")
        self.session = self._session(path, device, threads, providers)
        self._check_io(path)
        mark("session creation")
        self.choose_host_preprocess(host_resize)
        mark("host-resize probe")

    def _session(self, path: Path, device: str, threads: int | None, only: list[str] | None):
        import onnxruntime as ort

        providers = list(only) if only else ort_providers(device, ort.get_available_providers())
        opts = session_options(ort, threads)
        try:
            sess = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            if self.precision == "bf16" and all(_name(p) == ORT_CPU for p in providers):
                raise VrError(f"ONNX Runtime has no bf16 kernels on the CPU, so it cannot run {path.name}: run it "
                              f"with TensorRT (vr export {path} --trt) or export --precision fp16/fp32 for ONNX "
                              f"Runtime (vr verify checks it in emulation)") from e
            if _name(providers[0]) != "TensorrtExecutionProvider" or len(providers) == 1:
                raise VrError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from e
            self.notes.append(f"TensorRT execution provider failed ({first_line(e, 120)}); tried the next ones")
            providers = providers[1:]
            try:
                sess = ort.InferenceSession(str(path), opts, providers=providers)
            except Exception as e2:
                raise VrError(f"ONNX Runtime cannot load {path}: {first_line(e2)}") from e2
        ran = sess.get_providers()
        self.provider, self.execution_providers = ran[0], list(ran)
        if (device or "auto").lower().startswith("cuda") and self.provider not in ORT_GPU_PROVIDERS:
            raise VrError(f"--device {device} was asked for but ONNX Runtime runs {path.name} on {self.provider} "
                          f"(the CUDA provider did not load: check the CUDA and cuDNN libraries of onnxruntime-gpu)")
        asked_gpu = [_name(p) for p in providers if _name(p) in ORT_GPU_PROVIDERS]
        if asked_gpu and self.provider not in ORT_GPU_PROVIDERS:
            self.notes.append(f"{', '.join(asked_gpu)} did not load; ONNX Runtime runs on {self.provider}")
        return sess

    def _check_io(self, path: Path) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise VrError(f"{path} has {len(inputs)} inputs; vr expects one uint8 [N, H, W, 3] 'images' input")
        inp = inputs[0]
        shape = list(inp.shape)
        if inp.type != "tensor(uint8)" or len(shape) != 4 or shape[3] not in (3, "3"):
            raise VrError(f"{path} takes {inp.name} {inp.type} {shape}; vr expects uint8 [N, H, W, 3] RGB images "
                          f"as written by `vr export`")
        if isinstance(shape[1], int) or isinstance(shape[2], int):
            raise VrError(f"{path} has a fixed input size {shape[1]}x{shape[2]}; vr expects any-size images "
                          f"(dynamic H and W), as written by `vr export`")
        self.static_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 0
        self.input_name = inp.name
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in names else names[0]

    def run_array(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as e:  # ORT raises its own types (a failed allocation among them)
            n, h, w, _ = batch.shape
            raise VrError(f"ONNX Runtime failed on {self.path.name} with {n} image(s) of {h}x{w}: "
                          f"{first_line(e)}") from e
