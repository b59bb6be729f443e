"""One rich console for the whole program; warnings go to stderr."""

from __future__ import annotations

from rich.console import Console


class _Console(Console):
    """A file name that is not UTF-8 (surrogate escapes) is printed as \\xNN, not a UnicodeEncodeError."""

    def _render_buffer(self, buffer) -> str:
        from vr.util.paths import display

        return display(super()._render_buffer(buffer))


def _console(stderr: bool) -> Console:
    c = _Console(stderr=stderr, highlight=False)
    if not c.is_terminal:
        # Logs and CI: rich would wrap at 80 columns and squeeze the progress columns.
        c = _Console(stderr=stderr, highlight=False, width=140)
    return c


console = _console(False)
err_console = _console(True)


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}", soft_wrap=True)
