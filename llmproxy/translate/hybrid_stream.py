# -*- test-case-name: tests.test_hybrid_pure -*-
"""
A hybrid route's streams (pure; behaviour.md section 10):

 - L{ReasoningCutter} reads the reasoning phase's events (either dialect)
   and says when the reasoning ended: a C{</think>} / C{</thinking>} close
   tag in the content, the end of a run of C{reasoning_content} /
   C{reasoning} deltas (or of Responses reasoning events), a
   C{finish_reason} or the stream's final event;
 - L{with_reasoning} wraps the execution phase's stream transform so that
   the client sees the reasoning first: a C{reasoning_content} chunk
   (Chat), or a reasoning item's summary events (Responses: the
   execution's items move one output index up, and its final response
   lists the reasoning item first).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from llmproxy.dialects import CHAT
from llmproxy.errors import ProxyError
from llmproxy.sse import Event, SSEParser, encode_event
from llmproxy.translate.hybrid import reasoning_item
from llmproxy.translate.transforms import Transform, Wrapped

__all__ = ["MAX_REASONING", "ReasoningCutter", "ReasoningFailed", "chat_prelude",
           "responses_prelude", "with_reasoning"]

#: The most reasoning kept (characters): the phase is cut there.
MAX_REASONING = 256 * 1024
_OPEN = re.compile(r"\A\s*<think(?:ing)?>")
_CLOSE = re.compile(r"</think(?:ing)?>")
_LONGEST_TAG = len("</thinking>")
_END_EVENTS = frozenset({"response.completed", "response.incomplete"})
_FAILED_EVENTS = frozenset({"response.failed", "error"})


class ReasoningFailed(Exception):
    """
    The reasoning phase's stream said it failed.
    """


class ReasoningCutter:
    """
    The reasoning of one stream, fed its events as they come (at any
    chunk boundary: a close tag split across deltas is still found).

    @ivar ended: why the reasoning ended (C{tag}, C{run}, C{finish},
        C{done}, C{limit}), or L{None} while it goes on.
    @ivar usage: the last usage object the stream carried.
    """

    def __init__(self) -> None:
        self.ended: str | None = None
        self.usage: dict[str, Any] | None = None
        self._deltas: list[str] = []
        self._size = 0
        self._content = ""
        self._close: int | None = None

    def feed(self, events: Iterable[Event]) -> bool:
        """
        Read events until the reasoning ends; returns whether it has.
        """
        for event in events:
            if self.ended is not None:
                break
            if event.done:
                self.ended = "done"
                break
            try:
                data = event.json()
            except ValueError:
                continue
            if isinstance(data, dict):
                self._event(data)
        return self.ended is not None

    @property
    def text(self) -> str:
        """
        The reasoning so far (tags stripped).
        """
        if self._deltas:
            return "".join(self._deltas).strip()
        content = self._content if self._close is None else self._content[:self._close]
        return _OPEN.sub("", content, count=1).strip()

    def _event(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind in _FAILED_EVENTS or isinstance(data.get("error"), dict):
            error = data.get("error") or (data.get("response") or {}).get("error") or {}
            message = error.get("message") if isinstance(error, dict) else None
            raise ReasoningFailed(str(message or "the reasoning stream failed"))
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        if isinstance(kind, str):
            self._responses(kind, data)
            return
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return
        found = choice.get("delta")
        delta: dict[str, Any] = found if isinstance(found, dict) else {}
        for name in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(name), str) and delta[name]:
                self._reason(delta[name])
        if isinstance(delta.get("content"), str) and delta["content"]:
            self._text(delta["content"])
        if delta.get("tool_calls") and self.ended is None and self._deltas:
            self.ended = "run"
        if choice.get("finish_reason") and self.ended is None:
            self.ended = "finish"

    def _responses(self, kind: str, data: dict[str, Any]) -> None:
        delta = data.get("delta")
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            if isinstance(delta, str):
                self._reason(delta)
        elif kind == "response.reasoning_summary_part.added" and self._deltas:
            self._reason("\n\n")
        elif kind == "response.output_text.delta" and isinstance(delta, str):
            self._text(delta)
        elif kind == "response.output_item.done" and self._deltas:
            self.ended = "run"
        elif kind in _END_EVENTS:
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
            self.ended = "finish"

    def _reason(self, text: str) -> None:
        self._deltas.append(text)
        self._grow(len(text))

    def _text(self, text: str) -> None:
        if self._deltas:  # the content after a run of reasoning deltas
            self.ended = "run"
            return
        start = max(0, len(self._content) - _LONGEST_TAG)
        self._content += text
        found = _CLOSE.search(self._content, start)
        if found is not None:
            self._close = found.start()
            self.ended = "tag"
            return
        self._grow(len(text))

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size >= MAX_REASONING and self.ended is None:
            self.ended = "limit"


# the client's stream

def chat_prelude(first: Event | None, reasoning: str) -> bytes:
    """
    The chunk that carries the reasoning, with the id, time and model of
    the stream's C{first} event.
    """
    try:
        data = first.json() if first is not None and first.data and not first.done else {}
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    return encode_event({
        "id": data.get("id", "chatcmpl-hybrid"), "object": "chat.completion.chunk",
        "created": data.get("created", 0), "model": data.get("model", ""),
        "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": reasoning},
                     "finish_reason": None}],
    })


def responses_prelude(reasoning: str, ident: str = "rs_hybrid") -> list[dict[str, Any]]:
    """
    The events of a reasoning item at output index 0, its summary the
    reasoning.
    """
    at = {"item_id": ident, "output_index": 0, "summary_index": 0}
    part = {"type": "summary_text", "text": reasoning}
    return [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": ident, "summary": []}},
        {"type": "response.reasoning_summary_part.added", **at,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", **at, "delta": reasoning},
        {"type": "response.reasoning_summary_text.done", **at, "text": reasoning},
        {"type": "response.reasoning_summary_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0,
         "item": reasoning_item(reasoning, ident)},
    ]


class _WithReasoning(Wrapped):
    """
    A stream transform whose client sees the reasoning first.
    """

    __slots__ = ("reasoning", "shown")

    def __init__(self, inner: Transform, reasoning: str) -> None:
        super().__init__(inner)
        self.reasoning = reasoning
        self.shown = False

    def events(self, raw: list[bytes]) -> bytes:
        out = self.inner.events(raw)
        if self.shown or not out:
            return out
        self.shown = True
        first = SSEParser().feed(out)
        return chat_prelude(first[0] if first else None, self.reasoning) + out


_OPENING = frozenset({"response.created", "response.in_progress"})
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class _ResponsesWithReasoning(_WithReasoning):
    """
    The Responses form: the reasoning item's events after the stream's
    opening events, every later output index one up, the sequence numbers
    renumbered, and the item first in the final response's output.
    """

    __slots__ = ("sequence",)

    def __init__(self, inner: Transform, reasoning: str) -> None:
        super().__init__(inner, reasoning)
        self.sequence = 0

    def events(self, raw: list[bytes]) -> bytes:
        return self._rewrite(self.inner.events(raw))

    def end(self) -> bytes:
        return self._rewrite(self.inner.end())

    def error(self, error: ProxyError) -> bytes:
        return self._rewrite(self.inner.error(error))

    def _rewrite(self, out: bytes) -> bytes:
        if not out:
            return out
        written = []
        for event in SSEParser().feed(out):
            try:
                data = event.json()
            except ValueError:
                written.append(encode_event(event.data or "", event.event))
                continue
            if not isinstance(data, dict):
                written.append(encode_event(event.data or "", event.event))
                continue
            if not self.shown and data.get("type") not in _OPENING:
                self.shown = True
                written.extend(self._encode(e) for e in responses_prelude(self.reasoning))
            written.append(self._encode(self._moved(data) if self.shown else data))
        return b"".join(written)

    def _moved(self, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("output_index"), int):
            data["output_index"] += 1
        response = data.get("response")
        if data.get("type") in _FINAL and isinstance(response, dict) \
                and isinstance(response.get("output"), list):
            response["output"] = [reasoning_item(self.reasoning), *response["output"]]
        return data

    def _encode(self, data: dict[str, Any]) -> bytes:
        if "sequence_number" in data or data.get("type") != "error":
            data["sequence_number"] = self.sequence
            self.sequence += 1
        return encode_event(data, data.get("type"))


def with_reasoning(inner: Transform, frontend: str, reasoning: str) -> Transform:
    """
    C{inner}, its client seeing C{reasoning} first.
    """
    if frontend == CHAT:
        return _WithReasoning(inner, reasoning)
    return _ResponsesWithReasoning(inner, reasoning)
