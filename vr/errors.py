"""The one exception type users see, and the one way a cause becomes part of its sentence."""

from __future__ import annotations


class VrError(Exception):
    """Something the user can fix, said in one sentence.

    The CLI prints the message on one line and exits with status 2; a traceback is shown only
    with ``--debug``. Wrap a lower-level error with ``raise VrError(...) from e`` so that
    ``--debug`` still shows what caused it.
    """


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``str(e)`` (the exception's type name when it has no text),
    cut to ``limit`` characters: what a one-line message can quote of a library's error."""
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
