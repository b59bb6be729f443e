"""Batches of decoded, prepared images for the runner: made by worker processes and handed back in
order, a bounded number of batches ahead of the model.

Plain multiprocessing rather than torch's DataLoader, so that running a graph (ONNX Runtime,
TensorRT) never imports torch: that import was 2-3 s of every `vr eval` and `vr submit` of an
.onnx on a 2-core machine (benchmarks/peers.py). Workers ignore Ctrl-C (the main process stops
them); one that dies (killed, out of memory) is one VrError, not a hang.
"""

from __future__ import annotations

import signal
import sys
from collections import deque
from typing import Iterator, Sequence

from vr.errors import VrError

_dataset = None  # the worker's dataset: inherited at fork (or unpickled once where processes spawn)


def _init_worker(dataset) -> None:
    global _dataset
    _dataset = dataset
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the pool
    torch = sys.modules.get("torch")
    if torch is not None:  # a checkpoint's preparer runs torch ops: one thread per worker, as in a DataLoader
        torch.set_num_threads(1)


def _load(indices: Sequence[int]) -> list:
    return [_dataset[i] for i in indices]


def iter_batches(dataset, batches: Sequence[Sequence[int]], workers: int, ahead: int = 4) -> Iterator[list]:
    """``[dataset[i] for i in batch]`` for every batch, in order. With ``workers`` > 0 they are made
    by that many worker processes, at most ``workers * ahead`` batches ahead of the consumer (the
    memory in flight does not grow with the number of images); else in this process. Close the
    iterator (or exhaust it) to stop the workers."""
    if workers <= 0:
        for b in batches:
            yield [dataset[i] for i in b]
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork where there is one: the workers inherit the dataset (paths, preparer) without pickling it
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(dataset,))
    todo = iter(batches)
    pending: deque = deque()
    try:
        for b in todo:
            pending.append(pool.submit(_load, b))
            if len(pending) >= workers * ahead:
                break
        while pending:
            try:
                out = pending.popleft().result()
            except BrokenProcessPool as e:
                raise VrError("a worker process decoding images died (killed, or out of memory): lower --workers "
                              "or --batch-size") from e
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_load, nxt))
            yield out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
