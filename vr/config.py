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

# vr runs convolutions in channels_last (NHWC) on the CPU from this input size up: oneDNN measured
# 1.07-1.63x faster training steps and 1.2-1.4x faster inference there, and no gain at 32 px
# (0.96-1.03x; benchmarks/channels_last.py, docs/benchmarks.md). Used by vr train's default and the PyTorch predictor.
CPU_CHANNELS_LAST_MIN_SIZE = 64


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


MAX_TEXT = 4096  # longer than any path or name a config holds
YAML_MAX_BYTES = 1_000_000
YAML_MAX_ALIASES = 32
YAML_MAX_NODES = 100_000  # values after anchors are expanded


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: what an error message may echo of a value."""
    from vr.util.paths import display

    text = display(repr(value))
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list):
        item = _type_name(args[0]) if args else "text"
        if origin is tuple and args and Ellipsis not in args:
            return f"{len(args)} values ({item} each)"
        return f"a list ({item} each)"
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return (inner[0] if inner else Any), len(inner) < len(typing.get_args(tp))
    return tp, False


def _scalar(tp: Any, value: Any) -> Any:
    """One value of a scalar type, strictly: no bool where a number or text belongs, no
    fraction where a whole number does, no list or mapping anywhere. ValueError otherwise."""
    import math
    import os

    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple, dict, set)):
        raise ValueError("a list or mapping")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ValueError("too long")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError("a boolean")  # yes/no/on/off in YAML: quote it if text was meant
    if tp is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return int(value)  # "1.5" and "ten" raise
    if tp is float:
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(value)
        return f
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(value)
        return str(value)
    if tp is Path:
        if isinstance(value, int):  # out: 2024
            value = str(value)
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if text == "" or "\0" in str(text):
                raise ValueError("empty" if text == "" else "a NUL character")
            return Path(value)
        raise ValueError(value)
    return value


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the field's declared type, strictly; VrError (naming the field
    and echoing at most 80 characters of the value) when it is of another shape."""
    tp, nullable = _optional(tp)
    if value is None:
        if nullable:
            return None
        raise VrError(f"{name}: needs {_type_name(tp)}, got an empty value (null)")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (tuple, list):
            if isinstance(value, dict):
                raise ValueError("a mapping")
            seq = list(value) if isinstance(value, (list, tuple)) else [value]
            item = args[0] if args else str
            if origin is tuple and args and Ellipsis not in args and len(seq) != len(args):
                raise ValueError(f"{len(seq)} values")
            out = [_scalar(item, v) for v in seq]
            return tuple(out) if origin is tuple else out
        return _scalar(tp, value)
    except (TypeError, ValueError, OverflowError) as e:
        hint = ""
        if isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)):
            hint = " (YAML reads yes/no/on/off/true/false as a boolean: quote it if you meant text)"
        raise VrError(f"{name}: cannot read {shown(value)} as {_type_name(tp)}{hint}") from e


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
            listed = ", ".join(shown(k, 40)[1:-1] if isinstance(k, str) else shown(k, 40) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise VrError(f"unknown config key(s) {listed}{more} (see --help for valid options)")
        types = cls.field_types()
        cfg = cls(**{k: _coerce(types[k], v, k) for k, v in values.items()})
        # Not a field (it is not saved): lets a command refuse to overwrite its own --config file.
        object.__setattr__(cfg, "config_file", Path(yaml_path) if yaml_path is not None else None)
        return cfg

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save_yaml(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses more than YAML_MAX_ALIASES aliases (*name): anchors let a few
    bytes stand for millions of values."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > YAML_MAX_ALIASES:
                raise _TooBig(f"more than {YAML_MAX_ALIASES} aliases (*name)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        """A key given twice is refused (PyYAML would keep the last one without a word)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


class _TooBig(Exception):
    pass


def _count_values(data: Any, limit: int) -> None:
    """Refuse a document with more than ``limit`` values once its anchors are expanded."""
    stack, n = [data], 0
    while stack:
        v = stack.pop()
        n += 1
        if n > limit:
            raise _TooBig(f"more than {limit:,} values")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def load_yaml(path: str | Path) -> dict:
    """A config file as {option: value}: UTF-8, at most 1 MB, YAML_MAX_ALIASES aliases and
    YAML_MAX_NODES values; each refusal is one line naming the file."""
    from vr.util.paths import display

    path = Path(path)
    if path.is_dir():
        raise VrError(f"config file {display(path)} is a folder; give a YAML file")
    if not path.is_file():
        raise VrError(f"config file not found: {display(path)}")
    try:
        with open(path, "rb") as f:
            raw = f.read(YAML_MAX_BYTES + 1)
    except OSError as e:
        raise VrError(f"cannot read {display(path)}: {e.strerror or e}") from e
    if len(raw) > YAML_MAX_BYTES:
        raise VrError(f"{display(path)} is over {YAML_MAX_BYTES // 1_000_000} MB: not a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VrError(f"{display(path)} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                      "save it as UTF-8") from e
    try:
        data = yaml.load(text, Loader=_LimitedLoader) or {}
        _count_values(data, YAML_MAX_NODES)
    except _TooBig as e:
        raise VrError(f"{display(path)} holds {e}: not a config file") from e
    except yaml.YAMLError as e:
        raise VrError(f"cannot parse {display(path)}: {shown(str(e).splitlines()[0], 200)[1:-1]}") from e
    except RecursionError as e:
        raise VrError(f"cannot parse {display(path)}: it nests too deeply") from e
    if not isinstance(data, dict):
        raise VrError(f"{display(path)} must hold a mapping of option: value")
    out: dict = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key in out:  # batch-size: and batch_size: are one option
            raise VrError(f"{display(path)} sets {shown(key, 40)[1:-1]} twice; keep one")
        out[key] = v
    return out


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
        raise VrError(f"unknown {name} {shown(value)}: use one of {', '.join(choices)}")
