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


def plain(v: Any) -> Any:
    """YAML-safe copy: paths and enums become strings, tuples lists."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, tuple):
        return [plain(x) for x in v]
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
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
    except (TypeError, ValueError) as e:
        raise VrError(f"{name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from e
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
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

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
        raise VrError(f"cannot parse {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise VrError(f"{path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def flag_spellings(f: dataclasses.Field) -> tuple[str, str | None]:
    """(the flag, its negative spelling) of a config field: ``--name`` and, for a bool,
    ``--no-name``, or what ``option(flag="--fp16/--fp32")`` declares."""
    declared = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    first = declared.split(" ")[0]
    if "/" in first:
        on, off = first.split("/", 1)
        return on, off
    return first, ("--no-" + first[2:] if f.type in (bool, "bool") else None)


def config_argv(cfg, names: list[str] | None = None) -> tuple[list[str], dict]:
    """Command-line arguments that rebuild ``cfg``: the positional arguments, then a flag per field
    that differs from its default (with ``names``: exactly those fields, in that order, default or
    not). Values no flag can spell (None, YAML-only fields) come back as a dict to pass with
    ``--config``."""
    positional: list[str] = []
    flags: list[str] = []
    yaml_only: dict = {}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for f in (fields[n] for n in names) if names is not None else fields.values():
        v = getattr(cfg, f.name)
        if f.metadata.get("argument"):
            positional += [str(x) for x in v] if isinstance(v, list) else [str(v)]
            continue
        if names is None and v == _default(f):
            continue
        if not f.metadata.get("cli", True) or v is None:
            yaml_only[f.name] = plain(v)
            continue
        on, off = flag_spellings(f)
        if isinstance(v, bool):
            flags.append(on if v else off)
        elif isinstance(v, tuple):
            flags += [on, *(_arg(x) for x in v)]
        elif isinstance(v, list):
            for x in v:
                flags += [on, _arg(x)]
        else:
            flags += [on, _arg(v)]
    return positional + flags, yaml_only


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _arg(v: Any) -> str:
    v = v.value if isinstance(v, Enum) else v
    return repr(v) if isinstance(v, float) else str(v)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise VrError(msg)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise VrError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")
