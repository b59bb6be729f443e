"""The training run's datasets, samplers and loaders, seeded so that a resumed run, any worker
count and any process count see the batches an uninterrupted run would have seen."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vr.data.balance import BalancedSampler
from vr.data.dataset import ImageDataset
from vr.train import distributed as D
from vr.train.augment import build_train_transform
from vr.util.device import Runtime


class EpochSeeded(Dataset):
    """Sample ``i`` of epoch ``e`` is augmented from an RNG seeded by (seed, e, i).

    So the augmentation of every sample is the same whatever the worker count, the number of
    processes or where a run was resumed; the epoch lives in shared memory so persistent
    DataLoader workers see it change.
    """

    def __init__(self, ds: Dataset, seed: int):
        self.ds, self.seed = ds, seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        s = ((self.seed * 100_003 + int(self.epoch)) * 2_147_483_659 + i) % 2**63
        if torch.utils.data.get_worker_info() is not None:
            torch.manual_seed(s)
            return self.ds[i]
        with torch.random.fork_rng(devices=[]):  # keep the main process's stream (dropout) intact
            torch.manual_seed(s)
            return self.ds[i]


def make_loader(ds, batch_size: int, rt: Runtime, workers: int, *, train: bool, sampler=None,
                generator=None) -> DataLoader:
    n = len(sampler) if sampler is not None else len(ds)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        generator=generator, pin_memory=rt.device.type == "cuda", drop_last=train and n > batch_size,
        persistent_workers=workers > 0, worker_init_fn=D.ignore_sigint_in_worker if workers > 0 else None,
    )


@dataclass
class Loaders:
    train_ds: EpochSeeded
    train_sampler: object  # DistributedSampler or BalancedSampler: set_epoch(e) reshuffles
    train: DataLoader
    val: DataLoader

    def set_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)

    def close(self) -> None:
        """Stop the persistent workers now. Left to interpreter exit, multiprocessing would send
        them SIGTERM, which they ignore (D.ignore_stop_signals_in_worker), and wait for them forever."""
        for loader in (self.train, self.val):
            it, loader._iterator = getattr(loader, "_iterator", None), None
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


def build_loaders(cfg, train_samples, val_samples, num_classes: int, pre, rt: Runtime, ctx: D.DistContext) -> Loaders:
    """The shuffle of epoch e is a permutation seeded by (seed, e) alone, in one process as in DDP
    (a DataLoader generator would not do: persistent workers skip a draw from it after epoch 1)."""
    train_ds = EpochSeeded(ImageDataset(train_samples, build_train_transform(
        pre, cfg.aug, hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, blur=cfg.blur,
        color_jitter=cfg.color_jitter, translate=cfg.translate, random_erasing=cfg.random_erasing, uint8=True)),
        cfg.seed)
    # uint8 images from the workers, normalised per batch on the device (TrainStep.prepare and
    # evaluate_per_class's prepare): a quarter of the bytes through shared memory and to the GPU.
    val_ds = ImageDataset(val_samples, pre.to_uint8)
    if cfg.balance == "sampler":
        # One class-balanced draw of the epoch, the same on every rank, then sharded rank::world.
        sampler = BalancedSampler([y for _, y in train_samples], num_classes, rank=ctx.rank,
                                  world_size=ctx.world_size, seed=cfg.seed * 100003)
    else:
        sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=cfg.seed * 100003)
    val_sampler = D.ShardSampler(len(val_ds), ctx.rank, ctx.world_size) if ctx.enabled else None
    # The loader's own generator only seeds worker processes (unused: see EpochSeeded); a private
    # one keeps it from drawing on the global RNG.
    train = make_loader(train_ds, cfg.batch_size, rt, cfg.workers, train=True, sampler=sampler,
                        generator=torch.Generator().manual_seed(cfg.seed))
    val = make_loader(val_ds, cfg.batch_size, rt, cfg.workers, train=False, sampler=val_sampler)
    return Loaders(train_ds, sampler, train, val)
