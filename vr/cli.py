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
data_app = typer.Typer(help="Make and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        import vr

        typer.echo(f"vr {vr.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
):
    _state["debug"] = debug


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


def _runs(spec: str):
    """A command body: import ``module:function`` only when the command runs (`vr --help` stays fast)."""
    def run(cfg):
        from vr.formats import load_object
        from vr.util.phases import mark

        fn = load_object(spec)
        mark("imports")
        fn(cfg)

    return run


# (sub-app, name, config class, what runs it, yaml --config option, help)
COMMANDS = (
    ("data", "check", "vr.data.check:DataCheckConfig", "vr.data.check:run", False,
     "Check DATA before training: class counts and imbalance, image sizes and aspect and how much of each image "
     "the eval crop keeps, exact and near-duplicate images within and across train/val/test, greyscale/CMYK/alpha/"
     "16-bit and unreadable files, and layout problems. Each finding that calls for a change names the flag or "
     "action that makes it. --json prints the report for scripts; --out saves it. What it learns of each image is "
     "cached (~/.cache/vr; VR_CACHE_DIR=DIR moves it, VR_CACHE_DIR=off turns it off), so reruns are fast."),
    ("vr", "train", "vr.train.config:TrainConfig", "vr.train.loop:run", True,
     "Train or fine-tune a classifier on DATA (train/<class>/, val/<class>/)."),
    ("vr", "eval", "vr.evaluate.config:EvalConfig", "vr.evaluate.evaluate:run_eval", True,
     "Score MODELS (.pt, .onnx, .engine) on labelled images and compare them: metrics, confusion matrices, worst "
     "classes, speed and agreement in OUT/report.md and report.json. A MODEL spelled a.pt+b.onnx (weighted: "
     "a.pt@0.6+b.onnx@0.4) is one soft-voting ensemble, reported with each member's accuracy and the members' "
     "agreement."),
    ("vr", "submit", "vr.evaluate.config:SubmitConfig", "vr.evaluate.submit:run_submit", True,
     "Write the leaderboard CSV (image_name,pred_label: file stem, class folder name) for the images in --test-dir "
     "(or a last TEST_DIR argument), or --check an existing one. Several MODELs (or a.pt+b.pt) are soft-voted "
     "(--weights 0.6,0.4). Unreadable images, clashing stems and an empty folder are refused, naming the files."),
    ("vr", "export", "vr.export.config:ExportConfig", "vr.export.run:run", True,
     "Export CHECKPOINT to ONNX with resize, crop, normalisation and TTA inside the graph (input: uint8 "
     "[N, H, W, 3] RGB, one size per batch; output: probs [N, C]) at --precision fp32/fp16/bf16/int8, check it "
     "against PyTorch on real images and refuse to write it if they disagree; the model carries a golden set for "
     "`vr verify`. Several checkpoints export one soft-voting ensemble graph (--weights 0.6,0.4), each member with "
     "its own preprocessing. --trt also builds a strongly typed TensorRT engine (from a checkpoint, or from an "
     ".onnx on the machine that will run it)."),
    ("vr", "verify", "vr.export.config:VerifyConfig", "vr.export.verify:run", False,
     "Check MODEL (.onnx or .engine from vr export) on this machine with no dataset: run its embedded golden set and "
     "compare with PyTorch's probabilities within its precision's tolerance, and check that the graph (or engine) "
     "is the one exported. Exit 2 when it fails."),
    ("vr", "predict", "vr.evaluate.predict:PredictConfig", "vr.evaluate.predict:run_predict", False,
     "Print the top-k classes, with names and probabilities, of IMAGES (files or folders) for MODEL: a .pt "
     "checkpoint, an .onnx export or a TensorRT .engine."),
    ("vr", "compare", "vr.experiments.config:CompareConfig", "vr.experiments.compare:run", False,
     "Compare RUNS (vr train folders): overlaid loss/accuracy/lr curves, the train-val gap, a table of best val "
     "acc, epoch, losses, params, time and hyperparameters (OUT/compare.md, compare.csv) and, with vr eval reports "
     "in RUN/eval/, the worst classes side by side."),
    ("vr", "sweep", "vr.experiments.config:SweepConfig", "vr.experiments.sweep:run", False,
     "Train every combination of the --set values (each its own vr train process, into OUT/<label>/), starting "
     "from the train config CONFIG; finished runs are skipped and unfinished ones resumed, so rerunning continues "
     "a sweep, and a run that fails does not stop the others. Then compare them into OUT/compare/. --dry-run "
     "prints the vr train commands instead."),
)


def _register() -> None:
    from vr.formats import load_object

    apps = {"vr": app, "data": data_app}
    for group, name, config, runner, yaml_option, help_text in COMMANDS:
        config_command(apps[group], name, load_object(config), _runs(runner), yaml_option=yaml_option, help=help_text)


_register()


def _click_exception_types() -> tuple[type, ...]:
    """Click's exception base: newer typer vendors click as typer._click, older ones use click."""
    types: list[type] = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(__import__(mod, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    return tuple(types)


def _show_usage_error(e) -> None:
    """A bad flag or value, in one line like every other error (not click's usage block)."""
    from rich.markup import escape

    from vr.util.console import err_console

    msg = " ".join(e.format_message().replace("Value error, ", "").split())
    if type(e).__name__ == "NoArgsIsHelpError" or not msg:  # `vr` alone: the help is the answer
        e.show()
        return
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        msg += f" (see {ctx.command_path} --help)"
    err_console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, markup=True, highlight=False)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: VrError -> one red line and exit 2; Ctrl-C -> exit 130."""
    from vr.util.manifest import set_command
    from vr.util.phases import mark

    mark("python start + vr.cli import")
    set_command(["vr", *(sys.argv[1:] if argv is None else argv)])  # what manifest.json records
    try:
        code = _main(argv)
    finally:
        set_command(None)
    if argv is None:  # the process's entry point (console script, python -m vr.cli): it exits next
        _before_exit()
    return code


def _before_exit() -> None:
    """Collect the garbage now (its finalizers run as they would have at exit), then freeze what
    is left: the interpreter's shutdown collections skip the millions of live objects torch and
    timm create, which took 1-2 s of every command's exit (benchmarks/peers.py)."""
    import gc

    gc.collect()
    gc.freeze()


def _main(argv: Optional[list[str]]) -> int:
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
        if isinstance(e, _click_exception_types()):
            _show_usage_error(e)
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
