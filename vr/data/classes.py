"""Class names: the natural sort order and ClassMap, the frozen class order every artefact carries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vr.errors import VrError
from vr.util.io import atomic_write_json


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically: '2' < '10', 'img9' < 'img10'."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p != "")


@dataclass(frozen=True)
class ClassMap:
    """Class names in index order; frozen at training time and carried by every artefact."""

    names: tuple[str, ...]

    def __post_init__(self):
        if len(set(self.names)) != len(self.names):
            raise VrError("class names must be unique")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @classmethod
    def from_folder_names(cls, names) -> "ClassMap":
        return cls(tuple(sorted(names, key=natural_key)))

    def save(self, path: Path) -> None:
        atomic_write_json(path, list(self.names))

    @classmethod
    def load(cls, path: Path) -> "ClassMap":
        return cls(tuple(json.loads(Path(path).read_text())))
