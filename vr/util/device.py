"""Pick the device and numeric precision in one place, and say why."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vr.errors import VrError
from vr.util.console import info


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: run in fp32
    use_scaler: bool  # GradScaler only for fp16
    reason: str

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, else MPS, else CPU. Asking for an absent device is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VrError(f"--device {name} was asked for but no CUDA GPU is visible to torch")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise VrError("--device mps was asked for but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise VrError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def resolve_runtime(device: str = "auto", amp: bool = True, verbose: bool = True) -> Runtime:
    """Device plus precision: bf16 autocast where supported, fp16 + GradScaler on older GPUs.

    On CPU mixed precision is always off: bf16 autocast on CPUs that advertise AMX can be killed
    by SIGILL inside oneDNN (no Python exception), and a run must never die that way.
    """
    dev = resolve_device(device)
    if not amp:
        rt = Runtime(dev, None, False, "fp32 (--no-amp)")
    elif dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            rt = Runtime(dev, torch.bfloat16, False, "bf16 autocast (GPU supports bf16)")
        else:
            rt = Runtime(dev, torch.float16, True, "fp16 autocast + GradScaler (GPU lacks bf16)")
    elif dev.type == "mps":
        rt = Runtime(dev, torch.float16, False, "fp16 autocast on MPS")
    else:
        rt = Runtime(dev, None, False, "fp32: AMP is off on CPU (bf16 kernels can crash some CPUs)")
    if verbose:
        info(f"device: {dev} · precision: {rt.reason}")
    return rt
