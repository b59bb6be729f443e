"""The one exception type users see."""


class VrError(Exception):
    """Something the user can fix, said in one sentence.

    The CLI prints the message on one line and exits with status 2; a traceback is shown only
    with ``--debug``.
    """
