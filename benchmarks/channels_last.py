#!/usr/bin/env python
"""NCHW against channels_last (NHWC) on this machine's CPU, side by side in one process: one
training step (forward, backward, fused AdamW) and one inference batch of a timm model, the two
layouts alternating, medians compared. The source of vr's CPU default (channels_last from
vr.config.CPU_CHANNELS_LAST_MIN_SIZE px up, in vr train and the PyTorch predictor).

    python benchmarks/channels_last.py efficientnet_lite0 224 --batch 16 --rounds 6
    python benchmarks/channels_last.py resnet18 32 --batch 64 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("size", type=int)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import timm
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ref = timm.create_model(a.model, num_classes=10)
    x, y = torch.randn(a.batch, 3, a.size, a.size), torch.randint(0, 10, (a.batch,))

    def make(nhwc: bool):
        m = timm.create_model(a.model, num_classes=10)
        m.load_state_dict(ref.state_dict())
        if nhwc:
            m = m.to(memory_format=torch.channels_last)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)

    models = {False: make(False), True: make(True)}

    def once(nhwc: bool, train: bool) -> float:
        m, opt = models[nhwc]
        xx = x.contiguous(memory_format=torch.channels_last) if nhwc else x
        t = time.perf_counter()
        if train:
            m.train()
            loss = torch.nn.functional.cross_entropy(m(xx), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            m.eval()
            with torch.inference_mode():
                m(xx)
        return time.perf_counter() - t

    for train in (True, False):
        for nhwc in (False, True):  # warm-up, untimed
            once(nhwc, train)
        times = {False: [], True: []}
        for r in range(a.rounds):
            for nhwc in ((False, True) if r % 2 == 0 else (True, False)):
                times[nhwc].append(once(nhwc, train))
        nchw, nhwc = statistics.median(times[False]), statistics.median(times[True])
        print(f"{a.model}@{a.size} batch {a.batch} {'train step' if train else 'inference'}: NCHW {nchw:.3f} s, "
              f"NHWC {nhwc:.3f} s, NHWC speed-up {nchw / nhwc:.2f}x ({a.threads} threads, {a.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
