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


def _register() -> None:
    from vr.train.config import TrainConfig

    config_command(app, "train", TrainConfig, _train,
                   help="Train or fine-tune a classifier on DATA (train/<class>/, val/<class>/).")


_register()


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: VrError -> one red line and exit 2; Ctrl-C -> exit 130."""
    try:
        app(args=argv, standalone_mode=False)
    except VrError as e:
        if _state["debug"]:
            raise
        from vr.util.console import err_console

        err_console.print(f"[red]error:[/red] {e}", soft_wrap=True, markup=True, highlight=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
