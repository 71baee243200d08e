# -*- test-case-name: tests.test_config -*-
"""
Typed access to the YAML, with errors that name the key path and the
file, and C{${VAR}} expansion in every string.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from llmproxy.config.model import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Reader:
    """
    Typed access to one YAML mapping, with errors naming key and file.
    """

    def __init__(
        self, data: Mapping[str, Any], where: str, source: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.environ = environ
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if kind is float:
            kind = (int, float)
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        if isinstance(value, str):
            value = expand_env(value, self.environ)
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, float, default)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return int(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "expected a list of strings")
        return tuple(expand_env(item, self.environ) for item in value)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, dict, {})
        return value

    def child(self, key: str, data: Mapping[str, Any]) -> Reader:
        return Reader(data, f"{self.where}{key}.", self.source, self.environ)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """
    Expand C{${VAR}} and C{${VAR:-default}} references from the environment.
    An unset variable expands to the empty string (or its default).
    """
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        value = env.get(match.group(1), "")
        if not value and match.group(2) is not None:
            return match.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def env_refs(text: str) -> list[str]:
    """
    The variables C{text} refers to, in order.
    """
    return [m.group(1) for m in _ENV_REF.finditer(text)]
