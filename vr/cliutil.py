"""Build Typer commands from config dataclasses, so each option is declared exactly once."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from vr.config import flag_spellings

_enum_cache: dict[tuple, type[Enum]] = {}


def _choice_enum(name: str, choices: tuple[str, ...]) -> type[Enum]:
    key = (name, choices)
    if key not in _enum_cache:
        _enum_cache[key] = Enum(name.title().replace("_", ""), {c: c for c in choices}, type=str)
    return _enum_cache[key]


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union or str(typing.get_origin(tp)) == "<class 'types.UnionType'>":
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0]
    return tp


def _fmt_default(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return " ".join(str(x) for x in v)
    return str(v)


def config_parameters(cls) -> list[inspect.Parameter]:
    """One Typer parameter per config field; every default is None so that only the flags the
    user typed override the YAML file and the dataclass defaults."""
    types = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        tp = _unwrap_optional(types[f.name])
        if meta.get("choices"):
            tp = _choice_enum(f.name, tuple(meta["choices"]))
        origin = typing.get_origin(tp)
        if origin is list:
            tp = list[typing.get_args(tp)[0]]
        elif origin is tuple:
            args = typing.get_args(tp)
            tp = tuple[args] if Ellipsis not in args else list[args[0]]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        helptext = meta.get("help", "")
        if meta.get("argument"):
            required = default is dataclasses.MISSING
            info = typer.Argument(help=helptext, show_default=False) if required else typer.Argument(
                help=helptext, show_default=False)
            ann = Annotated[tp if required else Optional[tp], info]
            params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            annotation=ann, default=inspect.Parameter.empty if required else None))
            continue
        on, off = flag_spellings(f)
        flag = f"{on}/{off}" if tp is bool else on
        if default is not dataclasses.MISSING and default is not None and default != [] and default != ():
            helptext = f"{helptext} (default: {_fmt_default(default.value if isinstance(default, Enum) else default)})"
        ann = Annotated[Optional[tp], typer.Option(flag, help=helptext, show_default=False,
                                                   rich_help_panel=meta.get("group"))]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=None))
    return params


def config_command(app: typer.Typer, name: str, cls, run: Callable[[Any], Any], help: str,
                   yaml_option: bool = True, build: Callable[..., Any] | None = None):
    """Register ``name`` on ``app``: parse flags (+ optional ``--config FILE.yaml``), build ``cls``
    and call ``run(config)``. ``build(values, yaml)`` may replace the default construction."""
    params = config_parameters(cls)
    if yaml_option:
        params.append(inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[Path], typer.Option(
                "--config", help="YAML file of options; flags given on the command line win.",
                show_default=False)]))

    def command(**kwargs):
        yaml_path = kwargs.pop("config", None) if yaml_option else None
        values = {k: (v.value if isinstance(v, Enum) else v) for k, v in kwargs.items()}
        values = {k: ([x.value if isinstance(x, Enum) else x for x in v] if isinstance(v, list) else v)
                  for k, v in values.items()}
        cfg = build(values, yaml_path) if build else cls.from_sources(yaml_path, **values)
        return run(cfg)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    app.command(name, help=help)(command)
    return command
