"""One rich console for the whole program; warnings go to stderr."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}", soft_wrap=True)
