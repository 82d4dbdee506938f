"""The pass registry and the contract every pass follows.

A pass is a class with a ``name``, a ``Config`` dataclass whose fields are
typed and documented (``field(metadata={"help": ...})``), and one function
``run(input_path, config, output_path) -> PassResult`` that reads a model file
and writes another (after Olive's ``olive_pass.py``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from compression.engine.errors import PassConfigError


@dataclass
class PassResult:
    output_path: str
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Accept native values and the strings a CLI ``--set key=value`` produces."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return _coerce(key, value, options[0])
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise PassConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in _TRUE:
                return True
            if str(value).lower() in _FALSE:
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise PassConfigError(
            f"{key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    return value


class PassConfig:
    """Mixin for pass ``Config`` dataclasses: strict construction from a dict."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def from_dict(cls, data: dict | None = None):
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PassConfigError(
                f"unknown option(s) {unknown} for {cls.__qualname__.split('.')[0]}; "
                f"valid options: {sorted(names)}"
            )
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        for key, allowed in cls.CHOICES.items():
            if key in values and values[key] not in allowed:
                raise PassConfigError(f"{key} must be one of {list(allowed)}, got {values[key]!r}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        return [
            {
                "name": f.name,
                "type": str(typing.get_type_hints(cls)[f.name]),
                "default": None if f.default is dataclasses.MISSING else f.default,
                "help": f.metadata.get("help", ""),
            }
            for f in dataclasses.fields(cls)
        ]


def doc(text: str) -> dict:
    """Field metadata documenting a config option: ``field(default=..., metadata=doc("..."))``."""
    return {"help": text}


class Pass:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    needs_calibration: ClassVar[bool] = False

    def run(self, input_path: str | Path, config: Any, output_path: str | Path) -> PassResult:
        raise NotImplementedError

    def make_config(self, data: dict | None = None):
        return self.Config.from_dict(data)


_REGISTRY: dict[str, Pass] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make the pass available by ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"pass {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_pass(name: str) -> Pass:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PassConfigError(
            f"unknown pass {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_passes() -> list[str]:
    return sorted(_REGISTRY)
