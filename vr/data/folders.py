"""Scan ImageFolder trees and flat test folders (class order and ClassMap: vr.data.classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vr.data.classes import ClassMap, natural_key
from vr.data.facts import unreadable
from vr.data.images import is_image_file
from vr.errors import VrError
from vr.util.console import warn
from vr.util.paths import display, term


@dataclass
class ScanResult:
    samples: list[tuple[Path, int]]
    classes: ClassMap
    skipped: list[str] = field(default_factory=list)  # one reason per unreadable file
    empty_classes: list[str] = field(default_factory=list)


def list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)),
                  key=lambda p: natural_key(p.name))


def scan_image_folder(root: str | Path, classes: ClassMap | None = None, verify: bool = True,
                      what: str = "data", reference: str = "the model's classes", inspect: bool = False) -> ScanResult:
    """Scan ``root/<class>/<image>``.

    Without ``classes`` the class order is the folders' natural order. With ``classes`` (val/test
    data scored against a trained model) a folder absent from ``classes`` is an error naming it.
    Unreadable images are skipped with a warning naming each one. ``inspect``: gather the data
    check's facts while verifying (vr.data.facts.unreadable).
    """
    root = Path(root)
    if not root.is_dir():
        raise VrError(f"{what} folder not found: {display(root)}")
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: natural_key(d.name))
    if not folders:
        raise VrError(f"{what} folder {display(root)} has no class sub-folders (expected {display(root)}/<class>/<image>)")
    if classes is None:
        classes = ClassMap.from_folder_names([d.name for d in folders])
    else:
        unknown = [d.name for d in folders if d.name not in classes.names]
        if unknown:
            shown = ", ".join(display(repr(u)) for u in unknown[:10])
            raise VrError(f"{what} folder {display(root)} has classes not in {reference}: {shown}")
    per_class = {d.name: list_images(d) for d in folders}
    empty = [name for name, files in per_class.items() if not files]
    for name in empty:
        warn(f"class folder {term(root / name)} has no images")
    all_paths = [p for files in per_class.values() for p in files]
    bad = unreadable(all_paths, inspect=inspect) if verify else {}
    for reason in bad.values():
        warn(f"skipping unreadable image {term(reason)}")
    samples = [(p, classes.index(name)) for name, files in per_class.items() for p in files if p not in bad]
    if not samples:
        raise VrError(f"{what} folder {display(root)} holds no readable images")
    return ScanResult(samples, classes, list(bad.values()), empty)


def scan_flat_folder(root: str | Path, verify: bool = True, what: str = "test") -> tuple[list[Path], list[str]]:
    """Images directly inside ``root`` (no labels). Returns (readable paths, skip reasons)."""
    root = Path(root)
    if not root.is_dir():
        raise VrError(f"{what} folder not found: {display(root)}")
    paths = list_images(root)
    if not paths:
        raise VrError(f"{what} folder {display(root)} holds no images")
    bad = unreadable(paths) if verify else {}
    for reason in bad.values():
        warn(f"skipping unreadable image {term(reason)}")
    return [p for p in paths if p not in bad], list(bad.values())
