"""Training losses: cross-entropy and focal loss, over hard or soft (mixed) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) generalised to a target distribution: with q the (smoothed,
    possibly mixed) target and w the class weights,

        loss_i = -sum_c w_c q_ic (1 - p_ic)^gamma log p_ic

    Reduction follows ``F.cross_entropy`` exactly (hard targets with weights: divided by the sum
    of the targets' weights; otherwise by the batch size), so ``gamma=0`` is cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = float(gamma), float(label_smoothing)
        self.register_buffer("weight", weight.float() if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        c = logits.shape[1]
        if self.gamma == 0:
            per_class = -logp
        else:  # the clamp keeps the gradient finite where p rounds to 1 and gamma < 1
            per_class = -(-torch.expm1(logp)).clamp(min=1e-12).pow(self.gamma) * logp
        hard = not target.is_floating_point()
        q = F.one_hot(target, c).to(logp.dtype) if hard else target.to(logp.dtype)
        if self.label_smoothing:
            q = q * (1 - self.label_smoothing) + self.label_smoothing / c
        w = self.weight
        loss = ((q * w) if w is not None else q).mul(per_class).sum(1)
        if hard and w is not None:
            return loss.sum() / w[target].sum()
        return loss.mean()
