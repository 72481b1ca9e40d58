"""Command-line options generated from the config dataclasses (model.config), so a field's name,
type, default and help are written once, where the model and the trainer read them."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import typer


def config_parameters(cls: type, skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``cls`` that carries help text (model.config.option)."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if hints[f.name] is bool else flag
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(f.default, decl, help=f.metadata["help"]),
                annotation=hints[f.name],
            )
        )
    return params


def with_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """``func(**kwargs)`` presented to typer as a function with these parameters."""
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return func


def split(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
