"""The base of every step's argument dataclass: each field checks itself when the dataclass is built.

Flags pass through argparse, which converts them and checks their `choices`; YAML values become argparse
*defaults*, which argparse neither converts nor checks. So the checks live in the dataclass itself, as TRL's
configs keep theirs in `__post_init__`: a wrong type or choice is one DtmError line, from a flag or from YAML
alike, before any work. A subclass adds its own checks in `__post_init__` after calling this one.
"""

import dataclasses
import enum
import types
import typing

from .errors import DtmError

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _convert(name: str, value, kind):
    """`value` as the annotation `kind` (bool, int, float, str, list[...], optional), or a DtmError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        *others, last = [a for a in args if a is not type(None)]
        for inner in others:  # the first alternative that takes the value, the last one's error otherwise
            try:
                return _convert(name, value, inner)
            except DtmError:
                pass
        return _convert(name, value, last)
    if origin is list:
        items = value if isinstance(value, list) else [value] if isinstance(value, str | int | float) else None
        if items is None:
            raise DtmError(f"--{name} must be a list, got {value!r}")
        return [_convert(name, item, args[0]) for item in items]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a YAML number where a name is expected, e.g. a revision or a split
    else:
        return value
    raise DtmError(f"--{name} must be {_NAMES[kind]}, got {value!r}")


_BASIC = (bool, int, float, str, type(None))


def _basic(kind) -> bool:
    """An annotation made of bool, int, float, str, None and lists of them only (what `_convert` checks)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType, list):
        return all(_basic(a) for a in args)
    return kind in _BASIC


def check_fields(values) -> None:
    """Check another library's argument dataclass (TRL's SFTConfig, ModelConfig) as `Arguments` checks its own:
    the type and the choices of every field with a plain annotation, so that a YAML value of the wrong kind is one
    line, not a failure deep inside training. The values are left as they are."""
    hints = typing.get_type_hints(type(values))
    for field in dataclasses.fields(values):
        value, kind = getattr(values, field.name), hints.get(field.name)
        if kind is not None and _basic(kind) and not isinstance(value, enum.Enum):
            _convert(field.name, value, kind)
        _check_choice(field, value)


def _check_choice(field, value) -> None:
    choices = field.metadata.get("choices")
    if choices and value is not None and value not in choices:
        raise DtmError(f"--{field.name} {value!r} is not one of the choices: {', '.join(map(str, choices))}")


@dataclasses.dataclass
class Arguments:
    def __post_init__(self):
        # The annotations, not `field.type`: HfArgumentParser rewrites `X | None` fields' types to `X` in place.
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _convert(field.name, getattr(self, field.name), hints[field.name])
            _check_choice(field, value)
            setattr(self, field.name, value)

    @staticmethod
    def require(value, message: str):
        if value is None or value == "" or value == []:
            raise DtmError(message)

    @staticmethod
    def in_range(name: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
        """`low <= value <= high` (strict where `*_open`), else one line naming the flag and the range."""
        if value is None:
            return
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            if high is None:
                bound = f"more than {low}" if low_open else f"at least {low}"
            elif low is None:
                bound = f"less than {high}" if high_open else f"at most {high}"
            else:
                bound = f"in {left}{low}, {high}{right}"
            raise DtmError(f"--{name} must be {bound}, got {value}")
