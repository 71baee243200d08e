# -*- test-case-name: tests.test_translate_chat_to_responses,tests.test_translate_responses_to_chat -*-
"""
Streaming, Chat to Responses: C{chat.completion.chunk}s in, Responses stream
events out (for a Responses client served by a Chat upstream).

L{ChatToResponsesStream} is a state machine: no I/O, no clock (the id and
the creation time are given to it), and every dict it returns is fresh.  It
ends in exactly the object
L{llmproxy.translate.responses.chat_completion_to_response} builds for the
same answer, ids included.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from llmproxy.translate.namespaces import NamespaceTable
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
)

__all__ = ["ChatToResponsesStream"]


@dataclass
class _Part:
    """
    One content part of a message item being streamed.

    @ivar kind: C{output_text} or C{refusal}.
    @ivar closed: whether its C{*.done} events were sent.
    """

    kind: str
    text: str = ""
    closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text}
        return {"type": "output_text", "text": self.text, "annotations": []}


@dataclass
class _Item:
    """
    One output item being streamed.

    @ivar kind: C{message}, C{function_call} or C{reasoning}.
    @ivar parts: the parts of a message.
    @ivar text: the text of a reasoning item.
    @ivar call_id, name, arguments: those of a function call (the arguments
        so far).
    @ivar namespace: that of a call to a tool of a namespace tool.
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
    namespace: str | None = None
    closed: bool = False

    def as_dict(self, *, added: bool = False) -> dict[str, Any]:
        """
        The item as JSON; with C{added}, the empty form that
        C{output_item.added} carries.
        """
        status = "completed" if self.closed else "in_progress"
        if self.kind == "message":
            parts = [] if added else [part.as_dict() for part in self.parts]
            return message_item(self.id, parts, status)
        if self.kind == "function_call":
            arguments = "" if added else self.arguments
            return function_call_item(
                self.id, self.call_id, self.name, arguments, status, self.namespace
            )
        return reasoning_item(self.id, [] if added or not self.text else [self.text])

    def place(self, **index: int) -> dict[str, Any]:
        """
        The fields that place an event in this item: C{item_id},
        C{output_index}, then the given part index (C{content_index} or
        C{summary_index}).
        """
        return {"item_id": self.id, "output_index": self.output_index, **index}

    def last_part_place(self) -> dict[str, Any]:
        return self.place(content_index=len(self.parts) - 1)


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
        self._names = NamespaceTable.of(self._request.get("tools"))
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
        Open the stream: C{response.created} and C{response.in_progress},
        or nothing when already started.
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
        Translate one chat chunk.  A chunk carrying an C{error} object (and
        no choices) fails the response.
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
        """
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = dict(chunk["usage"])
        if isinstance(chunk.get("service_tier"), str):
            self._service_tier = chunk["service_tier"]

    def _translate_choice(self, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Translate a delta's reasoning, text, refusal and tool-call
        fragments, in that order, then note its finish reason.
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
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _open_item(self, kind: str, prefix: str, **fields: Any) -> tuple[_Item, dict[str, Any]]:
        """
        Open a new output item whose id has C{prefix}.

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
        return self._event(
            "response.output_item.done", output_index=item.output_index, item=item.as_dict()
        )

    # -- reasoning ----------------------------------------------------------

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        item, events = self._current_reasoning()
        item.text += text
        events.append(
            self._event(
                "response.reasoning_summary_text.delta", **item.place(summary_index=0), delta=text
            )
        )
        return events

    def _current_reasoning(self) -> tuple[_Item, list[dict[str, Any]]]:
        """
        The open reasoning item; when there is none, one is opened (closing
        the message item first) with its one summary part.

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
                **item.place(summary_index=0),
                part={"type": "summary_text", "text": ""},
            )
        )
        return item, events

    def _close_reasoning(self) -> list[dict[str, Any]]:
        item = self._reasoning
        if item is None:
            return []
        self._reasoning = None
        item.closed = True
        place = item.place(summary_index=0)
        return [
            self._event("response.reasoning_summary_text.done", text=item.text, **place),
            self._event(
                "response.reasoning_summary_part.done",
                part={"type": "summary_text", "text": item.text},
                **place,
            ),
            self._item_done(item),
        ]

    # -- message ------------------------------------------------------------

    def _text_delta(self, kind: str, text: Any) -> list[dict[str, Any]]:
        """
        Stream text or refusal text (C{kind} C{output_text} or C{refusal})
        into the message item, opening the item and the part as needed.
        Anything but a non-empty string streams nothing.
        """
        if not isinstance(text, str) or not text:
            return []
        events = self._close_reasoning()
        item, opened = self._current_message()
        events.extend(opened)
        part, started = self._current_part(item, kind)
        events.extend(started)
        part.text += text
        delta = {**item.last_part_place(), "delta": text}
        if kind == "refusal":
            events.append(self._event("response.refusal.delta", **delta))
        else:
            events.append(self._event("response.output_text.delta", logprobs=[], **delta))
        return events

    def _current_message(self) -> tuple[_Item, list[dict[str, Any]]]:
        if self._message is not None:
            return self._message, []
        item, added = self._open_item("message", "msg")
        self._message = item
        return item, [added]

    def _current_part(self, item: _Item, kind: str) -> tuple[_Part, list[dict[str, Any]]]:
        """
        The open last part of C{item} if it is of C{kind}; otherwise close
        the last part and start a new one.

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
                "response.content_part.added", **item.last_part_place(), part=part.as_dict()
            )
        )
        return part, events

    def _close_part(self, item: _Item) -> list[dict[str, Any]]:
        """
        Close the last part of C{item}, if it is open.

        @return: the C{*.done} and C{content_part.done} events.
        """
        if not item.parts or item.parts[-1].closed:
            return []
        part = item.parts[-1]
        part.closed = True
        place = item.last_part_place()
        if part.kind == "refusal":
            done = self._event("response.refusal.done", refusal=part.text, **place)
        else:
            done = self._event("response.output_text.done", text=part.text, logprobs=[], **place)
        return [done, self._event("response.content_part.done", part=part.as_dict(), **place)]

    def _close_message(self) -> list[dict[str, Any]]:
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
        Stream one entry of C{delta.tool_calls}: C{{index, id?, type?,
        function: {name?, arguments?}}}.
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

        @return: the item and the events opening it.
        """
        item = self._calls.get(index)
        if item is None:
            return self._open_call(index, fragment, name)
        if isinstance(name, str) and name and not item.name:
            item.namespace, item.name = self._names.call(name)
        return item, []

    def _open_call(
        self, index: int, fragment: Mapping[str, Any], name: Any
    ) -> tuple[_Item, list[dict[str, Any]]]:
        """
        Open a function call item, closing the open reasoning and message
        items first.  A fragment without an C{id} gets a deterministic one.

        @return: the item and the events closing and opening items.
        """
        events = self._close_reasoning()
        events.extend(self._close_message())
        call_id = fragment.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = item_id("call", self._response_id, len(self._items))
        namespace, name = self._names.call(name if isinstance(name, str) else "")
        item, added = self._open_item(
            "function_call", "fc", call_id=call_id, name=name, namespace=namespace
        )
        self._calls[index] = item
        events.append(added)
        return item, events

    def _call_arguments(self, item: _Item, arguments: Any) -> list[dict[str, Any]]:
        """
        Stream a fragment's arguments into a function call item; a
        non-string JSON value is serialised first.
        """
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        if not arguments:
            return []
        item.arguments += arguments
        return [
            self._event(
                "response.function_call_arguments.delta", **item.place(), delta=arguments
            )
        ]

    def _close_calls(self) -> list[dict[str, Any]]:
        """
        Close every open function call item, in output order.
        """
        events: list[dict[str, Any]] = []
        for item in self._items:
            if item.kind == "function_call" and not item.closed:
                item.closed = True
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **item.place(),
                        name=item.name,
                        arguments=item.arguments,
                    )
                )
                events.append(self._item_done(item))
        return events
