"""`vr sweep`: train a grid of `vr train` runs one after another, resumably, then compare them.

Layout: ``OUT/<label>/`` per grid point, the label being the swept settings in the order of the
``--set`` options (``sched=cosine,lr=0.001``; characters other than letters, digits and ``._=+-``
become ``_``); ``OUT/<label>/done.json`` marks a finished run; ``OUT/sweep.json`` records the grid;
``OUT/compare/`` holds `vr compare` over the runs.

A run is finished when its done.json says so or its last.pt holds the configured number of epochs;
it is skipped. A run folder with a last.pt short of the epochs is continued with ``--resume``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from vr.config import config_argv, load_yaml
from vr.errors import VrError
from vr.experiments.config import SweepConfig
from vr.util.console import info, warn
from vr.util.paths import term
from vr.util.io import atomic_write_json, check_writable_dir

DONE = "done.json"
# TrainConfig fields the sweep sets itself.
RESERVED = ("out", "resume")
# Settings that may differ between an existing run folder and the sweep's config for it.
_RUN_ONLY = frozenset({"data", "out", "resume", "epochs", "device", "workers", "tensorboard", "verify_images",
                       "amp", "channels_last", "compile", "save_top_k"})


@dataclass
class GridPoint:
    label: str
    values: dict[str, str]   # key -> the value as typed after --set
    cfg: object              # TrainConfig
    run_dir: Path
    state: str = "new"       # new | resume | done
    detail: str = ""


def _train_fields() -> dict[str, dataclasses.Field]:
    from vr.train.config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['sched=cosine,step', 'lr=1e-3'] -> [('sched', ['cosine', 'step']), ('lr', ['1e-3'])]."""
    fields = _train_fields()
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise VrError(f"--set {item!r}: expected KEY=V1,V2,... (e.g. --set sched=cosine,plateau)")
        raw_key, raw_vals = item.split("=", 1)
        key = raw_key.strip().lstrip("-").replace("-", "_")
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else " (see vr train --help)"
            raise VrError(f"--set: unknown key {raw_key.strip()!r}: not a vr train option{hint}")
        if key in RESERVED:
            raise VrError(f"--set: {key} cannot be swept: the sweep sets it for each run (use --out for the folder)")
        if any(k == key for k, _ in grid):
            raise VrError(f"--set: {key} is given twice; put all its values in one --set {key}=V1,V2,...")
        values = [v.strip() for v in raw_vals.split(",")]
        if not raw_vals.strip() or any(v == "" for v in values):
            raise VrError(f"--set {item!r}: empty value (expected {key}=V1,V2,...)")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise VrError(f"--set {key}: the value(s) {', '.join(dup)} are given twice")
        grid.append((key, values))
    return grid


def safe_label(values: dict[str, str]) -> str:
    label = ",".join(f"{k}={re.sub(r'[^A-Za-z0-9._+-]+', '_', v).strip('_') or '_'}" for k, v in values.items())
    if len(label.encode()) > 200:  # keep well inside the file-name limit (255 bytes)
        label = label[:180] + "-" + hashlib.sha1(label.encode()).hexdigest()[:10]
    return label


def _typed(key: str, raw: str):
    """A --set value as from_sources expects it: tuple fields take space-separated items."""
    from vr.train.config import TrainConfig

    tp = TrainConfig.field_types()[key]
    is_union = typing.get_origin(tp) is typing.Union or type(tp) is types.UnionType
    inner = [a for a in typing.get_args(tp) if a is not type(None)] if is_union else []
    base = inner[0] if inner else tp
    if typing.get_origin(base) in (tuple, list):
        return raw.replace(",", " ").split()
    return raw


def build_points(cfg: SweepConfig) -> tuple[dict, list[GridPoint]]:
    from vr.train.config import TrainConfig

    grid = parse_grid(cfg.grid)
    base = load_yaml(cfg.config)
    if "data" not in base or base["data"] in (None, ""):
        raise VrError(f"{cfg.config} has no data: key (the dataset folder every run of the sweep trains on)")
    for k in RESERVED:
        if k in base:
            warn(f"{cfg.config}: {k}: {base[k]} is ignored; the sweep sets it for each run")
            base.pop(k)
    out = Path(cfg.out)
    points: list[GridPoint] = []
    seen: dict[str, str] = {}
    for combo in itertools.product(*[vals for _, vals in grid]):
        values = {k: v for (k, _), v in zip(grid, combo)}
        label = safe_label(values)
        if label in seen:
            raise VrError(f"--set values {seen[label]} and {values} give the same run folder name {label!r}")
        seen[label] = str(values)
        overrides = {**base, **{k: _typed(k, v) for k, v in values.items()}, "out": out / label, "resume": False}
        try:
            tcfg = TrainConfig.from_sources(None, **overrides)
        except VrError as e:
            raise VrError(f"sweep run {label}: {e}") from e
        points.append(GridPoint(label=label, values=values, cfg=tcfg, run_dir=out / label))
    return {"config": str(cfg.config), "grid": [{"key": k, "values": v} for k, v in grid]}, points


def _check_same_run(p: GridPoint) -> None:
    """Refuse to resume or skip a folder trained with other settings than this grid point's."""
    saved_path = p.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError:
        return
    diffs = p.cfg.differences(saved if isinstance(saved, dict) else {}, ignore=_RUN_ONLY)
    if diffs:
        raise VrError(f"{p.run_dir} holds a run with other settings ({'; '.join(diffs[:3])}); delete it or pick "
                      "another --out")


def inspect_state(p: GridPoint) -> None:
    """Set p.state: done (skip), resume (last.pt short of the epochs) or new."""
    from vr.models.checkpoint import load_checkpoint

    epochs = p.cfg.epochs
    marker, last = p.run_dir / DONE, p.run_dir / "last.pt"
    if not last.is_file():
        p.state, p.detail = "new", ""
        return
    _check_same_run(p)
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
            if int(done.get("epochs", 0)) >= epochs:
                p.state, p.detail = "done", f"finished, {done.get('epochs')} epochs"
                return
        except (OSError, ValueError, TypeError, AttributeError):
            pass
    ck = load_checkpoint(last)
    if ck.epoch >= epochs:
        p.state, p.detail = "done", f"finished, last.pt holds epoch {ck.epoch}/{epochs}"
        write_done(p, {"epochs": ck.epoch, "note": "found finished"})
    else:
        p.state, p.detail = "resume", f"last.pt holds epoch {ck.epoch}/{epochs}"


def write_done(p: GridPoint, result: dict) -> None:
    atomic_write_json(p.run_dir / DONE, {"label": p.label, "values": p.values, **result})


def train_argv(p: GridPoint, config_path: Path) -> list[str]:
    """The `vr train` arguments that train (or resume) this grid point, starting from CONFIG.yaml:
    the swept settings as flags (vr.config.config_argv), then --out and --resume / --no-resume."""
    swept, _ = config_argv(p.cfg, names=list(p.values))
    resume = "--resume" if p.state == "resume" else "--no-resume"
    return ["train", str(p.cfg.data), "--config", str(config_path), *swept, "--out", str(p.run_dir), resume]


def train_command(p: GridPoint, config_path: Path) -> str:
    """train_argv as the shell line --dry-run prints (a new run's --no-resume is implied)."""
    args = ["vr", *train_argv(p, config_path)]
    if args[-1] == "--no-resume":
        args.pop()
    return " ".join(shlex.quote(a) for a in args)


def run_point(p: GridPoint, config_path: Path) -> int:
    """Train one grid point as its own `vr train` process (so a crash, an out-of-memory kill or a
    CUDA error ends that run, not the sweep); its output goes to this terminal. Returns its exit
    status (130: interrupted)."""
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, "-m", "vr.cli", *train_argv(p, config_path)]).returncode
    except KeyboardInterrupt:  # Ctrl-C reached the child too: it saves last.pt and prints the resume line
        return 130


def _train_points(points: list, config_path) -> tuple[list, list]:
    """Train every point not done yet, one `vr train` process each; a failed run is reported and
    the sweep goes on. Returns (trained, [(point, why it failed)])."""
    n = len(points)
    trained, failed = [], []
    for i, p in enumerate(points, 1):
        head = f"[bold]sweep {i}/{n}[/bold] {term(p.label)}"
        if p.state == "done":
            info(f"{head}: skipped ({p.detail})")
            continue
        info(f"{head}: {'resuming' if p.state == 'resume' else 'training'} → {term(str(p.run_dir))}"
             + (f" ({p.detail})" if p.detail else ""))
        code = run_point(p, config_path)
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            why = "its error is above" if code == 2 else f"exit status {code}"
            warn(f"sweep run {term(p.label)} failed ({why}); going on with the next")
            failed.append((p, why))
            continue
        write_done(p, _result(p))
        p.state = "done"
        trained.append(p)
    return trained, failed


def _result(p: GridPoint) -> dict:
    """What done.json records of a finished run: best val acc, its epoch and the run's seconds."""
    from vr.train.logging import read_metrics

    rows = read_metrics(p.run_dir / "metrics.csv") if (p.run_dir / "metrics.csv").is_file() else []
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"])) if rows else {}
    return {"epochs": p.cfg.epochs, "best_acc": best.get("val_acc"), "best_epoch": best.get("epoch"),
            "seconds": round(sum(r.get("seconds", 0.0) for r in rows), 3)}


def compare_command(points: list[GridPoint], out: Path, worst_k: int) -> str:
    args = ["vr", "compare", *[str(p.run_dir) for p in points], "--out", str(out / "compare"),
            "--worst-k", str(worst_k)]
    return " ".join(shlex.quote(a) for a in args)


def run(cfg: SweepConfig) -> dict:
    from vr.util.console import err_console

    meta, points = build_points(cfg)
    data = Path(points[0].cfg.data)
    if not data.is_dir() and not cfg.dry_run:  # printed commands may be meant for another machine
        raise VrError(f"data folder not found: {data} (the data: of {cfg.config})")
    out = Path(cfg.out)
    from vr.util.paths import check_folder_owner, check_outputs

    check_outputs([("--out", out), ("the sweep record", out / "sweep.json")], [("the sweep config", cfg.config)],
                  [("the data folder", data)])  # before any file is written (inspect_state may write done.json)
    check_folder_owner(out, "sweep")
    for p in points:
        inspect_state(p)
    todo = [p for p in points if p.state != "done"]

    if cfg.dry_run:
        for p in points:
            if p.state == "done":
                err_console.print(f"# skipped {p.label}: {p.detail}", markup=False, highlight=False)
        for p in todo:
            print(train_command(p, cfg.config))
        if cfg.compare:
            print(compare_command(points, out, cfg.worst_k))
        return {"points": points, "trained": [], "failed": []}

    check_writable_dir(out)
    atomic_write_json(out / "sweep.json", {**meta, "runs": [{"label": p.label, "values": p.values,
                                                             "dir": str(p.run_dir)} for p in points]})
    n = len(points)
    try:
        trained, failed = _train_points(points, cfg.config)
    except KeyboardInterrupt:  # in a run or between two runs: the same hint
        err_console.print("sweep interrupted: run the same command again to resume it (finished runs are skipped)")
        raise

    report = None
    if cfg.compare:
        ready = [p for p in points if (p.run_dir / "metrics.csv").is_file()]
        if ready:
            from vr.experiments.compare import compare_runs

            report = compare_runs([p.run_dir for p in ready], out / "compare", [p.label for p in ready], cfg.worst_k,
                                  labels_note="Labels: the swept settings (the names of the run folders).")
    skipped = n - len(trained) - len(failed)
    info(f"sweep: {len(trained)} trained, {skipped} skipped (already finished), {len(failed)} failed · {term(str(out))}")
    if failed:
        raise VrError(f"{len(failed)} of {n} sweep runs failed: "
                      + "; ".join(f"{p.label}: {msg}" for p, msg in failed))
    return {"points": points, "trained": trained, "failed": failed, "compare": report}
