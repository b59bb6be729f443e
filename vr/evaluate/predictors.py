"""One predictor interface over the three model formats.

``load_predictor(path)`` returns

- :class:`TorchPredictor` for a ``.pt`` checkpoint (PyTorch, the checkpoint's Preprocess and the
  views of :mod:`vr.models.tta`);
- :class:`OnnxPredictor` for an ``.onnx`` file from ``vr export`` (ONNX Runtime, execution
  providers tried in the order TensorRT, CUDA, CPU);
- :class:`TensorRTPredictor` for a TensorRT ``.engine`` with its ``.json`` metadata sidecar;
- :class:`EnsemblePredictor` for ``A.pt+B.onnx`` (weights: ``A.pt@0.6+B.onnx@0.4``): the members'
  probabilities, each from its own preprocessing and runtime, soft-voted (see vr.models.ensemble).

Every predictor has ``classes`` (ClassMap), ``runtime``, ``provider`` (what actually ran, read back
from the session), ``tta``, and works in two steps so that image decoding and host-side
preprocessing can run in DataLoader workers:

- ``preparer(img)``: PIL RGB image -> the array the runtime takes (picklable, cheap to ship);
- ``run(prepared)``: list of prepared items -> float32 probabilities [N, C].

``predict(images)`` does both. Metric code only ever sees this interface.

ONNX and TensorRT graphs take uint8 [N, H, W, 3] RGB images and hold the preprocessing and the
TTA themselves; images in one batch must share a size, so ``run`` groups its items by size. To
make such groups large, the host may do the resize (and, for the centre-crop views, trim the
long side) itself when that is exactly equivalent: the graph's resize is then the identity.
Equivalence is not assumed but measured when the model is loaded: the graph's output on random
images fed raw and host-resized must agree to 1e-6, else the raw images are fed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from vr.data.classes import ClassMap
from vr.errors import VrError
from vr.models.preprocess import Preprocess
from vr.models.tta import TTA_MODES
from vr.models.factory import model_from_checkpoint

ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_CPU = "CPUExecutionProvider"
MODEL_SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt"}
HOST_RESIZE_TOLERANCE = 1e-6


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def check_tta(tta: str | None) -> None:
    if tta is not None and tta not in TTA_MODES:
        raise VrError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_MODES)}")


# --- host-side preparation (picklable: runs in DataLoader workers) ----------------------------
@dataclass(frozen=True)
class TorchViews:
    """PIL image -> uint8 [V, 3, S, S] TTA views (normalised later, on the model's device)."""

    pre: Preprocess
    tta: str

    def __call__(self, img: Image.Image):
        from vr.models.tta import tta_views

        x = self.pre.to_uint8(img, crop=self.tta in ("none", "flip"))
        return tta_views(x, self.pre, self.tta).contiguous()


@dataclass(frozen=True)
class RawRGB:
    """PIL image -> uint8 [H, W, 3], as is: the graph does all the preprocessing."""

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))

    def shape_for(self, h: int, w: int) -> tuple:
        """The shape ``__call__`` gives an h x w image (so batches can be made of one size)."""
        return (h, w, 3)


def compact_long_side(arr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Trim a resized [H, W, 3] image to R or R+1 along each side longer than R = resize_size,
    keeping the centre crop where it was: the parity of the trimmed length matches the original
    so ``(L - S) // 2 - start == (L' - S) // 2`` exactly. The graph's resize of the result is the
    identity (shorter side already R, longer side R * L' / R = L')."""
    r = pre.resize_size
    slices = []
    for length in arr.shape[:2]:
        if length <= r + 1:
            slices.append(slice(None))
            continue
        keep = r if (length - r) % 2 == 0 else r + 1
        start = (length - keep) // 2
        slices.append(slice(start, start + keep))
    return arr[slices[0], slices[1]]


@dataclass(frozen=True)
class HostResize:
    """PIL image -> uint8 [H', W', 3] already border-cropped and resized on the host (and, for the
    centre-crop views, trimmed to R or R+1 on the long side) so that most images share a size."""

    pre: Preprocess
    compact: bool

    def __call__(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(self.pre.resized(img), dtype=np.uint8)
        if self.compact:
            arr = compact_long_side(arr, self.pre)
        return np.ascontiguousarray(arr)

    def shape_for(self, h: int, w: int) -> tuple:
        bl, bt, br, bb = self.pre.border_box(h, w)
        h, w = self.pre.resized_hw(bb - bt, br - bl)
        if self.compact:
            r = self.pre.resize_size
            h, w = (n if n <= r + 1 else (r if (n - r) % 2 == 0 else r + 1) for n in (h, w))
        return (h, w, 3)


@dataclass(frozen=True)
class EnsemblePrepare:
    """PIL image -> one prepared item per ensemble member, each by the member's own preparer."""

    parts: tuple

    def __call__(self, img: Image.Image) -> tuple:
        return tuple(p(img) for p in self.parts)


@dataclass(frozen=True)
class EnsembleSizedPrepare(EnsemblePrepare):
    """As EnsemblePrepare, with ``shape_for`` (when a member is a graph) so that the runner can
    batch the images by the shapes the graph members will be fed."""

    def shape_for(self, h: int, w: int) -> tuple:
        return tuple(p.shape_for(h, w) if hasattr(p, "shape_for") else None for p in self.parts)


# --- the interface --------------------------------------------------------------------------
@dataclass
class Predictor:
    path: Path
    classes: ClassMap
    tta: str
    batch_size: int
    runtime: str = ""
    provider: str = ""
    preprocess: Preprocess | None = None
    preparer: Callable[[Image.Image], Any] = field(default_factory=RawRGB)
    host_preprocess: str = "none"
    notes: list[str] = field(default_factory=list)
    execution_providers: list[str] = field(default_factory=list)  # everything the session runs on, in order
    param_count: int | None = None  # None: unknown (a graph exported without the count)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def param_counts(self) -> list[int | None]:
        """Parameters per member (one entry for a single model), for the --max-params budget."""
        return [self.param_count]

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> float32 probabilities [N, C], in batches of ``batch_size``."""
        out = np.zeros((len(images), self.num_classes), dtype=np.float32)
        for i in range(0, len(images), self.batch_size):
            chunk = [img if img.mode == "RGB" else img.convert("RGB") for img in images[i:i + self.batch_size]]
            out[i:i + len(chunk)] = self.run([self.preparer(img) for img in chunk])
        return out

    def describe(self) -> dict:
        return {"path": str(self.path), "runtime": self.runtime, "provider": self.provider, "tta": self.tta,
                "execution_providers": list(self.execution_providers or [self.provider]),
                "host_preprocess": self.host_preprocess, "num_classes": self.num_classes,
                "param_count": self.param_count}

    def _check_probs(self, probs: np.ndarray, n: int) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (n, self.num_classes):
            raise VrError(f"{self.path} returned an output of shape {tuple(probs.shape)}, expected "
                          f"({n}, {self.num_classes}) for its {self.num_classes} class names")
        return probs


class TorchPredictor(Predictor):
    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32):
        import torch

        from vr.models.checkpoint import load_checkpoint
        from vr.models.factory import count_params
        from vr.util.device import resolve_device

        ckpt = load_checkpoint(path)
        dev = resolve_device(device)
        super().__init__(Path(path), ckpt.classes, tta or "none", batch_size, runtime="torch",
                         preprocess=ckpt.preprocess)
        if ckpt.num_classes != len(ckpt.classes):
            raise VrError(f"{path}: the model has {ckpt.num_classes} outputs but {len(ckpt.classes)} class names")
        self.device = dev
        self.model = model_from_checkpoint(ckpt).to(dev)
        self.param_count = count_params(self.model)
        self.preparer = TorchViews(ckpt.preprocess, self.tta)
        self.host_preprocess = "full (torch)"
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
        self.provider = f"{dev} ({name})" if name else str(dev)

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        import torch

        from vr.models.tta import predict_views

        views = torch.stack(list(prepared)).to(self.device, non_blocking=True)  # [N, V, 3, S, S] uint8
        x = self.preprocess.normalize(views.flatten(0, 1)).unflatten(0, views.shape[:2])
        return self._check_probs(predict_views(self.model, x).cpu().numpy(), len(prepared))


class _GraphPredictor(Predictor):
    """Shared by ONNX Runtime and TensorRT: uint8 [N, H, W, 3] in, probabilities out."""

    max_batch: int = 0

    def param_counts(self) -> list[int | None]:
        """An ensemble graph's members one by one (its metadata lists them), else the total."""
        members = (getattr(self, "metadata", None) or {}).get("members")
        counts = [_int_or_none(m.get("param_count")) for m in members if isinstance(m, dict)] \
            if isinstance(members, list) else []
        return counts if counts and None not in counts else [self.param_count]

    def _run_array(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(prepared), self.num_classes), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, arr in enumerate(prepared):
            groups.setdefault(arr.shape, []).append(i)
        step = self.max_batch or self.batch_size
        for idx in groups.values():
            for j in range(0, len(idx), step):
                part = idx[j:j + step]
                out[part] = self._check_probs(self._run_array(np.stack([prepared[k] for k in part])), len(part))
        return out

    def _choose_host_preprocess(self, allow: bool) -> None:
        """Use HostResize when the graph gives the same output for it as for raw images.

        Probed on random images (downscaled landscape and portrait, and upscaled); any difference
        above HOST_RESIZE_TOLERANCE keeps the raw images, so that what is measured is the graph
        as it runs when deployed, its own resize included.
        """
        pre = self.preprocess
        self.preparer, self.host_preprocess = RawRGB(), "none: raw images, batched by size"
        if not allow or pre is None or pre.border_crop > 0:
            return
        members = (getattr(self, "metadata", None) or {}).get("members") or []
        if len({json.dumps(m.get("preprocess"), sort_keys=True) for m in members if isinstance(m, dict)}) > 1:
            # Each member of the ensemble graph resizes to its own size: no one host resize fits all.
            self.host_preprocess = "none: raw images, batched by size (the ensemble's members preprocess differently)"
            return
        candidate = HostResize(pre, compact=self.tta in ("none", "flip"))
        rng = np.random.default_rng(0)
        r = pre.resize_size
        for h, w in ((2 * r + 7, 3 * r + 4), (3 * r + 5, 2 * r + 2), (r // 2 + 5, r // 2 + 8)):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            try:
                raw = self._run_array(np.asarray(img)[None])
                host = self._run_array(candidate(img)[None])
            except VrError as e:  # e.g. a probe size outside a TensorRT optimisation profile
                self.host_preprocess = f"none: raw images, batched by size (probe failed: {e})"
                return
            diff = float(np.abs(np.asarray(raw, dtype=np.float64) - host).max())
            if not diff <= HOST_RESIZE_TOLERANCE:
                self.host_preprocess = (f"none: raw images, batched by size (the graph's resize differs from "
                                        f"PIL's: probe diff {diff:.2g})")
                return
        self.preparer = candidate
        self.host_preprocess = "resize on host (probed: identical graph output)"


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _json_value(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _read_onnx_props(path: Path) -> dict:
    try:
        from vr.export.onnx import read_onnx_metadata  # the exporter's reader, when present
    except ImportError:
        read_onnx_metadata = None
    if read_onnx_metadata is not None:
        return dict(read_onnx_metadata(path))
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def normalise_metadata(raw: dict, source: Path) -> dict:
    """metadata_props / sidecar JSON -> {"class_names", "preprocess", "tta", ...} with checks."""
    names = _json_value(raw.get("class_names"))
    if not isinstance(names, list) or not names:
        raise VrError(f"{source} carries no class_names metadata, so its outputs cannot be named "
                      f"(export the model with `vr export`)")
    meta = {k: _json_value(v) for k, v in raw.items()}
    meta["class_names"] = [str(n) for n in names]
    pre = meta.get("preprocess")
    try:
        meta["preprocess"] = Preprocess.from_dict(pre) if isinstance(pre, dict) else None
    except (TypeError, VrError) as e:
        raise VrError(f"{source} has unreadable preprocess metadata: {_first_line(e)}") from e
    tta = meta.get("tta") or "none"
    if tta not in TTA_MODES:
        raise VrError(f"{source} has unknown TTA metadata {tta!r}")
    meta["tta"] = tta
    return meta


def check_onnx_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # DecodeError, ValidationError, OSError ...
        raise VrError(f"{path} is not a valid ONNX model ({_first_line(e)})") from e


def engine_sidecar(path: Path) -> Path:
    """``model.engine.json`` (what `vr export --trt` writes), else ``model.json``."""
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file():
            return cand
    raise VrError(f"{path} has no metadata sidecar {path.name}.json, so its class names are unknown "
                  f"(export the engine with `vr export --trt`)")


def read_model_metadata(path: str | Path) -> dict:
    """Metadata of an .onnx (metadata_props) or .engine (JSON sidecar), normalised."""
    path = Path(path)
    if path.suffix.lower() == ".engine":
        side = engine_sidecar(path)
        try:
            raw = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise VrError(f"cannot read {side}: {_first_line(e)}") from e
        if not isinstance(raw, dict):
            raise VrError(f"{side} must hold a JSON object of metadata")
        return normalise_metadata(raw, side)
    return normalise_metadata(_read_onnx_props(path), path)


def _check_baked_tta(path: Path, requested: str | None, baked: str) -> str:
    if requested is not None and requested != baked:
        raise VrError(f"{path.name} was exported with TTA {baked!r}, which is part of its graph; --tta {requested} "
                      f"cannot change it: leave --tta out or re-export with --tta {requested}")
    return baked


def _ort_providers(device: str, available: Sequence[str]) -> list:
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
        except ValueError:
            raise VrError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
        return [(p, {"device_id": idx}) for p in gpu]
    raise VrError(f"--device {device} is not available to ONNX Runtime: use auto, cpu, cuda or cuda:N")


def ort_session_options(ort):
    """Session options for evaluation: full graph optimisation, and intra-op threads that sleep
    instead of spinning while they wait. The DataLoader workers decode images on the same cores;
    spinning threads take CPU time from them (measured on a busy 2-core machine: with spinning,
    ~20% more CPU time per image and ~15% fewer images/s; the predictions are identical)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _provider_name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


class OnnxPredictor(_GraphPredictor):
    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                 host_resize: bool = True):
        path = Path(path)
        check_onnx_file(path)
        meta = read_model_metadata(path)
        super().__init__(path, ClassMap(tuple(meta["class_names"])), _check_baked_tta(path, tta, meta["tta"]),
                         batch_size, runtime="onnxruntime", preprocess=meta["preprocess"])
        self.metadata = meta
        self.param_count = _int_or_none(meta.get("param_count"))
        import onnxruntime as ort

        providers = _ort_providers(device, ort.get_available_providers())
        opts = ort_session_options(ort)
        try:
            sess = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            if _provider_name(providers[0]) != "TensorrtExecutionProvider" or len(providers) == 1:
                raise VrError(f"ONNX Runtime cannot load {path}: {_first_line(e)}") from e
            self.notes.append(f"TensorRT execution provider failed ({_first_line(e, 120)}); tried the next ones")
            providers = providers[1:]
            try:
                sess = ort.InferenceSession(str(path), opts, providers=providers)
            except Exception as e2:
                raise VrError(f"ONNX Runtime cannot load {path}: {_first_line(e2)}") from e
        ran = sess.get_providers()
        self.provider = ran[0]
        self.execution_providers = list(ran)
        wanted_gpu = (device or "auto").lower().startswith("cuda")
        if wanted_gpu and self.provider not in ORT_GPU_PROVIDERS:
            raise VrError(f"--device {device} was asked for but ONNX Runtime runs {path.name} on {self.provider} "
                          f"(the CUDA provider did not load: check the CUDA and cuDNN libraries of onnxruntime-gpu)")
        asked_gpu = [_provider_name(p) for p in providers if _provider_name(p) in ORT_GPU_PROVIDERS]
        if asked_gpu and self.provider not in ORT_GPU_PROVIDERS:
            self.notes.append(f"{', '.join(asked_gpu)} did not load; ONNX Runtime runs on {self.provider}")
        self.session = sess
        inputs = sess.get_inputs()
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
        self.max_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 0
        self.input_name = inp.name
        names = [o.name for o in sess.get_outputs()]
        self.output_name = "probs" if "probs" in names else names[0]
        self._choose_host_preprocess(host_resize)

    def _run_array(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]


class TensorRTPredictor(_GraphPredictor):
    """A serialized TensorRT engine (TensorRT >= 10 API); buffers live in torch CUDA tensors."""

    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                 host_resize: bool = True):
        path = Path(path)
        meta = read_model_metadata(path)
        try:
            import tensorrt as trt
        except ImportError:
            raise VrError(f"{path.name} is a TensorRT engine but the tensorrt package is not installed: "
                          f"pip install 'vr[gpu]'") from None
        import torch

        dev = (device or "auto").lower()
        if dev not in ("auto",) and not dev.startswith("cuda"):
            raise VrError(f"a TensorRT engine runs only on a CUDA GPU, not --device {device}")
        if not torch.cuda.is_available():
            raise VrError(f"{path.name} is a TensorRT engine, which needs a CUDA GPU, and torch sees none")
        super().__init__(path, ClassMap(tuple(meta["class_names"])), _check_baked_tta(path, tta, meta["tta"]),
                         batch_size, runtime="tensorrt", preprocess=meta["preprocess"])
        self.metadata = meta
        self.param_count = _int_or_none(meta.get("param_count"))
        self.device = torch.device("cuda" if dev == "auto" else dev)
        torch.cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise VrError(f"TensorRT {trt.__version__} cannot load {path} (engines only run with the TensorRT "
                          f"version and GPU they were built for: re-export it here)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise VrError(f"{path} has inputs {ins} and outputs {outs}; vr expects one uint8 'images' input")
        self.input_name = ins[0]
        self.output_name = "probs" if "probs" in outs else outs[0]
        if self.engine.get_tensor_dtype(self.input_name) != trt.DataType.UINT8:
            raise VrError(f"{path} takes {self.engine.get_tensor_dtype(self.input_name)} input; vr expects uint8 images")
        out_dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        if self.engine.get_tensor_dtype(self.output_name) not in out_dtypes:
            raise VrError(f"{path} returns {self.engine.get_tensor_dtype(self.output_name)}; vr expects float probabilities")
        self._out_dtype = out_dtypes[self.engine.get_tensor_dtype(self.output_name)]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self._min_shape, self._max_shape = tuple(lo), tuple(hi)
        self.max_batch = int(hi[0])
        self.provider = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(self.device)}"
        self._choose_host_preprocess(host_resize)

    def _run_array(self, batch: np.ndarray) -> np.ndarray:
        import torch

        _, h, w, _ = batch.shape
        if not (self._min_shape[1] <= h <= self._max_shape[1] and self._min_shape[2] <= w <= self._max_shape[2]):
            raise VrError(f"{self.path.name} takes images from {self._min_shape[1]}x{self._min_shape[2]} to "
                          f"{self._max_shape[1]}x{self._max_shape[2]} pixels (its optimisation profile); got {h}x{w}: "
                          f"re-export with a larger profile")
        x = torch.from_numpy(batch).to(self.device)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise VrError(f"TensorRT failed to run {self.path.name}")
        stream.synchronize()
        return y.float().cpu().numpy()


class EnsemblePredictor(Predictor):
    """Soft vote: ``sum_i w_i * probs_i`` over member predictors, each with its own preprocessing,
    TTA and runtime, in the first member's class order (other orders are mapped by name).
    ``run_with_members`` also returns each member's probabilities (for the agreement report)."""

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float], spec: str | Path,
                 orders: Sequence[Sequence[int] | None] | None = None):
        members = list(members)
        first = members[0]
        ttas = [m.tta for m in members]
        providers = list(dict.fromkeys(m.provider for m in members))
        super().__init__(Path(str(spec)), first.classes, ttas[0] if len(set(ttas)) == 1 else "+".join(ttas),
                         first.batch_size, runtime="ensemble", provider=" + ".join(providers),
                         preprocess=first.preprocess)
        self.members = members
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.orders = list(orders) if orders is not None else [None] * len(members)
        parts = tuple(m.preparer for m in members)
        sized = any(hasattr(p, "shape_for") for p in parts)
        self.preparer = EnsembleSizedPrepare(parts) if sized else EnsemblePrepare(parts)
        self.host_preprocess = "; ".join(f"{m.path.name}: {m.host_preprocess}" for m in members)
        self.notes = [f"{m.path.name}: {n}" for m in members for n in m.notes]
        self.execution_providers = list(dict.fromkeys(e for m in members for e in (m.execution_providers or [m.provider])))
        counts = self.param_counts()
        self.param_count = None if None in counts else int(sum(counts))

    def param_counts(self) -> list[int | None]:
        return [c for m in self.members for c in m.param_counts()]

    def run_with_members(self, prepared: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """-> (ensemble probabilities [N, C], member probabilities [M, N, C]), float32."""
        out = []
        for i, (m, order) in enumerate(zip(self.members, self.orders)):
            p = np.asarray(m.run([item[i] for item in prepared]), dtype=np.float32)
            out.append(p[:, order] if order is not None else p)
        member_probs = np.stack(out)
        probs = np.tensordot(np.asarray(self.weights, dtype=np.float64), member_probs.astype(np.float64), axes=1)
        return self._check_probs(probs, len(prepared)), member_probs

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        return self.run_with_members(prepared)[0]

    def describe(self) -> dict:
        d = super().describe()
        d["members"] = [{"path": str(m.path), "weight": w, "runtime": m.runtime, "provider": m.provider,
                         "tta": m.tta, "param_count": m.param_count,
                         "input_size": m.preprocess.input_size if m.preprocess is not None else None}
                        for m, w in zip(self.members, self.weights)]
        return d


def load_ensemble(members, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                  host_resize: bool = True, spec: str | Path | None = None) -> EnsemblePredictor:
    """An EnsemblePredictor over ``members`` (vr.models.ensemble.MemberSpec); class names checked."""
    from vr.models.ensemble import SEP, WEIGHT_SEP, class_order, normalised_weights

    members = list(members)
    if len(members) < 2:
        raise VrError("an ensemble needs two or more models")
    loaded = [load_predictor(m.path, device, tta, batch_size, host_resize) for m in members]
    orders = class_order([(str(m.path), p.classes.names) for m, p in zip(members, loaded)])
    if spec is None:
        spec = SEP.join(str(m.path) + (f"{WEIGHT_SEP}{m.weight:g}" if m.weight is not None else "") for m in members)
    return EnsemblePredictor(loaded, normalised_weights(members), spec, orders)


def check_predictor_budget(predictor: Predictor, budget: int | None, label: str) -> int | None:
    """--max-params: one line when the model (all members together) is over ``budget``, or when a
    member's parameter count is unknown. Returns the total (None without a budget and a count)."""
    from vr.models.budget import check_param_budget

    counts = predictor.param_counts()
    if budget is None:
        return None if None in counts else int(sum(counts))
    if None in counts:
        unknown = next((m.path for m in getattr(predictor, "members", []) if None in m.param_counts()), predictor.path)
        raise VrError(f"cannot check --max-params for {label}: {unknown} carries no parameter count "
                      f"(not exported by this vr: re-export it with vr export)")
    what = f"{label} ({len(counts)} members)" if len(counts) > 1 else label
    return check_param_budget([int(c) for c in counts], budget, what=what)


def model_kind(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise VrError(f"model not found: {path}")
    if path.is_dir():
        raise VrError(f"{path} is a folder; pass a model file (.pt checkpoint, .onnx or TensorRT .engine)")
    kind = MODEL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise VrError(f"cannot run {path}: expected a .pt checkpoint, an .onnx model or a TensorRT .engine")
    return kind


def load_predictor(path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                   host_resize: bool = True) -> Predictor:
    """Load any model file behind the one interface.

    ``path`` may spell an ensemble, ``A.pt+B.onnx`` or ``A.pt@0.6+B.onnx@0.4`` (EnsemblePredictor).
    ``tta=None`` means the model's own: none for a checkpoint, the exported mode for a graph. A
    graph's TTA is baked in at export, so asking for another mode is an error. ``device`` is
    auto, cpu, cuda, cuda:N (or mps, for checkpoints); asking for CUDA and getting CPU is an error.
    """
    check_tta(tta)
    if batch_size < 1:
        raise VrError(f"--batch-size must be positive (got {batch_size})")
    from vr.models.ensemble import is_ensemble_spec, parse_model_spec

    if is_ensemble_spec(path):
        return load_ensemble(parse_model_spec(path), device, tta, batch_size, host_resize, spec=path)
    kind = model_kind(path)
    if kind == "torch":
        return TorchPredictor(path, device, tta, batch_size)
    if kind == "onnxruntime":
        return OnnxPredictor(path, device, tta, batch_size, host_resize=host_resize)
    return TensorRTPredictor(path, device, tta, batch_size, host_resize=host_resize)


def model_classes(path: str | Path) -> ClassMap:
    """The class vocabulary of a model file (or of an ensemble: its first member's, once all
    members are checked to know the same names), without building a runtime session."""
    from vr.models.ensemble import class_order, is_ensemble_spec, parse_model_spec

    if is_ensemble_spec(path):
        members = parse_model_spec(path)
        maps = [model_classes(m.path) for m in members]
        class_order([(str(m.path), c.names) for m, c in zip(members, maps)])
        return maps[0]
    path = Path(path)
    kind = model_kind(path)
    if kind == "torch":
        from vr.models.checkpoint import load_checkpoint

        return load_checkpoint(path).classes
    if kind == "onnxruntime":
        check_onnx_file(path)
    return ClassMap(tuple(read_model_metadata(path)["class_names"]))
