"""Run-folder logging: metrics.csv (rewritten atomically each epoch), TensorBoard, curves.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vr.util.io import atomic_path, atomic_write_text

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


class RunLogger:
    """One row per epoch. The whole CSV is rewritten from memory, so a resumed run never repeats
    or skips an epoch."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, history: list[dict] | None = None):
        self.run_dir = run_dir
        self.rows: list[dict] = list(history or [])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except ImportError:
                from vr.util.console import warn

                warn("tensorboard is not installed; skipping TensorBoard logs (pip install tensorboard)")

    def log(self, row: dict) -> None:
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if self.tb is not None:
            e = row["epoch"]
            self.tb.add_scalars("loss", {"train": row["train_loss"], "val": row["val_loss"]}, e)
            self.tb.add_scalars("accuracy", {"train": row["train_acc"], "val": row["val_acc"]}, e)
            self.tb.add_scalar("lr", row["lr"], e)
            self.tb.flush()
        plot_curves(self.rows, self.run_dir / "curves.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(rows: list[dict], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["val_loss"] for r in rows], "s-", label="val")
    ax.set(title="Loss", xlabel="epoch", ylabel="loss")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [r["train_acc"] for r in rows], "o-", label="train")
    ax.plot(epochs, [r["val_acc"] for r in rows], "s-", label="val")
    ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    ax.legend()
    ax = axes[2]
    ax.plot(epochs, [r["lr"] for r in rows], "o-", color="tab:green")
    ax.set(title="Learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for a in axes:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
