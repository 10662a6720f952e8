"""Typed, validated settings: YAML mappings into frozen dataclasses.

Every stage of serd declares its own frozen dataclass of settings (units in the field
names, ``buffer_seconds``, ``rate``); :func:`build` turns a parsed YAML mapping into one,
refusing unknown keys, missing required keys (fields without a default) and values of the
wrong type with a :class:`ConfigError` that names the key path and what is allowed.  Range
checks live in each dataclass's ``__post_init__`` and raise ``ValueError``; :func:`build`
prefixes them with the key path.  The training configuration (:mod:`train.config`) is
validated by the same code, with ``as_written=True``.

Types understood: ``bool``, ``int``, ``float``, ``str``, ``Any`` (taken as is), ``Literal``,
unions (``X | None``), ``tuple[X, ...]`` and ``tuple[X, Y]`` (from a YAML list),
``dict[str, X]`` (from a mapping; null is empty) and nested dataclasses (from a mapping).
A field's ``metadata={"expected": "..."}`` replaces the "expected ..." of a type error with
its own words.  A float key also takes a YAML-1.1 string such as ``1e-3``: PyYAML reads an
exponent without a dot as a string, not a number.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line for the user."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0]) if args else 'values'}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mappings"
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(
        tp, _type_name(tp))


_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPONENT = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def _convert(value: Any, tp: Any, path: str, as_written: bool) -> Any:
    """``value`` checked (and lists made tuples, mappings dataclasses) against ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return copy.deepcopy(value)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        mappings = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(mappings) == 1:
            # Only one arm takes a mapping: its own message (e.g. an unknown key) says more
            # than "expected a string or a mapping".
            return _convert(value, mappings[0], path, as_written)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, as_written)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
            # YAML 1.1 (PyYAML) reads unquoted off/on/no/yes/false/true as booleans.
            raise ConfigError(
                f"{path}: {str(value).lower()} is not allowed (YAML reads unquoted off, no, "
                "on and yes as false and true); use one of "
                + ", ".join(repr(a) for a in allowed)
            )
        if value not in allowed:
            raise ConfigError(
                f"{path}: {value!r} is not allowed; use one of "
                + ", ".join(repr(a) for a in allowed)
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = [args[0]] * len(value)
        elif len(value) != len(args):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        else:
            inner = list(args)
        return tuple(_convert(v, t, f"{path}[{i}]", as_written)
                     for i, (v, t) in enumerate(zip(value, inner, strict=True)))
    if origin is dict:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of names to values, got {value!r}")
        _, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: names must be strings, got {k!r}")
            out[k] = _convert(v, vt, f"{path}.{k}", as_written)
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if value is None and not as_written:
            value = {}  # an empty section: all its defaults
        return build(tp, value, path, as_written=as_written)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML): 1e-3, without a dot, is a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # YAML's .inf and .nan parse as floats; no setting of serd means "infinite".
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return value if as_written else float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def build(cls: type[T], data: Any, path: str = "", *, as_written: bool = False) -> T:
    """Build dataclass ``cls`` from mapping ``data`` (``path``: its key path, for messages).

    A key whose field has a default may be left out; one without a default is required.
    ``as_written=True`` takes values exactly as written (the training configuration, whose
    values are hashed into cache keys as JSON): an integer in a float key stays an ``int``
    (equal to the float, but ``1`` is not ``1.0`` in JSON), and null for a section is
    refused instead of standing for all of its defaults.
    """
    where = path or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}

    def key(name: str) -> str:
        return f"{path}.{name}" if path else name

    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{key(unknown[0])}: unknown key; allowed here: "
                          + ", ".join(sorted(fields)))
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        also = f"; also missing: {', '.join(missing[1:])}" if missing[1:] else ""
        raise ConfigError(f"{key(missing[0])}: missing (required){also}")
    kwargs = {}
    for name, value in data.items():
        try:
            kwargs[name] = _convert(value, hints[name], key(name), as_written)
        except ConfigError:
            hint = fields[name].metadata.get("expected")
            if hint is None:
                raise
            raise ConfigError(f"{key(name)}: expected {hint}, got {value!r}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # A range check from __post_init__ names its field ("port: must be within ...", or
        # a nested key "train_vad.threshold: ..."): give the full key path.
        msg = str(exc)
        head = _HEAD.match(msg)
        if head and head.group() in fields and msg[head.end():head.end() + 1] in (":", ".", "["):
            raise ConfigError(key(msg)) from None
        raise ConfigError(f"{where}: {msg}") from None


def read_yaml(path: Path) -> Any:
    """The YAML document in file ``path`` (``None`` for an empty one); a missing or unreadable
    file or invalid YAML is a :class:`ConfigError` of one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge, everything else replaces
    (copied: the result shares no mutable value with either)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ValueError('key: message')`` unless ``condition``; for ``__post_init__``."""
    if not condition:
        raise ValueError(f"{key}: {message}")
