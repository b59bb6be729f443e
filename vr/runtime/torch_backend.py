"""PyTorch: a vr checkpoint, its Preprocess (PIL) and the torch TTA views of vr.models.tta."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vr.config import CPU_CHANNELS_LAST_MIN_SIZE
from vr.errors import VrError
from vr.runtime.base import Predictor, TorchViews


class TorchPredictor(Predictor):
    def __init__(self, path: str | Path, device: str = "auto", tta: str | None = None, batch_size: int = 32,
                 **_graph_options):
        import torch

        from vr.models.checkpoint import load_checkpoint
        from vr.models.factory import count_params, model_from_checkpoint
        from vr.util.device import resolve_device

        ckpt = load_checkpoint(path)
        dev = resolve_device(device)
        super().__init__(Path(path), ckpt.classes, tta or "none", batch_size, runtime="torch",
                         preprocess=ckpt.preprocess)
        if ckpt.num_classes != len(ckpt.classes):
            raise VrError(f"{path}: the model has {ckpt.num_classes} outputs but {len(ckpt.classes)} class names")
        self.device = dev
        self.model = model_from_checkpoint(ckpt).to(dev)
        if dev.type == "cpu" and ckpt.preprocess.input_size >= CPU_CHANNELS_LAST_MIN_SIZE:
            # oneDNN's NHWC convolutions: 1.2-1.4x faster inference on CPU (docs/benchmarks.md)
            self.model.to(memory_format=torch.channels_last)
        self.param_count = count_params(self.model)
        self.preparer = TorchViews(ckpt.preprocess, self.tta)
        self.host_preprocess = "full (torch)"
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
        self.provider = f"{dev} ({name})" if name else str(dev)

    def set_tta(self, tta: str) -> None:
        """Run with another TTA mode from now on (the views are cut on the host, by the preparer)."""
        self.tta, self.preparer = tta, TorchViews(self.preprocess, tta)

    def run(self, prepared: Sequence[Any]) -> np.ndarray:
        import torch

        from vr.models.tta import predict_views

        views = torch.stack(list(prepared)).to(self.device, non_blocking=True)  # [N, V, 3, S, S] uint8
        x = self.preprocess.normalize(views.flatten(0, 1)).unflatten(0, views.shape[:2])
        return self.check_probs(predict_views(self.model, x).cpu().numpy(), len(prepared))
