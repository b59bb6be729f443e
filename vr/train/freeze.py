"""--freeze-epochs (the head trains alone first) and the DDP / torch.compile wrappers around the
model, which must be rebuilt when the backbone unfreezes."""

from __future__ import annotations

import torch
from torch import nn

from vr.models.factory import head_param_names
from vr.train import distributed as D


class FreezePhase:
    """Epochs ``1..epochs`` train the classifier head only: the backbone's parameters get no
    gradient (so no update and no weight decay) and its BatchNorm layers stay in eval mode. The
    optimizer holds every parameter from the start, so its saved state does not depend on the
    phase, and the phase is a function of the epoch, so a resume inside it is exact."""

    def __init__(self, raw: nn.Module, epochs: int):
        self.epochs = epochs
        self.head_names = head_param_names(raw) if epochs else set()
        self.frozen_bn = [m for name, m in raw.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                          and not any(h.startswith(name + ".") for h in self.head_names)]
        self.backbone = [p for n, p in raw.named_parameters() if p.requires_grad and n not in self.head_names]
        self.frozen = False

    def frozen_at(self, epoch: int) -> bool:
        return epoch <= self.epochs

    def set(self, frozen: bool) -> None:
        for p in self.backbone:
            p.requires_grad_(not frozen)
        self.frozen = frozen

    def batchnorm_eval(self) -> None:
        """After model.train(): the frozen backbone's BatchNorm keeps its running statistics."""
        if self.frozen:
            for m in self.frozen_bn:
                m.eval()


def wrap_model(raw: nn.Module, ctx: D.DistContext, device_type: str, compile_: bool) -> tuple[nn.Module, nn.Module | None]:
    """(the module to train, its DDP wrapper or None): DDP (and torch.compile) around ``raw``. DDP
    registers the parameters that require a gradient when it is built, so it is rebuilt when
    --freeze-epochs ends."""
    ddp, model = None, raw
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = model = DDP(raw, device_ids=[ctx.local_rank] if device_type == "cuda" else None)
    if compile_:
        model = torch.compile(model)
    return model, ddp
