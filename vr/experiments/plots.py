"""The pictures of `vr compare` (matplotlib, Agg, imported inside each function).

Every picture gives run i the same colour and marker; train curves are dashed, val curves solid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vr.util.io import atomic_path

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
TRAIN_STYLE, VAL_STYLE = "--", "-"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_colours(n: int) -> list:
    """Distinct colours: tab10 up to 10 runs, tab20 up to 20, then evenly spaced on turbo."""
    plt = _plt()
    if n <= 10:
        cmap = plt.get_cmap("tab10")
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = plt.get_cmap("tab20")
        return [cmap(i) for i in range(n)]
    cmap = plt.get_cmap("turbo")
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _marker(i: int, runs) -> dict:
    """A marker per run while the epochs are few enough to tell apart (a 1-epoch run is a point)."""
    most = max(len(r.rows) for r in runs)
    if most > 40:
        return {}
    # earlier runs get bigger markers, so points that coincide show as concentric marks
    size = (6.5 if most <= 15 else 4.5) - 0.7 * min(i, 4)
    return {"marker": MARKERS[i % len(MARKERS)], "markersize": size}


def _lw(i: int) -> float:
    """Earlier runs are drawn wider, so a later run lying exactly on them leaves a visible rim."""
    return 2.6 - 0.3 * min(i, 4)


def _epochs(r) -> list[int]:
    return [row["epoch"] for row in r.rows]


def _style_axes(ax, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _legend_handles(runs, colours, styles: bool):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[i], lw=_lw(i), label=r.label, **_marker(i, runs)) for i, r in enumerate(runs)]
    if styles:
        handles += [Line2D([], [], color="0.3", ls=TRAIN_STYLE, lw=1.5, label="train (dashed)"),
                    Line2D([], [], color="0.3", ls=VAL_STYLE, lw=1.5, label="val (solid)")]
    return handles


def _save(fig, path: Path) -> None:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)


def _draw_pair(ax, runs, colours, train_key: str, val_key: str, mark_best: bool = False) -> None:
    for i, r in enumerate(runs):
        x = _epochs(r)
        m = _marker(i, runs)
        ax.plot(x, [row[train_key] for row in r.rows], ls=TRAIN_STYLE, color=colours[i], lw=_lw(i) - 0.6, alpha=0.85,
                **{**m, "markerfacecolor": "white"} if m else {})
        ax.plot(x, [row[val_key] for row in r.rows], ls=VAL_STYLE, color=colours[i], lw=_lw(i), **m)
        if mark_best:
            b = r.best
            ax.scatter([b["epoch"]], [b["val_acc"]], s=160, marker="*", color=colours[i], edgecolor="black",
                       linewidths=0.7, zorder=5)


def _draw_gap(ax, runs, colours, kind: str) -> None:
    for i, r in enumerate(runs):
        if kind == "acc":
            y = [row["train_acc"] - row["val_acc"] for row in r.rows]
        else:
            y = [row["val_loss"] - row["train_loss"] for row in r.rows]
        ax.plot(_epochs(r), y, color=colours[i], lw=_lw(i), **_marker(i, runs))
    ax.axhline(0, color="black", lw=0.8)


def _draw_lr(ax, runs, colours) -> None:
    lrs = [row["lr"] for r in runs for row in r.rows]
    for i, r in enumerate(runs):
        ax.plot(_epochs(r), [row["lr"] for row in r.rows], color=colours[i], lw=_lw(i), **_marker(i, runs))
    positive = [v for v in lrs if v > 0]
    if positive and len(positive) == len(lrs) and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _side_legend(ax, handles) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)


def plot_pair(runs: Sequence, colours, train_key: str, val_key: str, title: str, ylabel: str, path: Path,
              mark_best: bool = False) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    _draw_pair(ax, runs, colours, train_key, val_key, mark_best)
    sub = "train dashed, val solid" + ("; ★ best val epoch" if mark_best else "")
    _style_axes(ax, f"{title} ({sub})", ylabel)
    _side_legend(ax, _legend_handles(runs, colours, True))
    _save(fig, path)


def plot_gap(runs: Sequence, colours, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    _draw_gap(axes[0], runs, colours, "acc")
    _style_axes(axes[0], "Accuracy gap: train − val (above 0: overfitting)", "train acc − val acc")
    _draw_gap(axes[1], runs, colours, "loss")
    _style_axes(axes[1], "Loss gap: val − train (above 0: overfitting)", "val loss − train loss")
    _side_legend(axes[1], _legend_handles(runs, colours, False))
    fig.suptitle("Train–val gap per epoch")
    fig.tight_layout()
    _save(fig, path)


def plot_lr(runs: Sequence, colours, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    _draw_lr(ax, runs, colours)
    _style_axes(ax, "Learning rate (end of each epoch)", "learning rate")
    _side_legend(ax, _legend_handles(runs, colours, False))
    _save(fig, path)


def plot_overview(runs: Sequence, colours, path: Path) -> None:
    """Loss, accuracy, accuracy gap and lr in one 2x2 picture with one legend below."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _draw_pair(axes[0, 0], runs, colours, "train_loss", "val_loss")
    _style_axes(axes[0, 0], "Loss (train dashed, val solid)", "loss")
    _draw_pair(axes[0, 1], runs, colours, "train_acc", "val_acc", mark_best=True)
    _style_axes(axes[0, 1], "Accuracy (train dashed, val solid; ★ best val)", "accuracy")
    _draw_gap(axes[1, 0], runs, colours, "acc")
    _style_axes(axes[1, 0], "Train − val accuracy (above 0: overfitting)", "accuracy gap")
    _draw_lr(axes[1, 1], runs, colours)
    _style_axes(axes[1, 1], "Learning rate (end of epoch)", "learning rate")
    handles = _legend_handles(runs, colours, True)
    ncol = len(handles) if len(handles) <= 6 else 4
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(handles) - 1) // ncol), 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize="medium", frameon=False)
    _save(fig, path)


def plot_worst(runs: Sequence, colours, worst: list[dict], path: Path) -> None:
    """Grouped horizontal bars: one group per class (worst at the top), one bar per run."""
    import numpy as np

    plt = _plt()
    n, k = len(runs), len(worst)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(8.5, max(2.5, 0.35 * n * k + 1.5)))
    y0 = np.arange(k)
    for i, r in enumerate(runs):
        vals = [w["f1"][r.label] for w in worst]
        ys = y0 + (i - (n - 1) / 2) * height
        bars = ax.barh(ys, [0 if v is None else v for v in vals], height=height * 0.95, color=colours[i],
                       label=r.label)
        for y, v in zip(ys, vals):
            ax.text((v or 0) + 0.01, y, "n/a" if v is None else f"{v:.2f}", va="center", fontsize=8)
        del bars
    ax.set_yticks(y0, [w["class"] for w in worst])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("F1 (vr eval report)")
    ax.set_ylabel("class")
    ax.set_title(f"Per-class F1 of the {k} worst classes (lowest mean F1 first)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    _save(fig, path)
