# -*- test-case-name: tests.test_config -*-
"""
Typed access to the YAML, with errors that name the key path and the
file, and C{${VAR}} expansion in every string.

A C{${VAR}} whose variable is unset (or empty) is an error naming it, so
that a missing variable never silently becomes a default (a C{base_url}
falling back to OpenAI's, a C{listen} to port 8000); C{${VAR:-default}}
says what to use instead, C{${VAR:-}} that empty is fine.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Mapping

from llmproxy.config.error import ConfigError

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
        #: Notes for the log at startup, shared with every child reader.
        self.warnings: list[str] = []

    def fail(self, key: object, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}{shown(key)}: {problem}")

    def warn(self, key: str, note: str) -> None:
        self.warnings.append(f"{self.source}: {self.where}{shown(key)}: {note}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
        allow_unset: bool = False,
    ) -> Any:
        """
        The value of C{key}, checked to be a C{kind}; a string has its
        C{${VAR}} references expanded.

        @param allow_unset: let a variable that is not set expand to the
            empty string instead of failing.
        """
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
            value = self._expand(key, value, allow_unset)
        return value

    def _expand(self, key: str, text: str, allow_unset: bool) -> str:
        if not allow_unset:
            for name in unset_refs(text, self.environ):
                raise self.fail(key, f"${{{name}}} is not set")
        return expand_env(text, self.environ)

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

    def strings(self, key: str, *, allow_unset: bool = False) -> tuple[str, ...]:
        """
        A list of strings, each expanded (an unset variable named as
        C{key[i]}); C{allow_unset} as for L{get}.
        """
        value = self.get(key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "expected a list of strings")
        return tuple(self._expand(f"{key}[{i}]", item, allow_unset)
                     for i, item in enumerate(value))

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, dict, {})
        return value

    def child(self, key: object, data: Mapping[str, Any]) -> Reader:
        reader = Reader(data, f"{self.where}{shown(key)}.", self.source, self.environ)
        reader.warnings = self.warnings
        return reader

    def finish(self) -> None:
        """
        Fail on the first key (in sorted order) that nothing read, naming
        the known key it is closest to, if any.
        """
        unknown = sorted(set(self.data) - self.seen, key=str)
        if unknown:
            raise self.fail(unknown[0], "unknown key" + did_you_mean(str(unknown[0]), self.seen))


def shown(key: object) -> str:
    """
    A key as an error message shows it: as written when it is a plain
    printable string, else quoted (a YAML key may be a number, empty, or
    hold a line break).
    """
    if isinstance(key, str) and key.isprintable() and key.strip() == key and key:
        return key
    return repr(key)


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


def unset_refs(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """
    The variables C{text} refers to without a default that are unset or
    empty, in order.
    """
    env = os.environ if environ is None else environ
    return [m.group(1) for m in _ENV_REF.finditer(text)
            if m.group(2) is None and not env.get(m.group(1))]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """
    C{"; did you mean 'X'?"} for the known word closest to C{word}, or
    C{""} when none is close.
    """
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def env_refs(text: str) -> list[str]:
    """
    The variables C{text} refers to, in order.
    """
    return [m.group(1) for m in _ENV_REF.finditer(text)]
