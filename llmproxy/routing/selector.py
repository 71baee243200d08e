# -*- test-case-name: tests.test_routing_selector -*-
"""
The model selector grammar: C{[backend[.instance]:]model[?param=value&...]}.

A selector names an optional backend, the bare model sent upstream, and raw
URI parameters.  L{parse_selector} reads one selector; L{parse_failover}
reads an ordered failover list C{a|b|c}.  Every syntax problem is reported
as L{InvalidRequest} with C{param="model"} and
C{code="invalid_model_selector"}; nothing else is ever raised.

The parameters are kept as raw strings here; L{llmproxy.routing.params}
validates and types them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote_plus, unquote_plus

from llmproxy.errors import InvalidRequest

__all__ = [
    "MAX_ROUTE_ELEMENTS", "Selector", "parse_selector", "parse_failover", "parse_query",
]

ERROR_CODE = "invalid_model_selector"

#: The most elements a failover list C{a|b|...} may have.  Real routes have
#: a handful; the cap bounds the work and memory one request can ask for.
MAX_ROUTE_ELEMENTS = 64

_BACKEND_NAME = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_RESERVED_BACKENDS = frozenset({"alias", "auto"})
_RESERVED_CHARS = frozenset("^!")
_FAILOVER_SEPARATOR = "|"
_MAX_QUOTED = 80


@dataclass(frozen=True)
class Selector:
    """
    One parsed model selector.

    @ivar backend: the backend (or pinned instance, such as C{openai.2}), or
        L{None} to use the default backend.
    @ivar model: the bare model name sent upstream; it never contains the
        backend prefix or the query.
    @ivar params: the raw URI parameters in the order given, as decoded
        C{(name, value)} strings, not yet validated.
    """

    backend: str | None
    model: str
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        """
        The canonical text form, C{[backend:]model[?k=v&...]}, with names
        and values percent-encoded, so that C{parse_selector(str(s)) == s}
        for every selector that L{parse_selector} can return.

        @return: the selector text.
        """
        prefix = "" if self.backend is None else f"{self.backend}:"
        return prefix + self.model + _format_query(self.params)


def _format_query(params: tuple[tuple[str, str], ...]) -> str:
    """
    Encode URI parameters as a query string.

    @param params: the C{(name, value)} pairs.
    @return: C{""} when there are none, else C{"?k=v&..."}.
    """
    if not params:
        return ""
    pairs = (f"{quote_plus(name)}={quote_plus(value)}" for name, value in params)
    return "?" + "&".join(pairs)


def _quoted(text: str) -> str:
    """
    Quote user text for an error message, shortening very long text.

    @param text: the text to show.
    @return: a printable, quoted rendering.
    """
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "..."
    return repr(text)


def _invalid(text: str, reason: str) -> InvalidRequest:
    """
    Build the error for a malformed selector.

    @param text: the selector text at fault.
    @param reason: what is wrong with it.
    @return: an L{InvalidRequest} naming the C{model} parameter.
    """
    return InvalidRequest(
        f"Invalid model selector {_quoted(text)}: {reason}",
        code=ERROR_CODE,
        param="model",
    )


def _check_characters(text: str) -> None:
    """
    Reject whitespace, control characters and failover syntax in a single
    selector.

    @param text: the stripped selector text.
    @raise InvalidRequest: if a character is not allowed.
    """
    if not text.isprintable() or any(c.isspace() for c in text):
        raise _invalid(text, "whitespace and control characters are not allowed")
    if _FAILOVER_SEPARATOR in text:
        raise _invalid(text, "a failover list ('a|b') is not allowed here")


def _check_reserved(text: str, head: str) -> None:
    """
    Reject the reserved weighted (C{^}) and parallel (C{!}) syntax.

    @param text: the whole selector text, for the message.
    @param head: the part before the query.
    @raise InvalidRequest: if C{head} uses a reserved character.
    """
    if _RESERVED_CHARS.intersection(head):
        raise _invalid(
            text,
            "weighted ('^') and parallel ('!') selectors are not supported; "
            "use '|' for failover",
        )


def _split_backend(text: str, head: str) -> tuple[str | None, str]:
    """
    Apply the colon-before-slash rule to the part before the query.

    @param text: the whole selector text, for messages.
    @param head: the part before the query.
    @return: C{(backend, model)}; C{backend} is L{None} when not explicit.
    @raise InvalidRequest: for an empty, malformed or reserved backend name.
    """
    colon = head.find(":")
    slash = head.find("/")
    if colon < 0 or (0 <= slash < colon):
        return None, head
    backend = head[:colon]
    if not backend:
        raise _invalid(text, "empty backend name before ':'")
    if not _BACKEND_NAME.fullmatch(backend):
        raise _invalid(
            text,
            f"backend name {_quoted(backend)} may only contain letters, "
            "digits, '_', '.' and '-'",
        )
    if backend.split(".", 1)[0].lower() in _RESERVED_BACKENDS:
        raise _invalid(text, f"the prefix {_quoted(backend + ':')} is reserved")
    return backend, head[colon + 1 :]


def _parse_pair(text: str, pair: str) -> tuple[str, str]:
    """
    Decode one C{name=value} query pair.

    @param text: the whole selector text, for messages.
    @param pair: the raw pair.
    @return: the decoded C{(name, value)}.
    @raise InvalidRequest: if the pair is empty, has no C{=} or has an
        empty name.
    """
    if not pair:
        raise _invalid(text, "empty URI parameter (stray '?' or '&')")
    raw_name, equals, raw_value = pair.partition("=")
    if not equals:
        raise _invalid(text, f"URI parameter {_quoted(pair)} has no '=value'")
    name = unquote_plus(raw_name)
    if not name:
        raise _invalid(text, f"URI parameter {_quoted(pair)} has an empty name")
    return name, unquote_plus(raw_value)


def _parse_query(text: str, query: str) -> tuple[tuple[str, str], ...]:
    """
    Decode the query part of a selector.

    @param text: the whole selector text, for messages.
    @param query: everything after the first C{?}.
    @return: the decoded pairs, in order.
    @raise InvalidRequest: for a malformed pair or a repeated name.
    """
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pair in query.split("&"):
        name, value = _parse_pair(text, pair)
        if name in seen:
            raise _invalid(text, f"URI parameter {_quoted(name)} is given twice")
        seen.add(name)
        params.append((name, value))
    return tuple(params)


#: Decodes a query string C{k=v&...} (C{text} is named in errors).
parse_query = _parse_query


def parse_selector(text: str) -> Selector:
    """
    Parse one model selector.

    The backend prefix counts only when the first C{:} comes before the
    first C{/} of the part before C{?}, so C{vendor/model:free} is a bare
    model while C{openrouter:anthropic/claude-3-haiku:beta} names the
    C{openrouter} backend.  Surrounding whitespace is ignored.

    @param text: the selector text.
    @return: the parsed L{Selector}.
    @raise InvalidRequest: if C{text} is not a valid selector.
    """
    stripped = text.strip()
    if not stripped:
        raise _invalid(text, "the model name is empty")
    _check_characters(stripped)
    head, question, query = stripped.partition("?")
    _check_reserved(stripped, head)
    backend, model = _split_backend(stripped, head)
    if not model:
        raise _invalid(stripped, "the model name is empty")
    params = _parse_query(stripped, query) if question else ()
    return Selector(backend=backend, model=model, params=params)


def parse_failover(text: str) -> tuple[Selector, ...]:
    """
    Parse an ordered failover list C{a|b|c}; a single selector gives a
    one-element tuple.

    @param text: the failover text.
    @return: the selectors in failover order; a repeated element is parsed
        once, and repeats are the same L{Selector}.
    @raise InvalidRequest: if the list has more than L{MAX_ROUTE_ELEMENTS}
        elements (refused before any is looked at), or an element is empty
        or not a valid selector.
    """
    if not text.strip():
        raise _invalid(text, "the model name is empty")
    count = text.count(_FAILOVER_SEPARATOR) + 1
    if count > MAX_ROUTE_ELEMENTS:
        raise _invalid(
            text,
            f"a failover list may have at most {MAX_ROUTE_ELEMENTS} elements, not {count}",
        )
    elements = text.split(_FAILOVER_SEPARATOR)
    if any(not element.strip() for element in elements):
        raise _invalid(text.strip(), "a failover list has an empty element")
    parsed: dict[str, Selector] = {}
    for element in elements:
        if element not in parsed:
            parsed[element] = parse_selector(element)
    return tuple(parsed[element] for element in elements)
