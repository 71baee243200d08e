# -*- test-case-name: tests.test_continuation -*-
"""
Mid-stream continuation, the pure half: what a broken stream had told the
client (L{partial_from}, parsed only once it broke), the body that asks the
next target to continue it (L{prefill_body}), and the transforms that join
the next target's answer onto what the client has (L{splicer}).

Everything here works on events in the I{client's} dialect: the next
target's stream goes through its ordinary transform first, and a splicer
rewrites that transform's output.  So one splicer per frontend serves
every backend dialect.

Two ways to continue:
 - C{prefill}: the next target was sent the partial answer as a final
   assistant message and answers only what follows; everything it says is
   relayed;
 - C{restart}: the next target answers from the start; its text is held
   back until it has passed what the client has, and must begin with
   exactly that (else L{SpliceMismatch}); the rest is relayed.

The seam is marked by an SSE comment (C{: llmproxy continuation from
backend:model after reason}) before the first continued event, and the
answer's end says C{"x_llmproxy_continued": 1}: on the chat chunk carrying
the C{finish_reason} and on the usage chunk; on the C{response} of the
Responses terminal event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from llmproxy.dialects import CHAT
from llmproxy.errors import ProxyError
from llmproxy.sse import DONE, SSEFramer, encode_event, parse_event
from llmproxy.translate.transforms import BadStream, Transform, failed_error, stream_error_payload

#: The mark on the end of a continued answer.
CONTINUED = "x_llmproxy_continued"
PREFILL, RESTART = "prefill", "restart"


class SpliceMismatch(BadStream):
    """
    The restarted answer does not begin with what the client already has
    (or the continuation is not text): the answer cannot be continued
    verbatim.
    """


class ContinuationFailed(BadStream):
    """
    The continuation's own stream failed in-band.
    """


@dataclass
class Partial:
    """
    What a broken stream had told the client.

    @ivar blocker: why it cannot be continued (a tool call in progress, the
        answer already ended, several choices), or L{None}.
    @ivar head: the first chat chunk's C{id}, C{model}, C{created}; or the
        Responses C{response} object of C{response.created}.
    @ivar sequence: the next Responses C{sequence_number}.
    @ivar done_items: the Responses output items completed before the break.
    @ivar message: the open Responses message item: C{id}, C{output_index},
        and C{content_index} once its text part was added.
    """

    dialect: str
    text: str = ""
    blocker: str | None = None
    head: dict[str, Any] = field(default_factory=dict)
    sequence: int = 0
    done_items: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] | None = None


def _payloads(sent: bytes) -> list[Any]:
    """
    The data of every event in C{sent} (C{"[DONE]"} as that string).
    """
    framer = SSEFramer(max(len(sent) + 1, 1))
    out: list[Any] = []
    for raw in framer.feed(sent) + [framer.remainder()]:
        event = parse_event(raw) if raw else None
        if event is None or event.data is None:
            continue
        try:
            out.append("[DONE]" if event.done else event.json())
        except ValueError:
            continue
    return out


def partial_from(dialect: str, sent: bytes) -> Partial:
    """
    Parse what the client was sent before the break.
    """
    if dialect == CHAT:
        return _chat_partial(sent)
    return _responses_partial(sent)


def _chat_partial(sent: bytes) -> Partial:
    partial = Partial(CHAT)
    pieces: list[str] = []
    for data in _payloads(sent):
        if not isinstance(data, dict) or "error" in data:
            partial.blocker = "the answer already ended"
            continue
        if not partial.head:
            partial.head = {k: data.get(k) for k in ("id", "model", "created")}
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("index", 0) != 0:
                partial.blocker = "several choices"
            if delta.get("tool_calls") or delta.get("function_call"):
                partial.blocker = "a tool call was in progress"
            if choice.get("finish_reason"):
                partial.blocker = "the answer already ended"
            if isinstance(delta.get("content"), str):
                pieces.append(delta["content"])
    partial.text = "".join(pieces)
    return partial


def _responses_partial(sent: bytes) -> Partial:
    partial = Partial("responses")
    pieces: list[str] = []
    for data in _payloads(sent):
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if isinstance(data.get("sequence_number"), int):
            partial.sequence = data["sequence_number"] + 1
        if kind in ("response.created", "response.in_progress"):
            partial.head = dict(data.get("response") or {})
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "message":
                partial.message = {"id": item.get("id"), "output_index": data.get("output_index")}
            elif item.get("type") != "reasoning":
                partial.blocker = "a tool call was in progress"
        elif kind == "response.content_part.added" and partial.message is not None:
            partial.message["content_index"] = data.get("content_index", 0)
        elif kind == "response.output_text.delta":
            pieces.append(str(data.get("delta") or ""))
        elif kind == "response.output_item.done":
            item = data.get("item") or {}
            partial.done_items.append(item)
            if item.get("type") == "message":
                partial.blocker = "the answer's text already ended"
        elif isinstance(kind, str) and (kind.startswith("response.function_call")
                                        or kind.startswith("response.custom_tool_call")):
            partial.blocker = "a tool call was in progress"
        elif kind in ("response.completed", "response.incomplete", "response.failed", "error"):
            partial.blocker = "the answer already ended"
    partial.text = "".join(pieces)
    return partial


def prefill_body(dialect: str, body: Mapping[str, Any], text: str) -> dict[str, Any]:
    """
    The client's body with C{text} as a final assistant message to
    continue (a chat message, or a Responses assistant output message).
    """
    out = dict(body)
    if dialect == CHAT:
        out["messages"] = [*body.get("messages", ()), {"role": "assistant", "content": text}]
        return out
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or ())
    items.append({"type": "message", "role": "assistant",
                  "content": [{"type": "output_text", "text": text, "annotations": []}]})
    out["input"] = items
    return out


def with_prefill_fields(
    body: Mapping[str, Any], params: Mapping[str, Any], message: Mapping[str, Any]
) -> dict[str, Any]:
    """
    A prefill request (in the backend's dialect) with the server's own
    fields: C{params} at its top level, C{message} on its final assistant
    message (or Responses input item).
    """
    out = {**body, **params}
    key = "messages" if isinstance(body.get("messages"), list) else "input"
    items = list(out.get(key) or ())
    if message and items and isinstance(items[-1], dict):
        items[-1] = {**items[-1], **message}
        out[key] = items
    return out


def seam_comment(source: str, reason: str) -> bytes:
    """
    The SSE comment that marks a seam.
    """
    clean = " ".join(f"{source} after {reason}".split())
    return f": llmproxy continuation from {clean}\n\n".encode()


class _Joiner:
    """
    The text side of a splice: what the continuation adds to C{prefix}.
    """

    def __init__(self, prefix: str, mode: str) -> None:
        self.prefix = prefix
        self.passed = mode == PREFILL or not prefix
        self.held = ""
        self.added = ""

    def feed(self, text: str) -> str:
        """
        The part of C{text} to relay.

        @raise SpliceMismatch: when the restarted text departs from the
            prefix.
        """
        if self.passed:
            self.added += text
            return text
        start, size = len(self.held), len(self.prefix)
        self.held += text
        # Only the new text is compared: what was held already matched.
        end = min(len(self.held), size)
        if self.prefix[start:end] != self.held[start:end]:
            raise SpliceMismatch("the restarted answer differs from the part already sent")
        if len(self.held) < size:
            return ""
        self.passed, rest = True, self.held[size:]
        self.added = rest
        return rest

    def close(self) -> None:
        """
        The continuation's text ended.

        @raise SpliceMismatch: when it never reached the end of the prefix.
        """
        if not self.passed:
            raise SpliceMismatch("the restarted answer is shorter than the part already sent")

    @property
    def whole(self) -> str:
        return self.prefix + self.added


class Splicer:
    """
    A transform: the continuation's own transform, its output rewritten.
    """

    def __init__(self, inner: Transform, partial: Partial, mode: str, seam: bytes) -> None:
        self.inner = inner
        self.partial = partial
        self.mode = mode
        self.joiner = _Joiner(partial.text, mode)
        self.seam = seam
        self.finished = False
        #: Whether anything of the continuation reached the client.
        self.wrote = False
        #: Whether the answer's text ended (its finish, or its text's done).
        self.ended = False
        #: The continuation's usage (in the client's dialect), once seen.
        self.usage: dict[str, Any] | None = None
        #: Why the continuation cannot be joined on, once known.
        self.mismatch: SpliceMismatch | None = None

    def events(self, raw: list[bytes]) -> bytes:
        try:
            return self._out(self.inner.events(raw))
        except SpliceMismatch as e:
            self.mismatch = e
            raise

    def end(self) -> bytes:
        try:
            out = self._out(self.inner.end())
        except SpliceMismatch as e:
            self.mismatch = e
            raise
        if not self.finished:
            raise BadStream("the continuation ended without its final event")
        return out

    def _out(self, produced: bytes) -> bytes:
        out: list[bytes] = []
        for data in _payloads(produced):
            out += self._rewrite(data)
        if not out:
            return b""
        if not self.wrote:
            self.wrote = True
            out.insert(0, self.seam)
        return b"".join(out)

    def _rewrite(self, data: Any) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: ProxyError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = self._error(error)
        if not self.wrote:
            self.wrote = True
            out = self.seam + out
        return out

    def _error(self, error: ProxyError) -> bytes:
        raise NotImplementedError

    def final(self) -> dict[str, Any] | None:
        return None

    def partial_now(self) -> Partial:
        """
        What the client has now, to continue from should this stream break
        in turn.
        """
        raise NotImplementedError


class ChatSplicer(Splicer):
    """
    Chat chunks of the continuation, under the broken answer's id.
    """

    def _rewrite(self, data: Any) -> list[bytes]:
        if data == "[DONE]":
            self.finished = True
            return [DONE]
        if not isinstance(data, dict):
            return []
        if isinstance(data.get("error"), dict):
            raise ContinuationFailed(str(data["error"].get("message") or "upstream failed"))
        data.update({k: v for k, v in self.partial.head.items() if v is not None})
        choices = data.get("choices") or []
        if not choices:
            if isinstance(data.get("usage"), dict):
                self.usage = data["usage"]
                data[CONTINUED] = 1
                return [encode_event(data)]
            return []
        choice = choices[0]
        delta = choice.get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call"):
            raise SpliceMismatch("the continuation is a tool call, not the answer's text")
        text = self.joiner.feed(delta["content"]) if isinstance(delta.get("content"), str) else ""
        finish = choice.get("finish_reason")
        if finish:
            self.joiner.close()
            self.ended = True
            data[CONTINUED] = 1
        elif not text:
            return []
        choice["delta"] = {"content": text} if text else {}
        data["choices"] = [choice]
        return [encode_event(data)]

    def _error(self, error: ProxyError) -> bytes:
        return encode_event({"error": stream_error_payload(error)}) + DONE

    def partial_now(self) -> Partial:
        return Partial(CHAT, self.joiner.whole,
                       "the answer already ended" if self.ended else None, self.partial.head)


class ResponsesSplicer(Splicer):
    """
    Responses events of the continuation, numbered on from the broken
    stream's, inside its response and its message item.
    """

    def __init__(self, inner: Transform, partial: Partial, mode: str, seam: bytes) -> None:
        super().__init__(inner, partial, mode, seam)
        message = partial.message or {}
        self.item_id = message.get("id")
        self.index = message.get("output_index", len(partial.done_items))
        self.item_open = partial.message is not None
        self.part_open = "content_index" in message
        self.content_index = message.get("content_index", 0)
        self.sequence = partial.sequence
        self.skipped: set[Any] = set()
        self._final: dict[str, Any] | None = None

    def _emit(self, data: dict[str, Any]) -> list[bytes]:
        data["sequence_number"] = self.sequence
        self.sequence += 1
        return [encode_event(data, data["type"])]

    def _rewrite(self, data: Any) -> list[bytes]:
        if not isinstance(data, dict):
            return []
        kind = str(data.get("type"))
        if kind in ("response.created", "response.in_progress"):
            return []
        if kind in ("response.failed", "error"):
            raise ContinuationFailed("the continuation failed: " + json.dumps(data)[:200])
        if kind in ("response.completed", "response.incomplete"):
            return self._terminal(data)
        if kind == "response.output_item.added":
            return self._item_added(data)
        if data.get("output_index") in self.skipped:
            return []
        self._place(data)
        if kind == "response.content_part.added":
            if self.part_open:
                return []
            self.part_open = True
        elif kind == "response.output_text.delta":
            text = self.joiner.feed(str(data.get("delta") or ""))
            if not text:
                return []
            data["delta"] = text
        elif kind == "response.output_text.done":
            self.joiner.close()
            self.ended = True
            data["text"] = self.joiner.whole
        elif kind == "response.content_part.done":
            data["part"] = {**(data.get("part") or {}), "text": self.joiner.whole}
        elif kind == "response.output_item.done":
            return self._emit({**data, "item": self._message_item(data.get("item") or {})})
        elif not self.joiner.passed:
            return []
        return self._emit(data)

    def _item_added(self, data: dict[str, Any]) -> list[bytes]:
        item = data.get("item") or {}
        if item.get("type") == "reasoning":
            self.skipped.add(data.get("output_index"))
            return []
        if item.get("type") != "message":
            raise SpliceMismatch("the continuation is a tool call, not the answer's text")
        if self.item_open:
            return []
        self.item_open = True
        if self.item_id is None:
            self.item_id = item.get("id")
        self._place(data)
        data["item"] = {**item, "id": self.item_id}
        return self._emit(data)

    def _place(self, data: dict[str, Any]) -> None:
        """
        Put an event of the continuation's message in the broken one's.
        """
        if "item_id" in data:
            data["item_id"] = self.item_id
        if "output_index" in data:
            data["output_index"] = self.index
        if "content_index" in data:
            data["content_index"] = self.content_index

    def _message_item(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {**item, "id": self.item_id, "type": "message", "role": "assistant",
                "status": item.get("status", "completed"),
                "content": [{"type": "output_text", "text": self.joiner.whole,
                             "annotations": []}]}

    def _terminal(self, data: dict[str, Any]) -> list[bytes]:
        self.joiner.close()
        got = data.get("response") or {}
        messages = [o for o in got.get("output") or () if o.get("type") == "message"]
        output = [*self.partial.done_items,
                  self._message_item(messages[0] if messages else {"status": "completed"})]
        head = {k: self.partial.head[k] for k in ("id", "created_at", "model")
                if k in self.partial.head}
        response = {**got, **head, "output": output, CONTINUED: 1}
        if isinstance(got.get("usage"), dict):
            self.usage = got["usage"]
        self._final = response
        self.finished = True
        return self._emit({**data, "response": response})

    def _error(self, error: ProxyError) -> bytes:
        response = {**self.partial.head, "status": "failed", "error": failed_error(error)}
        return self._emit({"type": "response.failed", "response": response})[0]

    def final(self) -> dict[str, Any] | None:
        return self._final

    def partial_now(self) -> Partial:
        message: dict[str, Any] | None = None
        if self.item_open:
            message = {"id": self.item_id, "output_index": self.index}
            if self.part_open:
                message["content_index"] = self.content_index
        return Partial(self.partial.dialect, self.joiner.whole,
                       "the answer's text already ended" if self.ended else None,
                       self.partial.head, self.sequence, self.partial.done_items, message)


def splicer(inner: Transform, partial: Partial, mode: str, seam: bytes) -> Splicer:
    """
    The transform that joins a continuation (relayed through C{inner}) onto
    C{partial}.
    """
    kind = ChatSplicer if partial.dialect == CHAT else ResponsesSplicer
    return kind(inner, partial, mode, seam)


__all__ = [
    "CONTINUED", "PREFILL", "RESTART", "ContinuationFailed", "Partial", "SpliceMismatch", "Splicer",
    "partial_from", "prefill_body", "seam_comment", "splicer", "with_prefill_fields",
]
