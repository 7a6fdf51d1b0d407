"""Step options: one dataclass per step, the one path from ``params.yaml`` to the step's CLI.

A step's options class names its ``params.yaml`` section; each field is one key there
(``<section>.<field>``, or the ``param`` path the field declares). The class fills itself
from params (:meth:`StepOptions.from_params`), renders itself to ``--flag=value``
arguments for the rule (:meth:`StepOptions.to_args`; the rule quotes them with
``{params.x:q}``), and builds the argparse flags the CLI reads them back with
(:meth:`StepOptions.add_arguments` / :meth:`StepOptions.from_args`). Defaults live in
the dataclass only: argparse takes them from it, and a test checks that the schema's
defaults agree. A leaf module: it imports nothing of babelflow but the error type.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from .errors import BabelflowError


def parse_bool(s: str) -> bool:
    """Kaldi's boolean flags: ``true``/``false`` (also ``1``/``0``)."""
    if s.lower() in ("true", "1"):
        return True
    if s.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{s}'")


def option(default: Any = dataclasses.MISSING, *, help: str = "", param: str | None = None, cli: bool = True,
           choices: tuple[str, ...] | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field of a step's options.

    ``param``: its dotted ``params.yaml`` key when not ``<section>.<name>``; ``cli=False``:
    read from params but not a flag of the step's command (e.g. data set paths);
    ``choices``: the values allowed (the schema's ``enum``, checked by a test).
    """
    meta = {"help": help, "param": param, "cli": cli, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class StepOptions:
    """Mixin for a step's options dataclass; subclasses set ``SECTION``."""

    SECTION: ClassVar[str]

    # --- params.yaml

    @classmethod
    def param_paths(cls) -> dict[str, str]:
        """Field name -> dotted ``params.yaml`` key."""
        return {f.name: f.metadata.get("param") or f"{cls.SECTION}.{f.name}" for f in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """The options as ``params`` (the whole, schema-validated file) sets them; absent keys keep the defaults."""
        values = {}
        for name, path in cls.param_paths().items():
            node: Any = params
            for key in path.split("."):
                if not isinstance(node, Mapping) or key not in node:
                    break
                node = node[key]
            else:
                values[name] = node
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            keys = sorted({path.rsplit(".", 1)[0] for path in cls.param_paths().values()})
            raise BabelflowError(f"params.yaml: {', '.join(keys)}: {e}") from None

    # --- command line

    @classmethod
    def _cli_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]

    def to_args(self, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
        """``--flag=value`` per option (None left out: the command's default applies)."""
        args = []
        for f in self._cli_fields():
            if (only is not None and f.name not in only) or f.name in exclude:
                continue
            args += _render(_flag(f.name), getattr(self, f.name))
        return args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """One flag per option, its default the dataclass's."""
        hints = typing.get_type_hints(cls)
        for f in cls._cli_fields():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind, inner = _kind(hints[f.name])
            kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f.metadata.get("help") or None}
            if kind is bool:
                kw.update(type=parse_bool, metavar="BOOL")
            elif kind is list:
                kw.update(type=_list_of(inner), metavar="A,B")
            elif kind is dict:
                kw.update(action="append", type=_key_values(inner), metavar="KEY=VALUE[,KEY=VALUE]")
                kw["default"] = None
            else:
                kw.update(type=kind, choices=f.metadata.get("choices"))
            parser.add_argument(_flag(f.name), **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        values = {}
        for f in cls._cli_fields():
            v = getattr(args, f.name)
            if v is None and f.default is dataclasses.MISSING:  # a dict flag not given
                v = f.default_factory()
            elif _kind(typing.get_type_hints(cls)[f.name])[0] is dict and isinstance(v, list):
                v = dict(pair for group in v for pair in group)
            values[f.name] = v
        return cls(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _render(flag: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"{flag}={str(value).lower()}"]
    if isinstance(value, (list, tuple)):  # [] too: the command's default list is not what params says
        return [f"{flag}={','.join(map(str, value))}"]
    if isinstance(value, Mapping):
        return [f"{flag}={k}={v}" for k, v in value.items()]
    return [f"{flag}={value}"]


def _kind(hint: Any) -> tuple[type, type | None]:
    """(bool|int|float|str|list|dict, element type) of a field's annotation, Optional unwrapped."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _kind(args[0])
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return list, args[0] if args else str
    if origin in (dict, Mapping):
        return dict, args[1] if len(args) == 2 and args[1] is not str else None
    return hint, None


def _list_of(inner: type | None):
    def parse(text: str) -> list:
        return [inner(x) if inner else x for x in text.split(",") if x]
    return parse


def _key_values(inner: type | None):
    """``KEY=VALUE[,KEY=VALUE]`` -> pairs, each value converted to ``inner`` (the dict's value type)."""
    def parse(text: str) -> list[tuple[str, Any]]:
        pairs = []
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{item}'")
            try:
                pairs.append((key, inner(value) if inner else value))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key}: expected {inner.__name__}, got '{value}'") from None
        return pairs
    return parse
