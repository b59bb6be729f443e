"""CompareConfig and SweepConfig: the options of `vr compare` and `vr sweep` (no heavy imports:
the CLI imports this module at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vr.config import ConfigBase, check, option

EVAL_REPORT = Path("eval") / "report.json"  # RUN_DIR/eval/report.json: where compare looks first


@dataclass
class CompareConfig(ConfigBase):
    runs: list[Path] = option(help="Run folders written by `vr train` (each holds metrics.csv; config.yaml and "
                                   "best.pt/last.pt add hyperparameters and the parameter count).", argument=True)
    out: Path = option(Path("runs/compare"), "Folder for compare.md, compare.csv and the PNG pictures.")
    labels: Optional[str] = option(None, "Comma-separated names for the runs, one per run, in order (default: the "
                                         "hyperparameters that differ between the runs' config.yaml).")
    worst_k: int = option(5, "With `vr eval` reports (RUN_DIR/eval/report.json, else the one RUN_DIR/*/report.json): "
                             "how many classes of lowest mean F1 to show side by side (0: none).")

    def __post_init__(self):
        check(len(self.runs) > 0, "give at least one run folder")
        check(self.worst_k >= 0, f"--worst-k must be >= 0 (got {self.worst_k})")

    def label_list(self) -> list[str] | None:
        if self.labels is None:
            return None
        return [s.strip() for s in self.labels.split(",")]


@dataclass
class SweepConfig(ConfigBase):
    config: Path = option(help="Train config YAML (the options of `vr train`; must include data). Every run "
                               "starts from it.", argument=True)
    grid: list[str] = option([], "KEY=V1,V2,...: a `vr train` option and the values to try. Repeat for more "
                                 "keys; the grid is every combination. Tuple options (mean, std) take "
                                 "space-separated triples.", flag="--set")
    out: Path = option(Path("runs/sweep"), "Sweep folder: one run folder per grid point, OUT/<label>/ "
                                           "(e.g. OUT/sched=cosine,lr=0.001/), and the comparison in OUT/compare/.")
    dry_run: bool = option(False, "Print the `vr train` commands (one per line, then the `vr compare` command) and "
                                  "train nothing.")
    compare: bool = option(True, "Compare the runs into OUT/compare/ when the grid is done.")
    worst_k: int = option(5, "Passed to the comparison (see `vr compare --worst-k`).")

    def __post_init__(self):
        check(len(self.grid) > 0, "give at least one --set KEY=V1,V2,... (the grid to sweep)")
        check(self.worst_k >= 0, f"--worst-k must be >= 0 (got {self.worst_k})")
