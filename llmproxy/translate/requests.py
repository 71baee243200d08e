# -*- test-case-name: tests.test_translate_chat_request,tests.test_translate_responses_request -*-
"""
Request translation between Chat Completions and the Responses API: what
both directions share.

L{llmproxy.translate.chat_request.chat_to_responses_request} serves the
C{openai-responses} backend (a Chat client talking to a Responses upstream);
L{llmproxy.translate.responses_request.responses_to_chat_request} serves the
C{/v1/responses} frontend when it bridges to a Chat upstream.  Both return a
L{Translated}: the new body plus the names of the fields that had no
equivalent and were dropped, so that callers can report them.  Both are
pure: they deep-copy what they keep and never modify their arguments.

Each direction has a L{FieldTable}: the top-level fields that keep their
name, those that have no equivalent, and a converter for each of the others.
The public functions translate the few fields that need the whole request
(the messages or input, C{instructions}, C{n}) and let L{translate_fields}
go through the rest, in order.  The converter builders (L{renamed},
L{converted}, L{nested}, ...) are here; the converters themselves live with
their direction.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from llmproxy.errors import InvalidRequest

__all__ = [
    "Translated",
    "TEXT_PART_TYPES",
    "SAME_IN_BOTH",
    "invalid",
    "non_null_copies",
    "Draft",
    "Converter",
    "FieldTable",
    "translate_fields",
    "when_set",
    "renamed",
    "converted",
    "nested",
    "tool_list",
    "tool_choice_translator",
]


@dataclass(frozen=True)
class Translated:
    """
    The result of translating a request body.

    @ivar body: the translated, JSON-ready request body.
    @ivar dropped: names of the fields that had no equivalent and were
        dropped, in the order they were met.  Nested fields are dotted
        (C{text.foo}, C{reasoning.summary}); dropped C{reasoning} input items
        are reported as C{input.reasoning}.
    """

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
"""
The content part types that carry plain text, in either API.
"""

SAME_IN_BOTH = frozenset(
    {
        "model",
        "user",
        "metadata",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)
"""
The fields both APIs have, with the same name and meaning.
"""


def invalid(message: str, param: str, code: str | None = "unsupported_value") -> InvalidRequest:
    """
    An L{InvalidRequest} blaming C{param}, for the caller to raise.
    """
    return InvalidRequest(message, code=code, param=param)


def non_null_copies(source: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """
    Deep copies of the fields of C{source} among C{keys} that are set (not
    null), in the order of C{keys}.
    """
    return {key: copy.deepcopy(source[key]) for key in keys if source.get(key) is not None}


# ---------------------------------------------------------------------------
# Field tables
# ---------------------------------------------------------------------------


@dataclass
class Draft:
    """
    A translation in progress: the state that the field converters share.

    @ivar request: the request being translated; never modified.
    @ivar body: the translated body so far.
    @ivar dropped: the names of the fields dropped so far, in the order they
        were met.
    @ivar text: the Responses C{text} object being gathered (Chat to
        Responses only); it goes last in the body.
    """

    request: Mapping[str, Any]
    body: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    text: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def begin(cls, request: Mapping[str, Any]) -> Draft:
        """
        Start translating C{request}.  In both directions the model comes
        first in the body, unchanged.
        """
        draft = cls(request)
        if request.get("model") is not None:
            draft.body["model"] = request["model"]
        return draft

    def result(self) -> Translated:
        return Translated(body=self.body, dropped=tuple(self.dropped))


Converter = Callable[[Any, Draft], None]
"""
Translates the value of one field into a L{Draft}.  A converter is called
for every occurrence of its field, null or not, in the order of the request.
"""


@dataclass(frozen=True)
class FieldTable:
    """
    How the top-level fields of one request shape translate.  A field that is
    in none of these is unknown: it is dropped, and reported unless null (a
    null field was not set: there is nothing to report).

    @ivar same_name: the fields kept under the same name and value (deep
        copied); null ones are left out.
    @ivar no_equivalent: the fields that have no equivalent: dropped, and
        reported unless unset (null, or C{logprobs: false}).
    @ivar converters: the converter of every other field that has an
        equivalent.
    """

    same_name: frozenset[str]
    no_equivalent: frozenset[str]
    converters: Mapping[str, Converter]


def _is_unset(key: str, value: Any) -> bool:
    """
    Whether C{value} means "not set" for field C{key}, so that dropping it is
    not worth reporting: C{None}, and C{logprobs: false}.
    """
    return value is None or (key == "logprobs" and value is False)


def translate_fields(fields: FieldTable, draft: Draft, handled: frozenset[str]) -> None:
    """
    Translate the fields of C{draft.request}, in order, following C{fields};
    the fields in C{handled} are skipped, because the caller translates them
    itself or ignores them.
    """
    for key, value in draft.request.items():
        if key in handled:
            continue
        if key in fields.same_name:
            if value is not None:
                draft.body[key] = copy.deepcopy(value)
        elif key in fields.no_equivalent:
            if not _is_unset(key, value):
                draft.dropped.append(key)
        elif key in fields.converters:
            fields.converters[key](value, draft)
        elif value is not None:
            draft.dropped.append(key)


def when_set(convert: Converter) -> Converter:
    """
    Make a converter ignore null values, which mean "not set".
    """

    @functools.wraps(convert)
    def convert_when_set(value: Any, draft: Draft) -> None:
        if value is not None:
            convert(value, draft)

    return convert_when_set


def renamed(name: str) -> Converter:
    """
    A converter for a field that only changes its name to C{name}: it sets
    the value itself (not a copy), unless it is null.
    """

    @when_set
    def rename(value: Any, draft: Draft) -> None:
        draft.body[name] = value

    return rename


def converted(name: str, convert: Callable[[Any], Any]) -> Converter:
    """
    A converter for a field whose value changes shape: it sets C{name} to
    C{convert(value)} (which may raise L{InvalidRequest}), unless the value
    is null.
    """

    @when_set
    def set_converted(value: Any, draft: Draft) -> None:
        draft.body[name] = convert(value)

    return set_converted


def nested(name: str, converters: Mapping[str, Converter]) -> Converter:
    """
    A converter for an object field whose sub-fields translate one by one
    (C{text}, C{reasoning}).

    @param converters: the converter of each sub-field that has an
        equivalent; the others are dropped and reported as C{name.sub}.  Null
        sub-fields are ignored.
    @return: a converter that raises L{InvalidRequest} when the (non-null)
        value is not an object.
    """
    table = MappingProxyType(dict(converters))

    @when_set
    def convert_nested(value: Any, draft: Draft) -> None:
        if not isinstance(value, Mapping):
            raise invalid(f"'{name}' must be an object.", name, "invalid_type")
        for sub, subvalue in value.items():
            if subvalue is None:
                continue
            if sub in table:
                table[sub](subvalue, draft)
            else:
                draft.dropped.append(f"{name}.{sub}")

    return convert_nested


def tool_list(tools: Any, convert_tool: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Translate a C{tools} list, one tool at a time.

    @raise InvalidRequest: if C{tools} is not a list.
    """
    if not isinstance(tools, list):
        raise invalid("'tools' must be a list.", "tools", "invalid_type")
    return [convert_tool(tool) for tool in tools]


def tool_choice_translator(
    convert: Callable[[Mapping[str, Any]], Any],
) -> Callable[[Any], Any]:
    """
    A C{tool_choice} translator, from one for the object forms: the string
    forms (C{auto}, C{none}, C{required}) are the same in both APIs, and
    anything but a string or an object raises L{InvalidRequest}.
    """

    @functools.wraps(convert)
    def translate(choice: Any) -> Any:
        if isinstance(choice, str):
            return choice
        if not isinstance(choice, Mapping):
            raise invalid(
                "'tool_choice' must be a string or an object.", "tool_choice", "invalid_type"
            )
        return convert(choice)

    return translate
