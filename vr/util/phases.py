"""Phase timestamps for benchmarks/peers.py: with VR_PHASES=FILE in the environment, ``mark(name)``
appends ``name<TAB>unix time`` to FILE when the phase ``name`` ends. Off by default, and then a
call costs one global lookup. Nothing in vr reads the file."""

from __future__ import annotations

import atexit
import os
import time

_FILE = os.environ.get("VR_PHASES") or None
_registered: list = []


def mark(name: str) -> None:
    """Record that phase ``name`` ended now (only with VR_PHASES set)."""
    if _FILE is None:
        return
    if not _registered:  # registered first, so it runs after the atexit handlers of everything imported later
        _registered.append(atexit.register(mark, "return, thread joins, atexit handlers"))
    with open(_FILE, "a", encoding="utf-8") as f:  # one small append per phase; not a vr output file
        f.write(f"{name}\t{time.time():.6f}\n")
