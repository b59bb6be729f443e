"""Where a command may write, and how names are shown.

The output guard, one for every command (``check_outputs``): an output never is, or replaces, one
of the command's inputs (a model, a config file, a test image) and never lies inside a folder the
command reads (a data or test folder: a run folder in DATA/train/ would become a class, a
confusion PNG in DATA/val/<class>/ a val image). Paths are compared as the file system sees them:
symlinks and ``..`` resolved, and an existing file or folder matched by device and inode, so two
spellings of one file (another case on a case-insensitive disk, a symlink) are the same.

Ownership (``check_folder_owner``, ``check_owned_file``): a run folder belongs to `vr train`, a
report folder to `vr eval`, and so on (its manifest.json says which command wrote it, else its
files do). A command never writes into a folder another command owns, and a file the user names
is never one of another command's files in its folder (RUN/metrics.csv, RUN/manifest.json).

Names: file names on Linux are bytes, and Python hands those that are not UTF-8 over with
surrogate escapes (b"caf\\xe9" is "caf\\udce9"), which no UTF-8 text file or terminal can hold.
``display`` turns them into readable text (``caf\\xe9``) for terminals, CSVs, markdown and HTML;
JSON keeps them exactly (``\\udce9`` escapes, which json.loads turns back into the same name).
"""

from __future__ import annotations

import codecs
import fnmatch
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from vr.errors import VrError

DISPLAY_ERRORS = "vr.display"


def _display_errors(e: UnicodeError):
    """Codec error handler: a surrogate-escaped byte becomes ``\\xNN``, any other character the
    codec cannot take ``\\uNNNN``: the text says what the name is, and always encodes."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    out = []
    for ch in e.object[e.start:e.end]:
        n = ord(ch)
        out.append(f"\\x{n - 0xDC00:02x}" if 0xDC80 <= n <= 0xDCFF else f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}")
    return "".join(out), e.end


codecs.register_error(DISPLAY_ERRORS, _display_errors)


def display(value: object) -> str:
    """``str(value)`` that any UTF-8 text can hold: surrogate-escaped bytes of a file name that is
    not UTF-8 are shown as ``\\xNN``."""
    s = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", DISPLAY_ERRORS).decode("utf-8")


def term(value: object) -> str:
    """``display(value)`` for a rich console line: markup characters escaped too."""
    from rich.markup import escape

    return escape(display(value))


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- comparing paths ---------------------------------------------------------------------------
def _stat(p: str | os.PathLike) -> os.stat_result | None:
    try:
        return os.stat(p)
    except (OSError, ValueError):
        return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one existing file or folder (symlinks followed; matched by
    device and inode, so the file system's own idea of case and links decides)."""
    sa, sb = _stat(os.path.realpath(a)), _stat(os.path.realpath(b))  # x/../y is y once x is created
    return sa is not None and sb is not None and os.path.samestat(sa, sb)


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` (existing or not) is ``folder`` or lies anywhere below it."""
    fs = _stat(folder)
    if fs is None:
        return False
    p = Path(os.path.realpath(path))  # symlinks of the existing part and '..' resolved
    for ancestor in (p, *p.parents):
        s = _stat(ancestor)
        if s is not None and os.path.samestat(s, fs):
            return True
    return False


def _same_target(a: Path, b: Path) -> bool:
    """Two outputs that would be one file (neither need exist yet)."""
    if same_file(a, b):
        return True
    ra, rb = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    return ra.name == rb.name and (ra.parent == rb.parent or same_file(ra.parent, rb.parent))


Named = Sequence[tuple[str, "str | os.PathLike | None"]]


def check_outputs(outputs: Named, inputs: Named = (), input_dirs: Named = ()) -> None:
    """Refuse, in one line, an output that is or would replace an input, that lies inside an
    input folder, or that two outputs would share.

    Each item is ``(what, path)``: ``outputs`` e.g. ``("--out", p)`` or ``("the zip", p)``;
    ``inputs`` the files (and folders) the command reads, e.g. ``("the model", m)``;
    ``input_dirs`` the folders whose contents it reads, e.g. ``("the data folder", d)``.
    Missing inputs and ``None`` paths are skipped (the command reports those itself).
    """
    outs = [(w, Path(p)) for w, p in outputs if p is not None]
    for what, out in outs:
        for kind, inp in inputs:
            if inp is not None and same_file(out, inp):
                where = "" if str(out) == str(inp) else f" ({display(inp)})"
                raise VrError(f"{what} {display(out)} is {kind}{where}: writing there would destroy it; "
                              f"give another path")
        for kind, folder in input_dirs:
            if folder is not None and is_within(out, folder):
                if same_file(out, folder):
                    raise VrError(f"{what} {display(out)} is {kind} {display(folder)}, which this command reads; "
                                  f"give another path")
                raise VrError(f"{what} {display(out)} lies inside {kind} {display(folder)}, which this command "
                              f"reads: it would be read as data next time; write it outside {display(folder)}")
    for i, (wa, a) in enumerate(outs):
        for wb, b in outs[i + 1:]:
            if _same_target(a, b):
                raise VrError(f"{wa} {display(a)} and {wb} {display(b)} are the same file; give another --out")


# --- ownership ---------------------------------------------------------------------------------
# The files each folder-writing command puts in its folder (fnmatch patterns), and the files
# that show a folder is one of its own when it has no readable manifest.json.
OWNED: dict[str, tuple[str, ...]] = {
    "train": ("manifest.json", "config.yaml", "classes.json", "metrics.csv", "per_class.csv", "best.pt", "last.pt",
              "epoch*.pt", "curves.png", "data_check.json", "tb", "done.json"),
    "eval": ("manifest.json", "report.json", "report.md", "report.html", "predictions_*.csv", "confusion_*.png",
             "confusion_*.csv"),
    "compare": ("compare.md", "compare.csv", "overview.png", "loss.png", "accuracy.png", "gap.png", "lr.png",
                "worst_classes.png", "worst_classes.csv"),
    "sweep": ("sweep.json", "compare"),
}
SIGNATURE: dict[str, tuple[str, ...]] = {
    "train": ("last.pt", "metrics.csv", "best.pt"),
    "eval": ("report.json",),
    "compare": ("compare.md", "compare.csv"),
    "sweep": ("sweep.json",),
}
NOUN = {"train": "training run", "eval": "eval report", "compare": "comparison", "sweep": "sweep"}
ARTICLE = {"train": "a", "eval": "an", "compare": "a", "sweep": "a"}


def _manifest_command(folder: Path) -> str | None:
    """The vr command that wrote FOLDER/manifest.json ("train", "eval", ...), if it says."""
    try:
        argv = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(argv, list):
        return None
    words = [str(a) for a in argv[1:] if not str(a).startswith("-")]
    return words[0] if words else None


def folder_owner(folder: str | os.PathLike) -> tuple[str, str] | None:
    """(command, evidence) for a folder another vr command wrote, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    cmd = _manifest_command(folder)
    if cmd in OWNED:
        return cmd, f"its manifest.json was written by vr {cmd}"
    for cmd, names in SIGNATURE.items():
        found = [n for n in names if (folder / n).exists()]
        if found:
            return cmd, f"it holds {', '.join(found)}"
    return None


def check_folder_owner(folder: str | os.PathLike, command: str, flag: str = "--out") -> None:
    """A command that writes a folder of its own files refuses a folder another command owns."""
    owner = folder_owner(folder)
    if owner is None or owner[0] == command:
        return
    cmd, evidence = owner
    mine = [n for n in OWNED.get(command, ()) if any(fnmatch.fnmatch(n, o) or fnmatch.fnmatch(o, n)
                                                      for o in OWNED[cmd])]
    clash = f": its {', '.join(mine)} would be replaced" if mine else ""
    # RUN/eval is where `vr compare` looks for a run's eval report
    hint = f", e.g. {display(Path(folder) / 'eval')}" if command == "eval" and cmd == "train" else ""
    raise VrError(f"{flag} {display(folder)} is {ARTICLE[cmd]} {NOUN[cmd]} folder ({evidence}){clash}; vr {command} "
                  f"keeps its files in a folder of its own: give another {flag}{hint}")


def check_owned_file(path: str | os.PathLike, command: str, flag: str = "--out") -> None:
    """A file the user names must not be one of another command's files in that command's folder."""
    path = Path(path)
    owner = folder_owner(path.parent)
    if owner is None or owner[0] == command:
        return
    cmd, evidence = owner
    if any(fnmatch.fnmatch(path.name, pattern) for pattern in OWNED[cmd]):
        raise VrError(f"{flag} {display(path)} is a file of the {NOUN[cmd]} in {display(path.parent)} ({evidence}); "
                      f"vr {command} would replace it: give another file name")


def config_inputs(cfg) -> list[tuple[str, Path]]:
    """The --config YAML file a config was read from (vr.config records it), as an input."""
    src = getattr(cfg, "config_file", None)
    return [("the --config file", Path(src))] if src is not None else []


def model_inputs(paths: Iterable[str | os.PathLike], what: str = "the model") -> list[tuple[str, Path]]:
    """Model files as inputs, with the NAME.engine.json metadata a TensorRT engine is read with."""
    out = []
    for p in map(Path, paths):
        out.append((what, p))
        if p.suffix.lower() == ".engine":
            out.append((f"the metadata of {display(p.name)}", p.with_name(p.name + ".json")))
    return out
