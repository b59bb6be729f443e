"""`vr compare`: put several `vr train` run folders side by side.

Reads from each RUN_DIR:
- ``metrics.csv`` (required): the per-epoch curves;
- ``config.yaml``: hyperparameters (run labels are the ones that differ between the runs);
- ``best.pt`` (else ``last.pt``): the parameter count;
- a `vr eval` report, ``RUN_DIR/eval/report.json`` (else the only ``RUN_DIR/*/report.json``): per-class F1.

Writes to OUT: ``compare.md``, ``compare.csv``, ``loss.png``, ``accuracy.png``, ``lr.png``,
``gap.png``, ``overview.png`` and, with eval reports, ``worst_classes.png`` / ``worst_classes.csv``.
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from vr.errors import VrError, first_line
from vr.util import fmt
from vr.experiments.config import EVAL_REPORT, CompareConfig
from vr.util.console import info, warn
from vr.util.paths import term
from vr.util.io import atomic_write_text, check_writable_dir

# config.yaml keys that never describe the experiment: where it ran and where it wrote.
IGNORED_KEYS = frozenset({"data", "out", "resume", "device", "workers", "tensorboard", "verify_images",
                          "channels_last", "compile", "save_top_k"})
# Hyperparameters always shown in the table (when the runs' configs have them), before the differing ones.
KEY_HPARAMS = ("model", "img_size", "batch_size", "opt", "lr", "sched", "aug", "drop_rate")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class RunInfo:
    path: Path
    rows: list[dict]
    config: dict = field(default_factory=dict)
    params: int | None = None
    report: dict | None = None          # the chosen models[] entry of the eval report
    report_path: Path | None = None
    label: str = ""

    @property
    def best(self) -> dict:
        """The epoch of highest val accuracy (the earliest one on ties, as `vr train` keeps best.pt)."""
        return max(self.rows, key=lambda r: (r["val_acc"], -r["epoch"]))

    @property
    def last(self) -> dict:
        return self.rows[-1]

    @property
    def seconds(self) -> float:
        return float(sum(r["seconds"] for r in self.rows))


# --- reading run folders -----------------------------------------------------------------------
def read_run_metrics(path: Path) -> list[dict]:
    from vr.train.logging import COLUMNS, read_metrics

    f = path / "metrics.csv"
    try:
        rows = read_metrics(f)
    except (ValueError, TypeError, KeyError) as e:
        raise VrError(f"cannot read {f}: {e}") from e
    if not rows:
        raise VrError(f"{f} lists no epochs yet")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise VrError(f"{f} lacks the column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
    return sorted(rows, key=lambda r: r["epoch"])


def count_state_dict_params(state_dict: dict) -> int:
    """Parameters in a state dict: every tensor except BatchNorm's running statistics."""
    return int(sum(v.numel() for k, v in state_dict.items() if not k.endswith(_BN_BUFFERS)))


def run_params(path: Path) -> int | None:
    from vr.models.checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            try:
                return count_state_dict_params(load_checkpoint(path / name).state_dict)
            except VrError as e:
                warn(f"parameter count of {path}: {e}")
                return None
    return None


def find_report(path: Path) -> Path | None:
    """RUN_DIR/eval/report.json, else the single RUN_DIR/*/report.json (None when absent or ambiguous)."""
    first = path / EVAL_REPORT
    if first.is_file():
        return first
    found = sorted(path.glob("*/report.json"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        warn(f"{path} holds several eval reports ({', '.join(str(f.relative_to(path)) for f in found)}); "
             f"put the one to compare in {path / EVAL_REPORT}")
    return None


def pick_report_model(report: dict, run_dir: Path) -> dict | None:
    """The report's entry for RUN_DIR/best.pt, else for another file of the run, else its first model."""
    models = [m for m in report.get("models", []) if isinstance(m, dict) and isinstance(m.get("per_class"), dict)]
    if not models:
        return None

    def resolved(m):
        try:
            return Path(m.get("path", "")).resolve()
        except OSError:
            return None

    run_dir = run_dir.resolve()
    for m in models:
        if resolved(m) == run_dir / "best.pt":
            return m
    for m in models:  # a relative path written from another working folder
        if Path(m.get("path", "")).name == "best.pt":
            return m
    for m in models:
        p = resolved(m)
        if p is not None and run_dir in p.parents:
            return m
    return models[0]


def load_run(path: Path) -> RunInfo:
    path = Path(path)
    if not path.exists():
        raise VrError(f"run folder not found: {path}")
    if not path.is_dir():
        raise VrError(f"{path} is not a run folder (give the folder `vr train --out` wrote)")
    if not (path / "metrics.csv").is_file():
        raise VrError(f"{path} has no metrics.csv: not a `vr train` run folder, or no epoch has finished yet")
    run = RunInfo(path=path, rows=read_run_metrics(path))
    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            run.config = cfg if isinstance(cfg, dict) else {}
        except yaml.YAMLError as e:
            warn(f"cannot parse {cfg_path} ({first_line(e)}); its hyperparameters are left out")
    else:
        warn(f"{path} has no config.yaml; its hyperparameters are left out")
    run.params = run_params(path)
    rp = find_report(path)
    if rp is not None:
        try:
            report = json.loads(rp.read_text())
            run.report = pick_report_model(report, path) if isinstance(report, dict) else None
            if run.report is not None and not all(isinstance(d, dict) and isinstance(d.get("f1"), (int, float))
                                                  for d in run.report["per_class"].values()):
                run.report = None
            run.report_path = rp if run.report is not None else None
            if run.report is None:
                warn(f"{rp} holds no model with per-class scores; left out")
        except (OSError, json.JSONDecodeError) as e:
            warn(f"cannot read {rp} ({e}); left out")
    return run


# --- labels ------------------------------------------------------------------------------------
def fmt_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "/".join(fmt_value(x) for x in v)
    if isinstance(v, str) and ("/" in v or "\\" in v):
        return Path(v).name or v
    return str(v)


def differing_keys(configs: Sequence[dict]) -> list[str]:
    """Config keys (in the order they are saved) whose values are not all equal, ignoring IGNORED_KEYS."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    out = []
    for k in keys:
        if k in IGNORED_KEYS:
            continue
        vals = [json.dumps(c.get(k, "<missing>"), sort_keys=True, default=str) for c in configs]
        if len(set(vals)) > 1:
            out.append(k)
    return out


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, with as many parent folders as it takes to tell them apart."""
    resolved = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in resolved):
            return names
        depth += 1


def derive_labels(runs: Sequence[RunInfo]) -> list[str]:
    """key=value of the hyperparameters that differ (e.g. ``sched=cosine,lr=0.001``), else folder names."""
    names = _unique_names([r.path for r in runs])
    if len(runs) < 2 or any(not r.config for r in runs):
        return names
    keys = differing_keys([r.config for r in runs])
    if not keys:
        return names
    labels = [",".join(f"{k}={fmt_value(r.config.get(k))}" for k in keys) for r in runs]
    if len(set(labels)) < len(labels):  # only ignored settings differ between some runs
        labels = [f"{lab} ({n})" for lab, n in zip(labels, names)]
    return labels


def assign_labels(runs: Sequence[RunInfo], given: list[str] | None) -> None:
    if given is not None:
        if len(given) != len(runs):
            raise VrError(f"--labels gives {len(given)} label(s) for {len(runs)} run(s); give one per run, "
                          f"comma-separated, in the order of the run folders")
        if any(not g for g in given):
            raise VrError("--labels holds an empty label")
        if len(set(given)) < len(given):
            dup = sorted({g for g in given if given.count(g) > 1})
            raise VrError(f"--labels repeats {', '.join(dup)}; each run needs its own label")
        labels = given
    else:
        labels = derive_labels(runs)
    for r, lab in zip(runs, labels):
        r.label = lab


# --- tables ------------------------------------------------------------------------------------
def format_params(n: int | None) -> str:
    return fmt.params(n, none="?")


def format_seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def hparam_columns(runs: Sequence[RunInfo]) -> tuple[list[str], list[str]]:
    """(table columns, keys differing between runs): KEY_HPARAMS present in any config, then the
    other differing keys."""
    diff = differing_keys([r.config for r in runs]) if len(runs) > 1 else []
    present = [k for k in KEY_HPARAMS if any(k in r.config for r in runs)]
    return present + [k for k in diff if k not in present], diff


def table_rows(runs: Sequence[RunInfo], hp_cols: Sequence[str]) -> list[dict]:
    rows = []
    for r in runs:
        b, last = r.best, r.last
        rows.append({
            "label": r.label, "run_dir": str(r.path),
            "best_val_acc": b["val_acc"], "best_epoch": b["epoch"],
            "epochs_run": last["epoch"], "epochs": r.config.get("epochs", ""),
            "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
            "final_train_acc": last["train_acc"], "final_val_acc": last["val_acc"],
            "final_acc_gap": last["train_acc"] - last["val_acc"],
            "params": "" if r.params is None else r.params, "seconds": r.seconds,
            **{k: fmt_value(r.config[k]) if k in r.config else "" for k in hp_cols},
        })
    return rows


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def worst_class_table(runs: Sequence[RunInfo], k: int) -> list[dict]:
    """The k classes of lowest mean F1 over the runs with an eval report (classes with images only),
    each with every run's F1 (None where the run has no report or lacks the class)."""
    from vr.data.classes import natural_key
    with_report = [r for r in runs if r.report is not None]
    if k <= 0 or not with_report:
        return []
    f1s: dict[str, list[float]] = {}
    for r in with_report:
        for name, d in r.report["per_class"].items():
            if int(d.get("support", 0)) > 0:
                f1s.setdefault(name, []).append(float(d["f1"]))
    ranked = sorted(f1s, key=lambda n: (sum(f1s[n]) / len(f1s[n]), natural_key(n)))[:k]
    out = []
    for name in ranked:
        per_run = {}
        for r in runs:
            d = r.report["per_class"].get(name) if r.report is not None else None
            per_run[r.label] = float(d["f1"]) if d is not None and int(d.get("support", 0)) > 0 else None
        out.append({"class": name, "mean_f1": sum(f1s[name]) / len(f1s[name]), "f1": per_run})
    return out


def render_markdown(runs: Sequence[RunInfo], rows: list[dict], hp_cols: Sequence[str], diff: Sequence[str],
                    worst: list[dict], pictures: dict[str, str], k: int, labels_given: bool | str = False) -> str:
    L = ["# Run comparison", ""]
    if labels_given:
        how = labels_given if isinstance(labels_given, str) else "Labels given by --labels."
    elif diff and all(r.config for r in runs):
        how = "Labels: the hyperparameters that differ between the runs (" + ", ".join(f"`{d}`" for d in diff) + ")."
    else:
        how = "Labels: the run folders' names (no hyperparameter that describes the experiment differs)."
    L.append(f"{len(runs)} run(s). {how}")
    L.append("")
    head = ["run", "best val acc", "best epoch", "epochs", "final train loss", "final val loss",
            "train−val acc (final)", "params", "time"] + list(hp_cols)
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * 8 + ["---"] * len(hp_cols)) + "|")
    for r, row in zip(runs, rows):
        ep = f"{row['epochs_run']}/{row['epochs']}" if row["epochs"] != "" else str(row["epochs_run"])
        cells = [f"**{_md(r.label)}**", _pct(row["best_val_acc"]), str(row["best_epoch"]), ep,
                 f"{row['final_train_loss']:.4f}", f"{row['final_val_loss']:.4f}",
                 f"{100 * row['final_acc_gap']:+.2f} pts", format_params(r.params), format_seconds(r.seconds)]
        cells += [_md(row[c]) if row[c] != "" else "–" for c in hp_cols]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append("Best val acc is the highest of metrics.csv (the epoch best.pt holds); final losses are the last "
             "epoch's; time is the sum of the epochs' `seconds`; params count the weights (not BatchNorm "
             "running statistics).")
    shared = []
    if len(runs) > 1 and all(r.config for r in runs):
        c0 = runs[0].config
        shared = [f"{k}={fmt_value(v)}" for k, v in c0.items()
                  if k not in IGNORED_KEYS and k not in diff and k not in hp_cols and v is not None]
    if shared:
        L += ["", "Same in every run: " + ", ".join(f"`{_md(s)}`" for s in shared) + "."]
    L.append("")
    L.append("## Runs")
    L.append("")
    for r in runs:
        rep = f"; eval report `{r.report_path}` (model `{r.report.get('name', '?')}`)" if r.report_path else ""
        L.append(f"- **{_md(r.label)}**: `{r.path}`{rep}")
    L.append("")
    L.append("## Curves")
    L.append("")
    L.append("Train dashed, val solid; one colour per run in every picture.")
    L.append("")
    for title, f in pictures.items():
        L.append(f"![{title}]({f})")
        L.append("")
    if worst:
        L.append("## Worst classes (per-class F1 from `vr eval`)")
        L.append("")
        L.append(f"The {len(worst)} classes of lowest mean F1 over the runs that have a report, worst first "
                 f"(`--worst-k {k}`); – where a run has no report or no images of the class.")
        L.append("")
        L.append("| class | " + " | ".join(_md(r.label) for r in runs) + " |")
        L.append("|---|" + "---:|" * len(runs))
        for w in worst:
            L.append(f"| {_md(w['class'])} | " + " | ".join(_pct(w["f1"][r.label]) for r in runs) + " |")
        missing = [r.label for r in runs if r.report is None]
        if missing:
            L.append("")
            L.append("No eval report (–): " + ", ".join(_md(m) for m in missing)
                     + f". Write one with `vr eval RUN_DIR/best.pt --data DATA --out RUN_DIR/{EVAL_REPORT.parent}`.")
        L.append("")
        L.append("![worst classes](worst_classes.png)")
        L.append("")
    return "\n".join(L)


def print_summary(runs: Sequence[RunInfo], rows: list[dict]) -> None:
    from rich.table import Table
    from rich.text import Text

    from vr.util.console import console

    t = Table(title="run comparison", title_justify="left")
    for c in ("run", "best val acc", "epoch", "final val loss", "params", "time"):
        t.add_column(c, justify="left" if c == "run" else "right")
    for r, row in zip(runs, rows):
        t.add_row(Text(r.label), _pct(row["best_val_acc"]), str(row["best_epoch"]), f"{row['final_val_loss']:.4f}",
                  format_params(r.params), format_seconds(r.seconds), )
    console.print(t)


# --- the command -------------------------------------------------------------------------------
def compare_runs(run_dirs: Sequence[Path], out: Path, labels: list[str] | None = None, worst_k: int = 5,
                 labels_note: str | None = None) -> dict:
    """Load, label, plot and tabulate; return {"runs": [RunInfo], "rows": [...], "files": {name: Path}}.
    ``labels_note`` says in compare.md where given ``labels`` come from."""
    from vr.experiments import plots

    resolved = [Path(p).resolve() for p in run_dirs]
    dup = sorted({str(p) for p, q in zip(run_dirs, resolved) if resolved.count(q) > 1})
    if dup:
        raise VrError(f"run folder given more than once: {', '.join(dup)}")
    from vr.util.paths import check_folder_owner, check_outputs, display

    check_outputs([("--out", out)], [("the run folder", p) for p in run_dirs])  # never over a run's own files
    check_folder_owner(out, "compare")
    runs = [load_run(Path(p)) for p in run_dirs]
    assign_labels(runs, labels)
    for r in runs:  # a run folder whose name is not UTF-8: plots, CSV and markdown take text only
        r.label = display(r.label)
    out = check_writable_dir(out)

    files: dict[str, Path] = {}
    pictures = {"overview": "overview.png", "loss": "loss.png", "accuracy": "accuracy.png",
                "train-val gap": "gap.png", "learning rate": "lr.png"}
    colours = plots.run_colours(len(runs))
    plots.plot_overview(runs, colours, out / "overview.png")
    plots.plot_pair(runs, colours, "train_loss", "val_loss", "Loss", "loss (cross-entropy)", out / "loss.png")
    plots.plot_pair(runs, colours, "train_acc", "val_acc", "Accuracy", "accuracy", out / "accuracy.png",
                    mark_best=True)
    plots.plot_gap(runs, colours, out / "gap.png")
    plots.plot_lr(runs, colours, out / "lr.png")
    for name in pictures.values():
        files[name] = out / name

    worst = worst_class_table(runs, worst_k)
    if worst:
        plots.plot_worst(runs, colours, worst, out / "worst_classes.png")
        files["worst_classes.png"] = out / "worst_classes.png"
        wrows = [{"class": w["class"], "mean_f1": w["mean_f1"],
                  **{r.label: ("" if w["f1"][r.label] is None else w["f1"][r.label]) for r in runs}} for w in worst]
        atomic_write_text(out / "worst_classes.csv", render_csv(wrows))
        files["worst_classes.csv"] = out / "worst_classes.csv"
    elif worst_k > 0 and not any(r.report is not None for r in runs):
        info(f"no eval reports found (looked for RUN_DIR/{EVAL_REPORT.as_posix()}); skipping the worst classes")

    hp_cols, diff = hparam_columns(runs)
    rows = table_rows(runs, hp_cols)
    atomic_write_text(out / "compare.csv", render_csv(rows))
    atomic_write_text(out / "compare.md", render_markdown(runs, rows, hp_cols, diff, worst, pictures, worst_k,
                                                                labels_note or labels is not None))
    files["compare.csv"] = out / "compare.csv"
    files["compare.md"] = out / "compare.md"
    print_summary(runs, rows)
    info(f"comparison: {term(str(out / 'compare.md'))} · compare.csv · {len([f for f in files if f.endswith('.png')])} pictures")
    return {"runs": runs, "rows": rows, "files": files}


def run(cfg: CompareConfig) -> dict:
    return compare_runs(cfg.runs, cfg.out, cfg.label_list(), cfg.worst_k)
