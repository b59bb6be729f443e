"""LR schedules: shapes, plateau drops, exact state round trip."""

from __future__ import annotations

import torch

from vr.train.config import TrainConfig
from vr.train.optim import LRSchedule, create_optimizer


def _sched(kind, **kw):
    cfg = TrainConfig(data="x", sched=kind, epochs=10, lr=1.0, **kw)
    model = torch.nn.Linear(2, 2)
    opt = create_optimizer(model, cfg)
    return LRSchedule(opt, cfg, steps_per_epoch=10), opt


def _trace(s, n):
    lrs = [s.lr]
    for _ in range(n):
        s.step()
        lrs.append(s.lr)
    return lrs


def test_cosine_with_warmup():
    s, _ = _sched("cosine", warmup_epochs=1, min_lr_ratio=0.0)
    lrs = _trace(s, 100)
    assert abs(lrs[0] - 0.1) < 1e-9 and abs(lrs[9] - 1.0) < 1e-9  # linear warmup over 10 steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lrs[-1] < 1e-6


def test_onecycle_rises_then_falls():
    s, _ = _sched("onecycle", warmup_epochs=0)
    lrs = _trace(s, 100)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert 25 <= peak <= 35 and abs(lrs[0] - 1 / 25) < 1e-9 and lrs[-1] < 1e-3


def test_step_and_plateau():
    s, _ = _sched("step", warmup_epochs=0, step_size=3, gamma=0.5)
    lrs = _trace(s, 60)
    assert lrs[29] == 1.0 and lrs[30] == 0.5 and lrs[60] == 0.25
    p, _ = _sched("plateau", warmup_epochs=0, plateau_patience=1, gamma=0.1)
    for loss in (1.0, 0.9, 0.95, 0.95):
        p.epoch_end(loss)
    assert abs(p.lr - 0.1) < 1e-12


def test_state_roundtrip():
    a, _ = _sched("plateau", warmup_epochs=0.5)
    _trace(a, 7)
    a.epoch_end(1.0)
    b, _ = _sched("plateau", warmup_epochs=0.5)
    b.load_state_dict(a.state_dict())
    assert _trace(a, 20) == _trace(b, 20)
