# -*- test-case-name: tests.test_stream_timeouts -*-
"""
Where a streamed answer starts: the first upstream event that carries some
of the answer (text, a refusal, reasoning, a tool call) or ends it (a
finish reason, the final event, an error).  What comes before it (a chat
role chunk, C{response.created}, an empty message item, comments) is no
answer yet: the relay holds it back, so an attempt that never gets further
can still be failed over without the client seeing anything of it.  The
predicates say "not yet" only for the shapes known to come first; any
other event (an unknown shape included) starts the answer, so nothing is
held back that might be the answer.

Pure: parsed event data (or raw SSE events) in, a boolean out, per
upstream dialect.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

from llmproxy.dialects import CHAT
from llmproxy.sse import parse_event

#: The fields of a chat delta that carry nothing of the answer.
_CHAT_EMPTY_DELTA = frozenset({"role"})
#: Responses events that come before any of the answer.
_RESPONSES_BEFORE = frozenset({
    "response.created", "response.in_progress", "response.queued",
    "response.content_part.added", "response.reasoning_summary_part.added",
})
#: Output items that are shells until their content comes; any other item
#: (a function call, a tool's call) is the answer itself.
_SHELLS = frozenset({"message", "reasoning"})


def _blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _chat_choice_starts(choice: Any) -> bool:
    if not isinstance(choice, Mapping):
        return True
    if choice.get("finish_reason") is not None:
        return True
    delta = choice.get("delta")
    if delta is None:
        return False
    if not isinstance(delta, Mapping):
        return True
    return any(not _blank(v) for k, v in delta.items() if k not in _CHAT_EMPTY_DELTA)


def chat_starts(data: Mapping[str, Any]) -> bool:
    """
    Whether a chat completion chunk may carry some of the answer or end
    it.  Only what surely does not is "no": a chunk whose every choice has a
    delta with nothing but a role (or empty fields) and no finish reason,
    or a chunk with no choice (usage alone).  Any other shape, an
    in-band C{error} included, counts as the answer.
    """
    choices = data.get("choices")
    if not isinstance(choices, list) or "error" in data:
        return True
    return any(map(_chat_choice_starts, choices))


def responses_starts(data: Mapping[str, Any]) -> bool:
    """
    Whether a Responses stream event may carry some of the answer or end
    it.  Only what surely does not is "no": C{response.created},
    C{response.in_progress}, C{response.queued}, an added content or
    summary part, an added message or reasoning item (a shell), and a
    C{*.delta} with an empty delta.  Any other event counts as the answer.
    """
    kind = data.get("type")
    if not isinstance(kind, str):
        return True
    if kind in _RESPONSES_BEFORE:
        return False
    if kind.endswith(".delta"):
        return not _blank(data.get("delta"))
    if kind == "response.output_item.added":
        item = data.get("item")
        return not (isinstance(item, Mapping) and item.get("type") in _SHELLS)
    return True


def _named_before(item: bytes) -> bool:
    """
    Whether a raw Responses event's leading C{event:} line names an event
    that comes before the answer (so C{response.created}, which echoes the
    whole request's instructions and tools, is not parsed).
    """
    if not item.startswith(b"event: "):
        return False
    end = item.find(b"\n")
    return item[7:end].rstrip(b"\r").decode("ascii", "replace") in _RESPONSES_BEFORE


def raw_starts(starts: Callable[[Mapping[str, Any]], bool], raw: Sequence[bytes]) -> bool:
    """
    Whether any of these raw SSE events starts the answer by C{starts}; the
    C{[DONE]} marker does (it ends the answer), comments and events that
    are not JSON objects do not (the stream transform judges those).
    """
    for item in raw:
        if starts is responses_starts and _named_before(item):
            continue
        try:
            data = _data(item)
        except ValueError:
            continue
        if data is _DONE or (isinstance(data, Mapping) and starts(data)):
            return True
    return False


#: What L{_data} returns for C{data: [DONE]}.
_DONE = object()


def _data(item: bytes) -> Any:
    """
    A raw event's data as JSON (L{_DONE} for the end marker, L{None} for
    none); the usual one-line C{data: {...}} is read without the SSE
    parser.

    @raise ValueError: for data that is not JSON.
    """
    if item.startswith(b"data: {") and item.count(b"\n") == 2:
        return json.loads(item[6:])
    event = parse_event(item)
    if event is None or event.data is None:
        return None
    return _DONE if event.done else event.json()


def answer_starts(dialect: str) -> Callable[[Sequence[bytes]], bool]:
    """
    The predicate, over raw events of a C{dialect} stream, of the first
    event of the answer.
    """
    starts = chat_starts if dialect == CHAT else responses_starts
    return lambda raw: raw_starts(starts, raw)


__all__ = ["answer_starts", "chat_starts", "raw_starts", "responses_starts"]
