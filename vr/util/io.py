"""Atomic file writes: a reader never sees half a file, an interrupted writer never destroys the old one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from vr.errors import VrError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any failure (including KeyboardInterrupt) the temporary file is removed and the previous
    file, if any, is left untouched. An OSError (a full disk, a read-only folder) becomes a
    one-line VrError naming ``path``.
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise VrError(write_error(path, e)) from e
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
        _remove_orphans(path)
    except OSError as e:  # disk full, permissions, ...: one line, the old file untouched
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise VrError(write_error(path, e)) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of ``path`` left by writers that no longer run (a kill -9 mid-write).

    Their names carry the writer's PID; a file whose PID is alive (another writer, right now) is
    left alone, and so is anything that does not parse.
    """
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def write_error(path: Path, e: OSError) -> str:
    """The one-line message for a failed write of ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write {path}: the disk is full (no space left on device); free some space and rerun "
                f"(the previous {Path(path).name}, if any, is intact)")
    return f"cannot write {path}: {e.strerror or e}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and fail with one clear line when it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VrError(f"cannot create output folder {path}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise VrError(f"output folder {path} is not writable")
    return path
