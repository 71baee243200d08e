# -*- test-case-name: tests.test_routing_params -*-
"""
Validation of model selector URI parameters (C{gpt-4o?temperature=0.2}).

L{URI_PARAMS} is the table of accepted parameters.  L{validate_params}
turns raw C{(name, value)} strings into typed values.  By default a bad
parameter is an HTTP 400 naming the parameter and what is allowed; in
lenient mode it is dropped with a warning instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Union

from llmproxy.errors import InvalidRequest

__all__ = ["ParamSpec", "URI_PARAMS", "ParamResult", "validate_params"]

ERROR_CODE = "invalid_uri_parameter"

ParamValue = Union[float, int, str]

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_QUOTED = 50


@dataclass(frozen=True)
class ParamSpec:
    """
    What one URI parameter accepts.

    @ivar kind: C{"float"}, C{"int"} or C{"enum"}.
    @ivar minimum: the smallest allowed number, or L{None} for enums.
    @ivar maximum: the largest allowed number, or L{None} for no limit.
    @ivar choices: the allowed words of an enum, in documentation order.
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """
        Say what is allowed, for error messages.

        @return: e.g. C{"a number from 0 to 2"} or C{"one of [low, high]"}.
        """
        if self.kind == "enum":
            return "one of [" + ", ".join(self.choices) + "]"
        noun = "a number" if self.kind == "float" else "an integer"
        if self.maximum is None:
            return f"{noun} >= {self.minimum:g}"
        return f"{noun} from {self.minimum:g} to {self.maximum:g}"


URI_PARAMS: Mapping[str, ParamSpec] = MappingProxyType(
    {
        "temperature": ParamSpec("float", 0.0, 2.0),
        "top_p": ParamSpec("float", 0.0, 1.0),
        "top_k": ParamSpec("int", 1),
        "max_tokens": ParamSpec("int", 1),
        "reasoning_effort": ParamSpec(
            "enum",
            choices=("none", "minimal", "low", "medium", "high", "xhigh", "max"),
        ),
        "verbosity": ParamSpec("enum", choices=("low", "medium", "high")),
    }
)


@dataclass(frozen=True)
class ParamResult:
    """
    The outcome of L{validate_params}.

    @ivar values: the typed values (C{float}, C{int} or C{str}) in the order
        given; read-only.
    @ivar warnings: one human-readable line per parameter dropped in lenient
        mode.
    """

    values: Mapping[str, ParamValue]
    warnings: tuple[str, ...] = ()


def _quoted(text: str) -> str:
    """
    Quote a user-supplied value for a message, shortening long values.

    @param text: the raw value.
    @return: a printable, quoted rendering.
    """
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "..."
    return repr(text)


def _to_number(spec: ParamSpec, raw: str) -> float | int | None:
    """
    Read a number of the kind C{spec} wants, without range checks.

    @param spec: the parameter's spec (C{float} or C{int}).
    @param raw: the raw text.
    @return: the number, or L{None} if C{raw} is not one (NaN, infinity and
        non-ASCII digits are never numbers).
    """
    if spec.kind == "int":
        if not _INTEGER.fullmatch(raw):
            return None
        try:
            return int(raw)
        except ValueError:  # more digits than int() accepts
            return None
    if not _DECIMAL.fullmatch(raw):
        return None
    value = float(raw)
    return value + 0.0 if math.isfinite(value) else None


def _in_range(spec: ParamSpec, value: float | int) -> bool:
    """
    Check a number against the spec's bounds (inclusive).

    @param spec: the parameter's spec.
    @param value: the number.
    @return: whether it is allowed.
    """
    if spec.minimum is not None and value < spec.minimum:
        return False
    return spec.maximum is None or value <= spec.maximum


def _convert(spec: ParamSpec, raw: str) -> ParamValue | None:
    """
    Convert one raw value.

    @param spec: the parameter's spec.
    @param raw: the raw text.
    @return: the typed value, or L{None} if it is not allowed.
    """
    if spec.kind == "enum":
        return raw if raw in spec.choices else None
    number = _to_number(spec, raw)
    if number is None or not _in_range(spec, number):
        return None
    return number


@dataclass(frozen=True)
class _Rejection:
    """
    Why one parameter was not accepted.

    @ivar message: the human-readable reason, naming the parameter.
    """

    message: str


def _check_one(
    name: str, raw: str, seen: Mapping[str, object]
) -> ParamValue | _Rejection:
    """
    Validate one parameter.

    @param name: the parameter name.
    @param raw: its raw value.
    @param seen: the parameters accepted so far.
    @return: the typed value, or a L{_Rejection} saying what is allowed.
    """
    spec = URI_PARAMS.get(name)
    if spec is None:
        allowed = ", ".join(URI_PARAMS)
        return _Rejection(f"Unknown URI parameter {_quoted(name)}; allowed: {allowed}")
    if name in seen:
        return _Rejection(f"URI parameter {_quoted(name)} is given more than once")
    value = _convert(spec, raw)
    if value is None:
        return _Rejection(
            f"URI parameter {_quoted(name)} must be {spec.describe()}, "
            f"got {_quoted(raw)}"
        )
    return value


def validate_params(
    params: Iterable[tuple[str, str]], *, lenient: bool = False
) -> ParamResult:
    """
    Validate and type URI parameters.

    @param params: raw C{(name, value)} pairs, such as L{Selector.params}.
    @param lenient: drop bad parameters with a warning instead of failing.
    @return: the typed values and any warnings.
    @raise InvalidRequest: in strict mode, on the first unknown name,
        repeated name or bad value (HTTP 400, C{param} is the name,
        C{code} is C{invalid_uri_parameter}).
    """
    values: dict[str, ParamValue] = {}
    warnings: list[str] = []
    for name, raw in params:
        outcome = _check_one(name, raw, values)
        if not isinstance(outcome, _Rejection):
            values[name] = outcome
        elif lenient:
            warnings.append(f"{outcome.message}; ignored")
        else:
            raise InvalidRequest(outcome.message, code=ERROR_CODE, param=name)
    return ParamResult(values=MappingProxyType(values), warnings=tuple(warnings))
