"""Atomic file writes: a reader never sees half a file, an interrupted writer never destroys the old one.

``atomic_path`` and the ``atomic_write_*`` helpers write one file; ``atomic_group`` writes several
(a submission's CSV and zip, an eval report's files) as one unit, with a journal that lets a
commit cut short by kill -9 be undone by the next write into that folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from vr.errors import VrError
from vr.util.paths import DISPLAY_ERRORS, display

# Temporary files of an open atomic_group, each mapped to the file it will replace: a write to one
# of them (atomic_path(tmp)) goes straight into it, and its errors name the real target.
_STAGED: dict[Path, Path] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (checkpoints and engines can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_prefix(name: str) -> str:
    """``.NAME.PID.``: a long NAME is cut (and told apart by a hash) so that the temporary name
    stays within the 255 bytes a file name may have wherever NAME itself fits."""
    raw = os.fsencode(name)
    if len(raw) > 120:
        name = f"{os.fsdecode(raw[:80])}~{hashlib.sha1(raw).hexdigest()[:10]}"
    return f".{name}.{os.getpid()}."


def _make_temp(path: Path) -> Path:
    """An empty temporary file beside ``path``, with the permissions a plain open() gives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On any failure (including KeyboardInterrupt) the temporary file is removed and the previous
    file, if any, is left untouched. An OSError (a full disk, a read-only folder) becomes a
    one-line VrError naming ``path``. Inside an ``atomic_group``, ``path`` may be one of the
    group's temporary files: it is written directly, and the group renames it.
    """
    path = Path(path)
    if path in _STAGED:
        try:
            yield path
        except OSError as e:
            raise VrError(write_error(_STAGED[path], e)) from e
        return
    try:
        tmp_path = _make_temp(path)
    except OSError as e:
        raise VrError(write_error(path, e)) from e
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
    prefix = _temp_prefix(path.name).rsplit(".", 2)[0] + "."
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
        return (f"cannot write {display(path)}: the disk is full (no space left on device); free some space and "
                f"rerun (the previous {display(Path(path).name)}, if any, is intact)")
    if e.errno == errno.ENAMETOOLONG:
        n = len(os.fsencode(Path(path).name))
        try:
            limit = os.pathconf(Path(path).parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        what = f"its name is {n} bytes, over this file system's limit of {limit}" if n > limit else \
            f"the path is longer than this file system allows ({len(os.fsencode(path))} bytes)"
        return f"cannot write {display(path)}: {what}; give a shorter name"
    return f"cannot write {display(path)}: {e.strerror or e}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8; a file name that is not UTF-8 (surrogate escapes) is written as ``\\xNN`` text."""
    atomic_write_bytes(path, text.encode("utf-8", DISPLAY_ERRORS))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


# --- several files as one unit ------------------------------------------------------------------
JOURNAL_PREFIX = ".vr-commit."


class AtomicGroup:
    """Files that replace their previous versions together (see ``atomic_group``)."""

    def __init__(self) -> None:
        self.entries: list[dict] = []  # {"target", "tmp" (None: delete), "backup", "tmp_id"} in commit order
        self._seen: set[Path] = set()

    def path(self, target: str | os.PathLike) -> Path:
        """A temporary file to write ``target``'s new content into (directly, or with any
        vr.util.io writer); it replaces ``target`` when the group commits."""
        target = Path(target)
        self._recover(target.parent)
        try:
            tmp = _make_temp(target)
        except OSError as e:
            raise VrError(write_error(target, e)) from e
        _STAGED[tmp] = target
        self.entries.append({"target": str(target), "tmp": str(tmp), "backup": None, "tmp_id": None})
        return tmp

    def remove(self, target: str | os.PathLike) -> None:
        """Delete ``target`` (a file of the previous version the new one does not have) on commit."""
        target = Path(target)
        self._recover(target.parent)
        self.entries.append({"target": str(target), "tmp": None, "backup": None, "tmp_id": None})

    def _recover(self, folder: Path) -> None:
        if folder not in self._seen:
            self._seen.add(folder)
            recover_interrupted_commits(folder)

    def discard(self) -> None:
        for e in self.entries:
            if e["tmp"] is not None:
                _STAGED.pop(Path(e["tmp"]), None)
                with contextlib.suppress(OSError):
                    os.unlink(e["tmp"])

    def commit(self) -> None:
        """Keep a second name for every file about to be replaced, write the journal, rename every
        temporary file into place in order, then delete the journal (the commit point) and the
        second names. Any failure or Ctrl-C before this returns puts the previous files back."""
        todo = [e for e in self.entries if e["tmp"] is not None or os.path.lexists(e["target"])]
        if not todo:
            return
        folder = Path(todo[0]["target"]).parent
        journal = folder / f"{JOURNAL_PREFIX}{os.getpid()}.{os.urandom(4).hex()}.json"
        journal_tmp = None
        try:
            for e in todo:
                if e["tmp"] is not None:
                    st = os.stat(e["tmp"])
                    e["tmp_id"] = [st.st_dev, st.st_ino]
                if os.path.lexists(e["target"]):
                    e["backup"] = _backup(Path(e["target"]))
            journal_tmp = _make_temp(journal)
            journal_tmp.write_text(json.dumps({"pid": os.getpid(), "entries": todo}), encoding="utf-8")
            os.replace(journal_tmp, journal)
            with _sigint_deferred():
                for e in todo:
                    if e["tmp"] is not None:
                        os.replace(e["tmp"], e["target"])
                    else:
                        os.unlink(e["target"])
                os.unlink(journal)  # committed: from here on the new files are the files
        except BaseException:
            _roll_back(todo)
            for leftover in (journal, journal_tmp):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            raise
        for e in todo:
            if e["backup"] is not None:
                with contextlib.suppress(OSError):
                    os.unlink(e["backup"])
            _remove_orphans(Path(e["target"]))


def _backup(target: Path) -> str:
    """A second name for the file about to be replaced (a hard link: free; a copy where the file
    system has no links)."""
    backup = target.parent / f"{_temp_prefix(target.name)}{os.urandom(4).hex()}.old"
    try:
        os.link(target, backup, follow_symlinks=False)
    except OSError:
        import shutil

        shutil.copy2(target, backup, follow_symlinks=False)
    return str(backup)


def _roll_back(entries: list[dict]) -> None:
    """Put the previous files back: a target that is still one of our temporary files (same
    device and inode) or that we deleted gets its backup again; a target written since by
    someone else is left alone."""
    for e in reversed(entries):
        target, backup = e["target"], e.get("backup")
        try:
            st = os.lstat(target)
            ours = e.get("tmp_id") is not None and [st.st_dev, st.st_ino] == list(e["tmp_id"])
            gone = False
        except OSError:
            ours, gone = False, True
        with contextlib.suppress(OSError):
            if backup is not None and os.path.lexists(backup):
                if ours or (gone and e.get("tmp") is None):
                    os.replace(backup, target)
                else:
                    os.unlink(backup)
            elif ours:
                os.unlink(target)  # a new file that had no previous version
        if e.get("tmp") is not None:
            _STAGED.pop(Path(e["tmp"]), None)
            with contextlib.suppress(OSError):
                os.unlink(e["tmp"])


def recover_interrupted_commits(folder: str | os.PathLike) -> int:
    """Undo the commits a killed writer left half done in ``folder`` (its journal is still
    there and its PID gone): every file it replaced gets its previous version back; then the
    second names dead writers left are deleted. Returns how many journals were undone."""
    n = 0
    with contextlib.suppress(OSError):
        for entry in list(os.scandir(folder)):
            name = entry.name
            if not (name.startswith(JOURNAL_PREFIX) and name.endswith(".json")
                    and _gone(name[len(JOURNAL_PREFIX):].split(".", 1)[0])):
                continue
            try:
                entries = json.loads(Path(entry.path).read_text(encoding="utf-8"))["entries"]
                _roll_back(entries)
                n += 1
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: it was never complete, so no rename had started
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        for entry in os.scandir(folder):  # second names of commits that ended without cleaning up
            # .NAME.PID.XXXXXXXX.old (_backup)
            parts = entry.name[:-4].rsplit(".", 2) if entry.name.endswith(".old") else []
            if len(parts) == 3 and parts[0].startswith(".") and len(parts[2]) == 8 and _gone(parts[1]):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    return n


def _gone(pid: str) -> bool:
    """True when ``pid`` (text from a file name) is a process that no longer runs."""
    return pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C waits until the renames are done, then interrupts (and the commit is undone): it
    cannot split them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_group() -> Iterator[AtomicGroup]:
    """Write several files as one unit: either every new file is in place or every previous one.

    ``group.path(target)`` gives a temporary file per target (the order of the calls is the order
    of the renames), ``group.remove(target)`` drops a file of the previous version; nothing
    changes until the block ends without an error. Then the files being replaced get a second
    name (a hard link), a journal listing the renames is written, the renames run, and the
    journal is deleted: that deletion is the commit. Any failure before the commit returns (an
    exception, Ctrl-C, which waits for the renames and then undoes them, a full disk) removes
    the temporary files and leaves every previous file. A kill -9 or power cut during the renames
    leaves the journal, and the next group written into that folder (or
    ``recover_interrupted_commits``) first puts every previous file back. OSError becomes one
    VrError naming the target.
    """
    group = AtomicGroup()
    try:
        yield group
        group.commit()
    except OSError as e:
        group.discard()
        # the file named by the error, else the one being written when it came (the last one staged)
        target = next((Path(x["target"]) for x in group.entries if x["tmp"] == getattr(e, "filename", None)),
                      Path(group.entries[-1]["target"]) if group.entries else Path("."))
        raise VrError(write_error(target, e)) from e
    except BaseException:
        group.discard()
        raise
    finally:
        for e in group.entries:
            if e["tmp"] is not None:
                _STAGED.pop(Path(e["tmp"]), None)


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and fail with one clear line when it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VrError(f"output folder {display(path)} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VrError(f"cannot create output folder {display(path)}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise VrError(f"output folder {display(path)} is not writable")
    return path
