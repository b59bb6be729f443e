"""The `vr` command line. Thin: parse, build the command's config, call its run()."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vr.cliutil import config_command
from vr.errors import VrError

app = typer.Typer(
    name="vr",
    help="Train, export, evaluate and submit image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Make datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
):
    _state["debug"] = debug
    if version:
        import vr

        typer.echo(f"vr {vr.__version__}")
        raise typer.Exit()


@data_app.command("digits")
def data_digits(
    out: Annotated[Path, typer.Argument(help="Folder to create (train/, val/, test/, test_labels.csv).")] = Path("data/digits"),
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 32,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
):
    """Write scikit-learn's handwritten digits (real scans) as a competition-style folder."""
    from vr.data.digits import write_digits

    if size < 8:
        raise VrError("--size must be at least 8")
    counts = write_digits(out, size=size, seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {out}: {counts['train']} train, {counts['val']} val, {counts['test']} test images "
               f"(labels of test/ in {out / 'test_labels.csv'})")


def _train(cfg):
    from vr.train.loop import run

    run(cfg)


def _eval(cfg):
    from vr.evaluate.evaluate import run_eval

    run_eval(cfg)


def _submit(cfg):
    from vr.evaluate.submit import run_submit

    run_submit(cfg)


def _export(cfg):
    from vr.export.run import run

    run(cfg)


def _compare(cfg):
    from vr.experiments.compare import run

    run(cfg)


def _sweep(cfg):
    from vr.experiments.sweep import run

    run(cfg)


def _register() -> None:
    from vr.export.config import ExportConfig
    from vr.evaluate.config import EvalConfig, SubmitConfig
    from vr.train.config import TrainConfig

    config_command(app, "train", TrainConfig, _train,
                   help="Train or fine-tune a classifier on DATA (train/<class>/, val/<class>/).")
    config_command(app, "eval", EvalConfig, _eval,
                   help="Score MODELS (.pt, .onnx, .engine) on labelled images and compare them: metrics, confusion "
                        "matrices, worst classes, speed and agreement in OUT/report.md and report.json.")
    config_command(app, "submit", SubmitConfig, _submit,
                   help="Write the leaderboard CSV (image_name,pred_label: file stem, class folder name) for the "
                        "images in TEST_DIR, or --check an existing one. Unreadable images, clashing stems and an "
                        "empty folder are refused, naming the files.")

    config_command(app, "export", ExportConfig, _export,
                   help="Export CHECKPOINT to ONNX with resize, crop, normalisation and TTA inside the graph (input: "
                        "uint8 [N, H, W, 3] RGB, one size per batch; output: probs [N, C]), check it against PyTorch "
                        "on real images and refuse to write it if they disagree. --trt also builds a TensorRT engine.")

    from vr.experiments.config import CompareConfig, SweepConfig

    config_command(app, "compare", CompareConfig, _compare, yaml_option=False,
                   help="Compare RUNS (vr train folders): overlaid loss/accuracy/lr curves, the train-val gap, a "
                        "table of best val acc, epoch, losses, params, time and hyperparameters (OUT/compare.md, "
                        "compare.csv) and, with vr eval reports in RUN/eval/, the worst classes side by side.")
    config_command(app, "sweep", SweepConfig, _sweep, yaml_option=False,
                   help="Train every combination of the --set values (one run after another, into OUT/<label>/), "
                        "starting from the train config CONFIG; finished runs are skipped and unfinished ones "
                        "resumed, so rerunning continues a sweep. Then compare them into OUT/compare/. --dry-run "
                        "prints the vr train commands instead.")


_register()


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: VrError -> one red line and exit 2; Ctrl-C -> exit 130."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except VrError as e:
        if _state["debug"]:
            raise
        from vr.util.console import err_console

        from rich.markup import escape

        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        from vr.util.console import err_console

        err_console.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 1
    except Exception as e:  # click usage errors in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        raise
    # typer turns Ctrl-C into Exit(130) and, without standalone mode, returns exit codes
    if isinstance(rv, int) and not isinstance(rv, bool):
        if rv == 130:
            from vr.util.console import err_console

            err_console.print("interrupted")
        return rv
    return 0


if __name__ == "__main__":
    sys.exit(main())
