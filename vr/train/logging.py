"""Run-folder logging: metrics.csv (rewritten atomically each epoch), TensorBoard, curves.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vr.util.io import atomic_path, atomic_write_text
from vr.util.phases import mark

COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
# Written only when some row has them (backbone_lr: with --backbone-lr-mult).
OPTIONAL_COLUMNS = ("backbone_lr",)
PER_CLASS_COLUMNS = ("epoch", "class", "train_acc", "train_support", "val_acc", "val_support")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def per_class_rows(record: dict, class_names) -> list[dict]:
    """One per_class.csv row per class from an epoch's record of per-class counts (accuracy is
    empty for a class with no sample that epoch)."""
    rows = []
    for c, name in enumerate(class_names):
        tn, vn = record["train_total"][c], record["val_total"][c]
        rows.append({"epoch": record["epoch"], "class": name,
                     "train_acc": f"{record['train_correct'][c] / tn:.6g}" if tn else "", "train_support": int(tn),
                     "val_acc": f"{record['val_correct'][c] / vn:.6g}" if vn else "", "val_support": int(vn)})
    return rows


class RunLogger:
    """One row per epoch. The whole CSV is rewritten from memory, so a resumed run never repeats
    or skips an epoch."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, history: list[dict] | None = None,
                 per_class: list[dict] | None = None, class_names=()):
        self.run_dir = run_dir
        self.rows: list[dict] = list(history or [])
        self.per_class: list[dict] = list(per_class or [])
        self.class_names = tuple(class_names)
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
        cols = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c in r for r in self.rows))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in cols})
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        mark("per_class.csv + metrics.csv")
        if self.tb is not None:
            e = row["epoch"]
            self.tb.add_scalars("loss", {"train": row["train_loss"], "val": row["val_loss"]}, e)
            self.tb.add_scalars("accuracy", {"train": row["train_acc"], "val": row["val_acc"]}, e)
            self.tb.add_scalar("lr", row["lr"], e)
            if "backbone_lr" in row:
                self.tb.add_scalar("backbone_lr", row["backbone_lr"], e)
            self.tb.flush()
            mark("tensorboard")
        plot_curves(self.rows, self.run_dir / "curves.png")
        mark("curves.png")

    def log_per_class(self, record: dict) -> None:
        """Add an epoch's per-class counts and rewrite per_class.csv whole, like metrics.csv: the
        records live in last.pt, so a resumed run neither repeats nor skips an epoch."""
        self.per_class = [r for r in self.per_class if r["epoch"] < record["epoch"]] + [record]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=PER_CLASS_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.per_class:
            w.writerows(per_class_rows(r, self.class_names))
        atomic_write_text(self.run_dir / "per_class.csv", buf.getvalue())

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(rows: list[dict], path: Path, title: str | None = None) -> None:
    # matplotlib's object API, not pyplot (no global figure state, a shorter import), and fixed
    # margins instead of tight_layout (which draws the figure once more): this runs every epoch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
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
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 2.5
        if len(epochs) == 1:
            a.set_xlim(epochs[0] - 1, epochs[0] + 1)
    top = 0.91
    if title:
        fig.suptitle(title)
        top = 0.84
    fig.subplots_adjust(left=0.055, right=0.99, bottom=0.14, top=top, wspace=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
