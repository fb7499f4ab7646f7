"""Command-line options generated from config dataclasses, so every setting is written once."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, Field, fields
from typing import Any


def _parse_tuple(text: str) -> tuple[int, ...]:
    text = text.strip().strip("()[]")
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


def _base_type(tp: Any) -> Any:
    """int | None → int; Literal stays; tuple[int, ...] → tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else tp
    return tp


def add_dataclass_options(parser: argparse._ActionsContainer, cls: type, *, skip: tuple[str, ...] = (),
                          defaults: bool = True, help_prefix: str = "", omit_unset: bool = False) -> list[str]:
    """Add ``--field-name`` for each field of a dataclass; returns the destination names added.

    With ``defaults=False`` options default to None (and their help states no default), so a caller can tell which
    ones were given. With ``omit_unset`` an option that is not given leaves no attribute at all, so :func:`pick`
    returns exactly the options given and the dataclass fills in the rest; the help still states its defaults.
    Help texts come from the comments next to each field, where the dataclass has them.
    """
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    added = []
    for f in fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        help_text = help_prefix + comments.get(f.name, f.name.replace("_", " "))
        kwargs: dict[str, Any] = {"dest": f.name,
                                  "default": argparse.SUPPRESS if omit_unset else default if defaults else None}
        if defaults and default is not None:
            help_text += f" (default: {default})"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif typing.get_origin(tp) is tuple:
            kwargs["type"] = _parse_tuple
            kwargs["metavar"] = "N,N,..."
        elif tp in (int, float, str):
            kwargs["type"] = tp
        parser.add_argument(flag, help=help_text, **kwargs)
        added.append(f.name)
    return added


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = value  # comment`` → {name: comment}, read from the class source."""
    import inspect
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        stripped = line.strip()
        if "#" in stripped and ":" in stripped.split("#")[0]:
            name = stripped.split(":")[0].strip()
            if name.isidentifier():
                out[name] = stripped.split("#", 1)[1].strip()
    return out


def pick(namespace: argparse.Namespace, cls: type, only_given: bool = False) -> dict[str, Any]:
    """The values in ``namespace`` that belong to dataclass ``cls`` (only non-None ones if ``only_given``)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    return {k: v for k, v in values.items() if v is not None} if only_given else values
