"""Reading YAML mappings into dataclasses: every key known, every required key present, every
value of its declared type (str, int, float, bool, Literal, list, dict, unions, nested
dataclasses and ``Annotated[str, METRIC]`` metric names). A problem is a ``Bad`` naming the key
path, with a "did you mean" for near misses; bnexp/claims/spec.py turns it into one paragraph."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from bnexp import metrics

METRIC = "metric"  # Annotated marker: the string must parse as a metric name (bnexp.metrics)
MetricName = Annotated[str, METRIC]
Hooks = dict[type, Callable[[Any, str], Any]]  # types read by a function of their own


class Bad(Exception):
    """One problem at a key path; turned into a SpecError with the claim's name."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path, self.problem = path, problem


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Annotated:
        return "a metric name" if METRIC in typing.get_args(tp)[1:] else _kind(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_kind(t) for t in typing.get_args(tp))
    if origin in (list, dict):
        return {list: "a list", dict: "a mapping"}[origin]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp))


def _convert(tp: Any, value: Any, path: str, hooks: Hooks) -> Any:
    """``value`` as type ``tp``, or Bad naming the key and what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = _convert(args[0], value, path, hooks)
        if METRIC in args[1:]:
            try:
                metrics.parse(out)
            except ValueError as exc:
                raise Bad(path, f"{exc}; see the metric names in bnexp/metrics.py") from None
        return out
    if origin is Literal:
        if value not in args:
            raise Bad(path, f"`{value}` is not {_kind(tp)}")
        return value
    if origin in (types.UnionType, typing.Union):
        return _union(tp, value, path, hooks)
    if origin is list:
        if not isinstance(value, list):
            raise Bad(path, f"expected a list, got `{value}`")
        return [_convert(args[0], v, f"{path}[{i}]", hooks) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Bad(path, f"expected a mapping, got `{value}`")
        return {str(k): _convert(args[1], v, f"{path}.{k}", hooks) for k, v in value.items()}
    if tp in hooks:
        return hooks[tp](value, path)
    if dataclasses.is_dataclass(tp):
        return read(tp, value, path, hooks)
    return _scalar(tp, value, path)


def _scalar(tp: type, value: Any, path: str) -> Any:
    ok = (isinstance(value, tp) and not (tp is int and isinstance(value, bool))
          or tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise Bad(path, f"expected {_kind(tp)}, got `{value}`")
    return value  # an int given for a number stays an int: claims.json shows what was declared


def _union(tp: Any, value: Any, path: str, hooks: Hooks) -> Any:
    problems = []
    for option in typing.get_args(tp):
        if option is type(None):
            if value is None:
                return None
            continue
        try:
            return _convert(option, value, path, hooks)
        except Bad as exc:
            problems.append(exc)
    if len(problems) == 1:  # X | None: X's own message says more
        raise problems[0]
    raise Bad(path, f"expected {_kind(tp)}, got `{value}`")


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def read(cls: type, value: Any, path: str, hooks: Hooks) -> Any:
    """A dataclass from a mapping: every key known, every field without a default present."""
    if not isinstance(value, dict):
        raise Bad(path, f"expected a mapping, got `{value}`")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls, include_extras=True)
    for key in value:
        if key not in fields:
            raise Bad(f"{path}.{key}".lstrip("."), f"unknown key{did_you_mean(str(key), list(fields))}"
                       f"; {getattr(cls, 'NAME', cls.__name__)} keys are {', '.join(fields)}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in value:
            raise Bad(f"{path}.{name}".lstrip("."), f"missing ({_kind(hints[name])} is required)")
    made = cls(**{k: _convert(hints[k], v, f"{path}.{k}".lstrip("."), hooks)
                  for k, v in value.items()})
    object.__setattr__(made, "_declared", tuple(value))
    return made


def declared(obj: Any) -> Any:
    """A spec object as it was declared (only the keys given, in their order): for claims.json."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        keys = getattr(obj, "_declared", [f.name for f in dataclasses.fields(obj)])
        return {k: declared(getattr(obj, k)) for k in keys}
    if isinstance(obj, list):
        return [declared(v) for v in obj]
    if isinstance(obj, dict):
        return {k: declared(v) for k, v in obj.items()}
    return obj


def read_value(tp: Any, value: Any, path: str) -> Any:
    """One value of type ``tp`` (no hooks)."""
    return _convert(tp, value, path, {})
