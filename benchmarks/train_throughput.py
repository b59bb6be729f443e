"""Training throughput: vr's training step against a plain timm + torch loop, side by side.

Both train the same timm model (same initial weights) on the same in-memory batches with the same
loss (cross-entropy, label smoothing 0.1), AdamW at the same learning rate and weight decay, and
both track the epoch's loss and accuracy. What is timed:

* ``vr``: exactly what ``vr train`` runs per batch: ``vr.train.step.train_epoch`` driving
  ``TrainStep`` (forward, loss, backward, optimizer via ``create_optimizer``, the lr schedule, the
  loss/accuracy/non-finite bookkeeping on the device and the per-step stop check). The progress
  bar and data loading are left out (data loading is the same DataLoader for both in practice).
* ``plain``: the loop everyone writes: ``torch.optim.AdamW(model.parameters())`` with torch's
  defaults, ``zero_grad``/``backward``/``step``, ``loss.item()`` and ``.sum().item()`` per step.
* ``plain+fused`` (reference only): the plain loop with ``AdamW(fused=True)``, to show how much of
  the difference is the fused optimizer kernel that vr picks.

Rounds alternate the order of the loops so that drifting machine load hits all of them alike; the
medians over rounds are compared. Run: ``python benchmarks/train_throughput.py [--model resnet18]``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from torch import nn


def plain_runner(model: nn.Module, batches, lr: float, wd: float, fused: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, **({"fused": True} if fused else {}))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def run(n_steps: int) -> None:
        model.train()
        running_loss, correct, total = 0.0, 0, 0
        for i in range(n_steps):
            x, y = batches[i % len(batches)]
            out = model(x)
            loss = criterion(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running_loss += loss.item() * x.size(0)
            correct += (out.argmax(1) == y).sum().item()
            total += x.size(0)

    return run


def vr_runner(model: nn.Module, batches, lr: float, wd: float, epochs_hint: int):
    from vr.train.config import TrainConfig
    from vr.train.step import TrainStep, build_criterion, train_epoch
    from vr.train.optim import LRSchedule, create_optimizer
    from vr.util.device import resolve_runtime

    cfg = TrainConfig(data="unused", lr=lr, weight_decay=wd, sched="cosine", warmup_epochs=0, label_smoothing=0.1,
                      epochs=epochs_hint)
    rt = resolve_runtime("cpu", cfg.amp, verbose=False)
    opt = create_optimizer(model, cfg)
    schedule = LRSchedule(opt, cfg, steps_per_epoch=len(batches))
    scaler = torch.amp.GradScaler("cpu", enabled=rt.use_scaler)
    step = TrainStep(model, model, opt, schedule, scaler, build_criterion(cfg), rt)

    def run(n_steps: int) -> None:
        model.train()
        seq = [batches[i % len(batches)] for i in range(n_steps)]
        halted, _ = train_epoch(step, seq, n_steps, check_every=1)  # every step on CPU, as vr train does
        assert halted is None, halted

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per loop per round")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per loop before the rounds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fused-reference", action="store_true", help="skip the plain+fused reference loop")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import timm

    torch.manual_seed(args.seed)
    base = timm.create_model(args.model, pretrained=False, num_classes=args.classes)
    g = torch.Generator().manual_seed(args.seed)
    n_batches = 4
    batches = [(torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g),
                torch.randint(0, args.classes, (args.batch_size,), generator=g)) for _ in range(n_batches)]
    lr, wd = 1e-3, 0.05
    total_steps = args.warmup + args.steps * args.rounds
    runners = {
        "plain": plain_runner(copy.deepcopy(base), batches, lr, wd, fused=False),
        "vr": vr_runner(copy.deepcopy(base), batches, lr, wd, epochs_hint=max(1, total_steps // n_batches + 1)),
    }
    if not args.no_fused_reference:
        runners["plain+fused"] = plain_runner(copy.deepcopy(base), batches, lr, wd, fused=True)

    n_params = sum(p.numel() for p in base.parameters())
    print(f"torch {torch.__version__} · {platform.processor() or platform.machine()} · {torch.get_num_threads()} threads")
    print(f"model {args.model} ({n_params / 1e6:.2f}M params) · batch {args.batch_size} · {args.img_size}px · "
          f"{args.steps} steps x {args.rounds} rounds (+{args.warmup} warm-up), fp32 on CPU")
    for run in runners.values():
        run(args.warmup)
    # Short blocks in rotating order: a change in machine load hits every loop alike.
    secs: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            runners[name](args.steps)
            secs[name].append(time.perf_counter() - t0)
    imgs = args.steps * args.batch_size
    ips = {k: imgs * len(v) / sum(v) for k, v in secs.items()}
    for k in names:
        print(f"  {k:12s} {ips[k]:8.1f} images/s  (per round: {min(imgs / t for t in secs[k]):.1f} .. "
              f"{max(imgs / t for t in secs[k]):.1f})")
    ratio = ips["vr"] / ips["plain"]
    paired = statistics.median(p / v for v, p in zip(secs["vr"], secs["plain"]))
    print(f"ratio vr / plain = {ratio:.3f}  (median of per-round ratios {paired:.3f})")
    if "plain+fused" in ips:
        print(f"reference: vr / plain+fused = {ips['vr'] / ips['plain+fused']:.3f}  (same optimizer kernel; "
              f"what is left is vr's own per-step work)")


if __name__ == "__main__":
    main()
