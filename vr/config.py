"""Dataclass configs: one per command, validated in __post_init__, saved beside the results.

Each field is declared with :func:`option`, whose help text is both the field's documentation and
the CLI's ``--help`` line (``vr.cliutil`` builds the Typer options from the dataclass).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from vr.errors import VrError
from vr.util.io import atomic_write_text


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
        argument: bool = False, flag: str | None = None, cli: bool = True, group: str | None = None):
    """A config field. ``flag`` overrides the option spelling; ``cli=False`` keeps it YAML-only."""
    meta = {"help": help, "choices": choices, "argument": argument, "flag": flag, "cli": cli, "group": group}
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the field's declared type."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name) if inner else value
    if isinstance(value, Enum):
        value = value.value
    try:
        if tp is Path:
            return Path(value)
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if origin in (tuple, list):
            seq = value if isinstance(value, (list, tuple)) else [value]
            item = args[0] if args else str
            out = [_coerce(item, v, name) for v in seq]
            return tuple(out) if origin is tuple else out
    except (TypeError, ValueError):
        raise VrError(f"{name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


class ConfigBase:
    """Mixin for command configs (dataclasses)."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **overrides: Any):
        """defaults < YAML file < explicit overrides (CLI flags)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(load_yaml(yaml_path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise VrError(f"unknown config key(s) {', '.join(unknown)} (see --help for valid options)")
        types = cls.field_types()
        return cls(**{k: _coerce(types[k], v, k) for k, v in values.items()})

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save_yaml(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VrError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VrError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VrError(f"{path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise VrError(msg)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VrError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
