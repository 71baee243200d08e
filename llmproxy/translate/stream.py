# -*- test-case-name: tests.test_translate_stream -*-
"""
Streaming translation: C{chat.completion.chunk}s ⇄ Responses stream events.

Both translators are small state machines.  They do no I/O and read no
clock: ids and timestamps are given to them.  Every dict they return is
fresh, so callers may keep or serialise events as they please.

L{ChatToResponsesStream} ends in exactly the object
L{llmproxy.translate.responses.chat_completion_to_response} builds for the
same answer, ids included.  L{ResponsesToChatStream} yields chunks that
reassemble into what
L{llmproxy.translate.responses.responses_to_chat_completion} builds from the
final response; text that a sparse upstream only sends in C{*.done} events
or in the final response is still delivered.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, TypeAlias, TypeVar

from llmproxy.errors import error_body
from llmproxy.translate.responses import (
    as_mapping,
    chat_finish_to_status,
    chat_message_reasoning,
    chat_usage_to_responses,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_object,
    responses_usage_to_chat,
)

__all__ = ["ChatToResponsesStream", "ResponsesToChatStream"]


@dataclass
class _Part:
    """
    One content part of a message item being streamed.

    @ivar kind: C{output_text} or C{refusal}.
    @ivar text: the text so far.
    @ivar closed: whether its C{*.done} events were sent.
    """

    kind: str
    text: str = ""
    closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """
        The part as JSON.
        """
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text}
        return {"type": "output_text", "text": self.text, "annotations": []}


@dataclass
class _Item:
    """
    One output item being streamed.

    @ivar kind: C{message}, C{function_call} or C{reasoning}.
    @ivar id: the item id.
    @ivar output_index: its position in C{output}.
    @ivar parts: message parts.
    @ivar text: reasoning text.
    @ivar call_id: function call id.
    @ivar name: function name.
    @ivar arguments: function arguments so far.
    @ivar closed: whether C{output_item.done} was sent.
    """

    kind: str
    id: str
    output_index: int
    parts: list[_Part] = field(default_factory=list)
    text: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    closed: bool = False

    def as_dict(self, *, added: bool = False) -> dict[str, Any]:
        """
        The item as JSON.

        @param added: give the empty form used by C{output_item.added}.
        @return: a fresh dict.
        """
        status = "completed" if self.closed else "in_progress"
        if self.kind == "message":
            parts = [] if added else [part.as_dict() for part in self.parts]
            return message_item(self.id, parts, status)
        if self.kind == "function_call":
            arguments = "" if added else self.arguments
            return function_call_item(self.id, self.call_id, self.name, arguments, status)
        return reasoning_item(self.id, [] if added or not self.text else [self.text])


class ChatToResponsesStream:
    """
    Turns C{chat.completion.chunk} dicts into Responses stream events (dicts
    with C{type} and an increasing C{sequence_number}).

    Call L{start} (optional: L{feed} starts the stream if needed), L{feed}
    for each chunk, then L{finish} at the end of the upstream stream, or
    L{fail} if it broke.  Only choice 0 is translated.

    Reasoning (C{reasoning_content}) becomes a C{reasoning} item with one
    summary part; text and refusals share one C{message} item; each tool
    call C{index} opens a C{function_call} item.  A new item closes the open
    message or reasoning item; function calls stay open until L{finish}, so
    that fragments of interleaved calls are never lost.
    """

    def __init__(
        self,
        *,
        response_id: str,
        created_at: int,
        request: Mapping[str, Any] | None = None,
    ) -> None:
        """
        @param response_id: the C{resp_...} id of the response.
        @param created_at: Unix time of creation.
        @param request: the Responses request, whose settings are echoed
            in every response snapshot.
        """
        self._response_id = response_id
        self._created_at = created_at
        self._request: Mapping[str, Any] = (
            copy.deepcopy(dict(request)) if request is not None else {}
        )
        self._model = str(self._request.get("model") or "")
        self._sequence = 0
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._reasoning: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._last_call: int | None = None
        self._usage: dict[str, Any] | None = None
        self._service_tier: str | None = None
        self._finish_reason: str | None = None
        self._status = "in_progress"
        self._error: dict[str, Any] | None = None
        self._incomplete: dict[str, Any] | None = None
        self._started = False
        self._done = False

    # -- public API ---------------------------------------------------------

    @property
    def response(self) -> dict[str, Any]:
        """
        The aggregated Response object: after L{finish} (or L{fail}), the
        same object as in the final event.
        """
        return response_object(
            response_id=self._response_id,
            created_at=self._created_at,
            model=self._model,
            status=self._status,
            output=[item.as_dict() for item in self._items],
            usage=chat_usage_to_responses(self._usage),
            request=self._request,
            error=self._error,
            incomplete_details=self._incomplete,
            service_tier=self._service_tier,
        )

    def start(self) -> list[dict[str, Any]]:
        """
        Open the stream.

        @return: C{response.created} and C{response.in_progress} (or
            nothing when already started).
        """
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Translate one chat chunk.

        @param chunk: a C{chat.completion.chunk} dict.  A chunk carrying an
            C{error} object (and no choices) fails the response.
        @return: zero or more events.
        """
        if self._done:
            return []
        if isinstance(chunk.get("error"), Mapping) and not chunk.get("choices"):
            return self.fail(chunk["error"])
        events = self.start()
        self._record_envelope(chunk)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            events.extend(self._translate_choice(choice))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """
        End the stream after the upstream's last chunk.

        @return: the events closing every open item, then
            C{response.completed}, or C{response.incomplete} when the
            finish reason was C{length} or C{content_filter}.
        """
        if self._done:
            return []
        events = self.start()
        events.extend(self._close_reasoning())
        events.extend(self._close_message())
        events.extend(self._close_calls())
        self._status, self._incomplete = chat_finish_to_status(self._finish_reason)
        self._done = True
        kind = "response.completed" if self._status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, error: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        End the stream because the upstream failed.

        @param error: an OpenAI error object (C{{message, code, ...}}).
        @return: C{response.failed}, whose response carries
            C{error {code, message}} and the output produced so far.
        """
        if self._done:
            return []
        events = self.start()
        self._status = "failed"
        self._error = {
            "code": str(error.get("code") or "server_error"),
            "message": str(error.get("message") or "The upstream request failed."),
        }
        self._done = True
        events.append(self._event("response.failed", response=self.response))
        return events

    # -- chunk parts --------------------------------------------------------

    def _record_envelope(self, chunk: Mapping[str, Any]) -> None:
        """
        Remember the response-wide fields a chunk may carry: C{model},
        C{usage} and C{service_tier}.

        @param chunk: a C{chat.completion.chunk} dict.
        """
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = dict(chunk["usage"])
        if isinstance(chunk.get("service_tier"), str):
            self._service_tier = chunk["service_tier"]

    def _translate_choice(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Translate choice 0 of a chunk: its delta's reasoning, text, refusal
        and tool-call fragments, in that order, then its finish reason.

        @param choice: the choice.
        @return: the events.
        """
        delta = as_mapping(choice.get("delta"))
        events = self._reasoning_delta(chat_message_reasoning(delta))
        events.extend(self._text_delta("output_text", delta.get("content")))
        events.extend(self._text_delta("refusal", delta.get("refusal")))
        for fragment in delta.get("tool_calls") or []:
            if isinstance(fragment, Mapping):
                events.extend(self._tool_call_fragment(fragment))
        if choice.get("finish_reason"):
            self._finish_reason = str(choice["finish_reason"])
        return events

    # -- helpers ------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """
        Build the next event.

        @param kind: the event C{type}.
        @param fields: its other fields.
        @return: the numbered event.
        """
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _open_item(self, kind: str, prefix: str, **fields: Any) -> tuple[_Item, dict[str, Any]]:
        """
        Open a new output item.

        @param kind: the item type.
        @param prefix: its id prefix.
        @param fields: other L{_Item} fields.
        @return: the item and its C{output_item.added} event.
        """
        index = len(self._items)
        item = _Item(
            kind=kind, id=item_id(prefix, self._response_id, index), output_index=index, **fields
        )
        self._items.append(item)
        added = self._event(
            "response.output_item.added", output_index=index, item=item.as_dict(added=True)
        )
        return item, added

    def _item_done(self, item: _Item) -> dict[str, Any]:
        """
        The C{output_item.done} event of a closed item.

        @param item: the item.
        @return: the event.
        """
        return self._event(
            "response.output_item.done", output_index=item.output_index, item=item.as_dict()
        )

    # -- reasoning ----------------------------------------------------------

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        """
        Stream reasoning text, opening a reasoning item if needed.

        @param text: the new text; C{""} streams nothing.
        @return: the events.
        """
        if not text:
            return []
        item, events = self._current_reasoning()
        item.text += text
        events.append(
            self._event(
                "response.reasoning_summary_text.delta",
                item_id=item.id,
                output_index=item.output_index,
                summary_index=0,
                delta=text,
            )
        )
        return events

    def _current_reasoning(self) -> tuple[_Item, list[dict[str, Any]]]:
        """
        The open reasoning item, opened (closing the message item first)
        with its one summary part when there is none.

        @return: the item and the events opening it.
        """
        if self._reasoning is not None:
            return self._reasoning, []
        events = self._close_message()
        item, added = self._open_item("reasoning", "rs")
        self._reasoning = item
        events.append(added)
        events.append(
            self._event(
                "response.reasoning_summary_part.added",
                item_id=item.id,
                output_index=item.output_index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        )
        return item, events

    def _close_reasoning(self) -> list[dict[str, Any]]:
        """
        Close the open reasoning item, if any.

        @return: the C{*.done} events.
        """
        item = self._reasoning
        if item is None:
            return []
        self._reasoning = None
        item.closed = True
        common = {"item_id": item.id, "output_index": item.output_index, "summary_index": 0}
        return [
            self._event("response.reasoning_summary_text.done", text=item.text, **common),
            self._event(
                "response.reasoning_summary_part.done",
                part={"type": "summary_text", "text": item.text},
                **common,
            ),
            self._item_done(item),
        ]

    # -- message ------------------------------------------------------------

    def _text_delta(self, kind: str, text: Any) -> list[dict[str, Any]]:
        """
        Stream text or refusal text into the message item, opening the item
        and the part as needed.

        @param kind: C{output_text} or C{refusal}.
        @param text: the new text; anything but a non-empty string streams
            nothing.
        @return: the events.
        """
        if not isinstance(text, str) or not text:
            return []
        events = self._close_reasoning()
        item, opened = self._current_message()
        events.extend(opened)
        part, started = self._current_part(item, kind)
        events.extend(started)
        part.text += text
        common = {
            "item_id": item.id,
            "output_index": item.output_index,
            "content_index": len(item.parts) - 1,
            "delta": text,
        }
        if kind == "refusal":
            events.append(self._event("response.refusal.delta", **common))
        else:
            events.append(self._event("response.output_text.delta", logprobs=[], **common))
        return events

    def _current_message(self) -> tuple[_Item, list[dict[str, Any]]]:
        """
        The open message item, opened when there is none.

        @return: the item and the events opening it.
        """
        if self._message is not None:
            return self._message, []
        item, added = self._open_item("message", "msg")
        self._message = item
        return item, [added]

    def _current_part(self, item: _Item, kind: str) -> tuple[_Part, list[dict[str, Any]]]:
        """
        The open last part of C{item} if it is of C{kind}; otherwise close
        the last part and start a new one.

        @param item: the message item.
        @param kind: C{output_text} or C{refusal}.
        @return: the part and the events closing and starting parts.
        """
        part = item.parts[-1] if item.parts else None
        if part is not None and part.kind == kind and not part.closed:
            return part, []
        events = self._close_part(item)
        part = _Part(kind=kind)
        item.parts.append(part)
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.output_index,
                content_index=len(item.parts) - 1,
                part=part.as_dict(),
            )
        )
        return part, events

    def _close_part(self, item: _Item) -> list[dict[str, Any]]:
        """
        Close the last part of C{item}, if it is open.

        @param item: the message item.
        @return: the C{*.done} and C{content_part.done} events.
        """
        if not item.parts or item.parts[-1].closed:
            return []
        part = item.parts[-1]
        part.closed = True
        common = {
            "item_id": item.id,
            "output_index": item.output_index,
            "content_index": len(item.parts) - 1,
        }
        if part.kind == "refusal":
            done = self._event("response.refusal.done", refusal=part.text, **common)
        else:
            done = self._event("response.output_text.done", text=part.text, logprobs=[], **common)
        return [done, self._event("response.content_part.done", part=part.as_dict(), **common)]

    def _close_message(self) -> list[dict[str, Any]]:
        """
        Close the open message item, if any.

        @return: the closing events.
        """
        item = self._message
        if item is None:
            return []
        self._message = None
        events = self._close_part(item)
        item.closed = True
        events.append(self._item_done(item))
        return events

    # -- function calls -----------------------------------------------------

    def _tool_call_fragment(self, fragment: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Stream one tool-call fragment.

        @param fragment: C{{index, id?, type?, function: {name?,
            arguments?}}}.
        @return: the events.
        """
        index = self._call_index(fragment)
        self._last_call = index
        function = as_mapping(fragment.get("function"))
        item, events = self._current_call(index, fragment, function.get("name"))
        events.extend(self._call_arguments(item, function.get("arguments")))
        return events

    def _call_index(self, fragment: Mapping[str, Any]) -> int:
        """
        The Chat index of a tool-call fragment; servers that omit C{index}
        are matched by C{id}, or else continue the last call.

        @param fragment: one entry of C{delta.tool_calls}.
        @return: the index.
        """
        index = fragment.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        call_id = fragment.get("id")
        for known, item in self._calls.items():
            if call_id and item.call_id == call_id:
                return known
        if call_id or self._last_call is None:
            return max(self._calls, default=-1) + 1
        return self._last_call

    def _current_call(
        self, index: int, fragment: Mapping[str, Any], name: Any
    ) -> tuple[_Item, list[dict[str, Any]]]:
        """
        The function call item of a Chat tool-call index, opened when the
        index is new.  A known call without a name takes C{name}.

        @param index: the Chat tool-call index.
        @param fragment: the fragment naming it.
        @param name: the fragment's function name, if any.
        @return: the item and the events opening it.
        """
        item = self._calls.get(index)
        if item is None:
            return self._open_call(index, fragment, name)
        if isinstance(name, str) and name and not item.name:
            item.name = name
        return item, []

    def _open_call(
        self, index: int, fragment: Mapping[str, Any], name: Any
    ) -> tuple[_Item, list[dict[str, Any]]]:
        """
        Open a function call item, closing the open reasoning and message
        items first.  A fragment without an C{id} gets a deterministic one.

        @param index: the Chat tool-call index.
        @param fragment: the fragment opening the call.
        @param name: the fragment's function name, if any.
        @return: the item and the events closing and opening items.
        """
        events = self._close_reasoning()
        events.extend(self._close_message())
        call_id = fragment.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = item_id("call", self._response_id, len(self._items))
        item, added = self._open_item(
            "function_call", "fc", call_id=call_id, name=name if isinstance(name, str) else ""
        )
        self._calls[index] = item
        events.append(added)
        return item, events

    def _call_arguments(self, item: _Item, arguments: Any) -> list[dict[str, Any]]:
        """
        Stream a fragment's arguments into a function call item.

        @param item: the call.
        @param arguments: a piece of the arguments text; a non-string JSON
            value is serialised first.
        @return: the C{function_call_arguments.delta} event, or nothing
            when there are no new arguments.
        """
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        if not arguments:
            return []
        item.arguments += arguments
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.output_index,
                delta=arguments,
            )
        ]

    def _close_calls(self) -> list[dict[str, Any]]:
        """
        Close every open function call item, in output order.

        @return: the closing events.
        """
        events: list[dict[str, Any]] = []
        for item in self._items:
            if item.kind == "function_call" and not item.closed:
                events.extend(self._close_call(item))
        return events

    def _close_call(self, item: _Item) -> list[dict[str, Any]]:
        """
        Close a function call item.

        @param item: the open call.
        @return: C{function_call_arguments.done} and C{output_item.done}.
        """
        item.closed = True
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=item.output_index,
                name=item.name,
                arguments=item.arguments,
            ),
            self._item_done(item),
        ]


@dataclass
class _Call:
    """
    A function call seen in a Responses stream.

    @ivar index: its Chat C{tool_calls} index.
    @ivar arguments: the arguments sent so far.
    """

    index: int
    arguments: str = ""


class _TextEvent(NamedTuple):
    """
    Where the text of a Responses text event goes.

    @ivar kind: the kind of text, as in the keys of
        L{ResponsesToChatStream._text}: C{content}, C{refusal}, C{summary}
        or C{reasoning}.
    @ivar part_field: the event field holding the part index.
    @ivar text_field: the event field holding the text.
    @ivar done: whether the event carries the complete text (a C{*.done}
        event) rather than a delta.
    """

    kind: str
    part_field: str
    text_field: str
    done: bool


_TEXT_EVENTS: Mapping[str, _TextEvent] = MappingProxyType(
    {
        "response.output_text.delta": _TextEvent("content", "content_index", "delta", False),
        "response.output_text.done": _TextEvent("content", "content_index", "text", True),
        "response.refusal.delta": _TextEvent("refusal", "content_index", "delta", False),
        "response.refusal.done": _TextEvent("refusal", "content_index", "refusal", True),
        "response.reasoning_summary_text.delta": _TextEvent(
            "summary", "summary_index", "delta", False
        ),
        "response.reasoning_summary_text.done": _TextEvent(
            "summary", "summary_index", "text", True
        ),
        "response.reasoning_text.delta": _TextEvent("reasoning", "content_index", "delta", False),
        "response.reasoning_text.done": _TextEvent("reasoning", "content_index", "text", True),
    }
)
"""
The Responses events that carry text, by C{type}.
"""

_MESSAGE_PARTS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"output_text": ("content", "text"), "refusal": ("refusal", "refusal")}
)
"""
The kind of text (as in L{_TextEvent.kind}) and the field holding it, for
each C{type} of message content part.
"""

_EventHandler: TypeAlias = Callable[
    ["ResponsesToChatStream", Mapping[str, Any]], list[dict[str, Any]]
]
_ItemSettler: TypeAlias = Callable[
    ["ResponsesToChatStream", int, Mapping[str, Any]], list[dict[str, Any]]
]


class ResponsesToChatStream:
    """
    Turns Responses stream events into C{chat.completion.chunk} dicts.

    Text, refusals, reasoning (as the C{reasoning_content} extension) and
    function calls are forwarded as they stream.  C{*.done} events, output
    items and the final response are compared with what was sent, and any
    missing tail is sent before the finish chunk.
    """

    def __init__(self, *, chunk_id: str, created: int, model: str, include_usage: bool) -> None:
        """
        @param chunk_id: the C{chatcmpl-...} id repeated in every chunk.
        @param created: the Unix time repeated in every chunk.
        @param model: the model name repeated in every chunk.
        @param include_usage: whether the client asked for
            C{stream_options.include_usage}: every chunk then carries
            C{usage: null} and a last C{choices: []} chunk carries the usage.
        """
        self._chunk_id = chunk_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._role_sent = False
        self._finished = False
        self._sent: dict[tuple[str, int, int], str] = {}
        self._reasoning_sent = False
        self._calls: dict[int, _Call] = {}

    @property
    def finished(self) -> bool:
        """
        Whether the stream has ended (finish chunk or error sent).
        """
        return self._finished

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Translate one Responses event.

        Text events are described by L{_TEXT_EVENTS}; every other event
        type known here has a handler in L{_HANDLERS}.

        @param event: a Responses stream event.
        @return: chunks; for C{response.failed} and C{error}, a list holding
            one C{{"error": {...}}} object, after which the caller closes
            the stream.  Unknown events give C{[]}.
        """
        if self._finished:
            return []
        kind = event.get("type")
        text = _lookup(_TEXT_EVENTS, kind)
        if text is not None:
            return self._on_text(text, event)
        handler = _lookup(self._HANDLERS, kind)
        return [] if handler is None else handler(self, event)

    # -- event handlers -----------------------------------------------------

    def _on_text(self, text: _TextEvent, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Forward the text of a text delta, or settle a text with its
        C{*.done} event.

        @param text: what the event carries.
        @param event: the event.
        @return: the chunks.
        """
        key = (text.kind, _as_int(event.get("output_index")), _as_int(event.get(text.part_field)))
        if text.done:
            return self._settle(key, event.get(text.text_field))
        return self._text(key, event.get(text.text_field))

    def _on_start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.created}, C{response.in_progress} and
        C{response.queued}.

        @param event: the event (ignored).
        @return: the role chunk, the first time.
        """
        return self._role()

    def _on_item_added(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.output_item.added}: announce function calls.

        @param event: the event.
        @return: the chunks.
        """
        index = _as_int(event.get("output_index"))
        item = event.get("item")
        if isinstance(item, Mapping) and item.get("type") == "function_call":
            return self._open_call(index, item)
        return []

    def _on_arguments_delta(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.function_call_arguments.delta}.

        @param event: the event.
        @return: the chunks.
        """
        return self._arguments(_as_int(event.get("output_index")), event.get("delta"))

    def _on_arguments_done(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.function_call_arguments.done}.

        @param event: the event.
        @return: the chunks.
        """
        return self._settle_arguments(_as_int(event.get("output_index")), event.get("arguments"))

    def _on_item_done(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.output_item.done}.

        @param event: the event.
        @return: the chunks.
        """
        index = _as_int(event.get("output_index"))
        item = event.get("item")
        return self._settle_item(index, item) if isinstance(item, Mapping) else []

    def _on_completed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.completed}.

        @param event: the event.
        @return: the chunks ending the stream.
        """
        return self._end(as_mapping(event.get("response")), incomplete=False)

    def _on_incomplete(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.incomplete}.

        @param event: the event.
        @return: the chunks ending the stream.
        """
        return self._end(as_mapping(event.get("response")), incomplete=True)

    def _on_failed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{response.failed}: end the stream with the response's error.

        @param event: the event.
        @return: one error object.
        """
        error = as_mapping(as_mapping(event.get("response")).get("error"))
        self._finished = True
        return [
            error_body(
                str(error.get("message") or "The upstream response failed."),
                type=str(error.get("type") or "server_error"),
                code=error.get("code") or "server_error",
                param=error.get("param"),
            )
        ]

    def _on_error(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Handle C{error}: end the stream with its error, nested in C{error}
        or (from some servers) spread over the event itself.

        @param event: the event.
        @return: one error object.
        """
        nested = event.get("error")
        if isinstance(nested, Mapping):
            error, kind = nested, nested.get("type")
        else:
            error, kind = event, None
        self._finished = True
        return [
            error_body(
                str(error.get("message") or "The upstream stream failed."),
                type=str(kind or "server_error"),
                code=error.get("code"),
                param=error.get("param"),
            )
        ]

    # -- helpers ------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """
        A chunk with one choice.

        @param delta: the choice's delta.
        @param finish_reason: the finish reason, for the last chunk.
        @return: the chunk.
        """
        chunk = self._envelope(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """
        A chunk without C{usage}.

        @param choices: its choices.
        @return: the chunk.
        """
        return {
            "id": self._chunk_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def _role(self) -> list[dict[str, Any]]:
        """
        The opening chunk, once.

        @return: the role chunk, or nothing when already sent.
        """
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _text(self, key: tuple[str, int, int], delta: Any) -> list[dict[str, Any]]:
        """
        Forward a text delta.

        @param key: (kind, output index, part index); kind is C{content},
            C{refusal}, C{summary} or C{reasoning}.
        @param delta: the new text.
        @return: the chunks.
        """
        if not isinstance(delta, str) or not delta:
            return []
        chunks = self._role()
        already = self._sent.get(key, "")
        self._sent[key] = already + delta
        kind = key[0]
        if kind in ("summary", "reasoning"):
            if not already and self._reasoning_sent:
                delta = "\n\n" + delta
            self._reasoning_sent = True
            chunks.append(self._chunk({"reasoning_content": delta}))
        else:
            chunks.append(self._chunk({kind: delta}))
        return chunks

    def _settle(self, key: tuple[str, int, int], full: Any) -> list[dict[str, Any]]:
        """
        Send whatever part of a finished text was not streamed.

        @param key: as for L{_text}.
        @param full: the complete text.
        @return: the chunks.
        """
        if not isinstance(full, str):
            return []
        already = self._sent.get(key, "")
        if len(full) > len(already) and full.startswith(already):
            return self._text(key, full[len(already) :])
        return []

    def _open_call(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Announce a function call.

        @param index: its output index.
        @param item: the C{function_call} item.
        @return: the chunks.
        """
        if index in self._calls:
            return []
        call = _Call(index=len(self._calls))
        self._calls[index] = call
        chunks = self._role()
        chunks.append(
            self._chunk(
                {
                    "tool_calls": [
                        {
                            "index": call.index,
                            "id": str(item.get("call_id") or item.get("id") or ""),
                            "type": "function",
                            "function": {"name": str(item.get("name") or ""), "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks.extend(self._settle_arguments(index, item.get("arguments")))
        return chunks

    def _arguments(self, index: int, delta: Any) -> list[dict[str, Any]]:
        """
        Forward an arguments delta of an announced call.

        @param index: the call's output index.
        @param delta: the new arguments text.
        @return: the chunks.
        """
        call = self._calls.get(index)
        if call is None or not isinstance(delta, str) or not delta:
            return []
        call.arguments += delta
        return [
            self._chunk({"tool_calls": [{"index": call.index, "function": {"arguments": delta}}]})
        ]

    def _settle_arguments(self, index: int, full: Any) -> list[dict[str, Any]]:
        """
        Send whatever part of a call's arguments was not streamed.

        @param index: the call's output index.
        @param full: the complete arguments.
        @return: the chunks.
        """
        call = self._calls.get(index)
        if call is None or not isinstance(full, str):
            return []
        if len(full) > len(call.arguments) and full.startswith(call.arguments):
            return self._arguments(index, full[len(call.arguments) :])
        return []

    # -- settling finished items --------------------------------------------

    def _settle_item(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Send whatever part of a finished output item was not streamed.

        @param index: its output index.
        @param item: the complete item; types without a settler in
            L{_ITEM_SETTLERS} are ignored.
        @return: the chunks.
        """
        settle = _lookup(self._ITEM_SETTLERS, item.get("type"))
        return [] if settle is None else settle(self, index, item)

    def _settle_call_item(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Announce a finished function call not seen before, or send the
        unstreamed tail of its arguments.

        @param index: its output index.
        @param item: the C{function_call} item.
        @return: the chunks.
        """
        if index not in self._calls:
            return self._open_call(index, item)
        return self._settle_arguments(index, item.get("arguments"))

    def _settle_message(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Send the unstreamed tails of a finished message's text and refusal
        parts.

        @param index: its output index.
        @param item: the C{message} item.
        @return: the chunks.
        """
        chunks: list[dict[str, Any]] = []
        for position, part in enumerate(item.get("content") or []):
            if not isinstance(part, Mapping):
                continue
            found = _lookup(_MESSAGE_PARTS, part.get("type"))
            if found is not None:
                kind, text_field = found
                chunks.extend(self._settle((kind, index, position), part.get(text_field)))
        return chunks

    def _settle_reasoning(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Send the unstreamed tails of a finished reasoning item's summary,
        then of its reasoning text.

        @param index: its output index.
        @param item: the C{reasoning} item.
        @return: the chunks.
        """
        chunks: list[dict[str, Any]] = []
        for key, kind in (("summary", "summary"), ("content", "reasoning")):
            for position, part in enumerate(item.get(key) or []):
                if isinstance(part, Mapping):
                    chunks.extend(self._settle((kind, index, position), part.get("text")))
        return chunks

    # -- the end ------------------------------------------------------------

    def _end(self, response: Mapping[str, Any], *, incomplete: bool) -> list[dict[str, Any]]:
        """
        Finish the stream.

        @param response: the final response.
        @param incomplete: whether it ended with C{response.incomplete}.
        @return: any unsent tail, the finish chunk and, when asked for, the
            usage chunk.
        """
        chunks = self._role()
        for index, item in enumerate(response.get("output") or []):
            if isinstance(item, Mapping):
                chunks.extend(self._settle_item(index, item))
        chunks.append(self._chunk({}, self._finish_reason(response, incomplete=incomplete)))
        chunks.extend(self._usage_chunk(response.get("usage")))
        self._finished = True
        return chunks

    def _finish_reason(self, response: Mapping[str, Any], *, incomplete: bool) -> str:
        """
        The Chat finish reason of a final response.

        @param response: the final response.
        @param incomplete: whether it ended with C{response.incomplete}.
        @return: C{content_filter} or C{length} for an incomplete response,
            else C{tool_calls} when calls were sent, else C{stop}.
        """
        if incomplete or response.get("status") == "incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, Mapping) else None
            return "content_filter" if reason == "content_filter" else "length"
        return "tool_calls" if self._calls else "stop"

    def _usage_chunk(self, usage: Any) -> list[dict[str, Any]]:
        """
        The last, C{choices: []} chunk carrying the usage, when the client
        asked for it.

        @param usage: the final response's Responses usage.
        @return: the chunk, or nothing.
        """
        chat_usage = responses_usage_to_chat(usage)
        if not self._include_usage or chat_usage is None:
            return []
        chunk = self._envelope([])
        chunk["usage"] = chat_usage
        return [chunk]

    # -- dispatch tables ----------------------------------------------------

    _HANDLERS: ClassVar[Mapping[str, _EventHandler]] = MappingProxyType(
        {
            "response.created": _on_start,
            "response.in_progress": _on_start,
            "response.queued": _on_start,
            "response.output_item.added": _on_item_added,
            "response.function_call_arguments.delta": _on_arguments_delta,
            "response.function_call_arguments.done": _on_arguments_done,
            "response.output_item.done": _on_item_done,
            "response.completed": _on_completed,
            "response.incomplete": _on_incomplete,
            "response.failed": _on_failed,
            "error": _on_error,
        }
    )
    """
    The handlers of the events that carry no text, by C{type}.
    """

    _ITEM_SETTLERS: ClassVar[Mapping[str, _ItemSettler]] = MappingProxyType(
        {
            "function_call": _settle_call_item,
            "message": _settle_message,
            "reasoning": _settle_reasoning,
        }
    )
    """
    The settlers of finished output items, by item C{type}.
    """


_T = TypeVar("_T")


def _lookup(table: Mapping[str, _T], key: object) -> _T | None:
    """
    Look up a C{type} from upstream JSON, which may be of any type, even an
    unhashable one: only strings match.

    @param table: a dispatch table.
    @param key: the raw C{type}.
    @return: its entry, or C{None}.
    """
    return table.get(key) if isinstance(key, str) else None


def _as_int(value: Any) -> int:
    """
    An event index as an C{int} (0 when missing).

    @param value: the raw index.
    @return: the index.
    """
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
