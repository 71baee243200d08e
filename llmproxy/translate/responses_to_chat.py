# -*- test-case-name: tests.test_translate_responses_to_chat -*-
"""
Streaming, Responses to Chat: Responses stream events in,
C{chat.completion.chunk}s out (for a Chat client served by a Responses
upstream).

L{ResponsesToChatStream} is a state machine: no I/O, no clock (the chunk id
and the creation time are given to it), and every dict it returns is fresh.
Its chunks reassemble into what
L{llmproxy.translate.responses.responses_to_chat_completion} builds from the
final response: text that a sparse upstream only sends in C{*.done} events
or in the final response is still delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, TypeAlias, TypeVar

from llmproxy.errors import error_body
from llmproxy.translate.responses import as_mapping, chat_call_name, responses_usage_to_chat

__all__ = ["ResponsesToChatStream"]


@dataclass
class _Call:
    """
    A function call seen in a Responses stream.

    @ivar index: its Chat C{tool_calls} index.
    @ivar arguments: the arguments sent so far.
    """

    index: int
    arguments: str = ""


_TextKey: TypeAlias = tuple[str, int, int]
"""
Where a text goes: (kind, output index, part index); kind is C{content},
C{refusal}, C{summary} or C{reasoning}.
"""


class _TextEvent(NamedTuple):
    """
    Where the text of a Responses text event goes.

    @ivar kind: the kind of text, as in L{_TextKey}.
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
The kind of text (as in L{_TextKey}) and the field holding it, for each
C{type} of message content part.
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
        self._sent: dict[_TextKey, str] = {}
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
        """
        key = (text.kind, _as_int(event.get("output_index")), _as_int(event.get(text.part_field)))
        if text.done:
            return self._settle(key, event.get(text.text_field))
        return self._text(key, event.get(text.text_field))

    def _on_start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._role()

    def _on_item_added(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Announce function calls; other items wait for their content.
        """
        index = _as_int(event.get("output_index"))
        item = event.get("item")
        if isinstance(item, Mapping) and item.get("type") == "function_call":
            return self._open_call(index, item)
        return []

    def _on_arguments_delta(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._arguments(_as_int(event.get("output_index")), event.get("delta"))

    def _on_arguments_done(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._settle_arguments(_as_int(event.get("output_index")), event.get("arguments"))

    def _on_item_done(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        index = _as_int(event.get("output_index"))
        item = event.get("item")
        return self._settle_item(index, item) if isinstance(item, Mapping) else []

    def _on_completed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._end(as_mapping(event.get("response")), incomplete=False)

    def _on_incomplete(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._end(as_mapping(event.get("response")), incomplete=True)

    def _on_failed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        End the stream with one error object: the response's error.
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
        End the stream with one error object: the event's error, nested in
        C{error} or (from some servers) spread over the event itself.
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
        The opening chunk, the first time only.
        """
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _text(self, key: _TextKey, delta: Any) -> list[dict[str, Any]]:
        """
        Forward a text delta.  Reasoning texts (summaries and raw reasoning)
        all go to C{reasoning_content}, a new one after a blank line.
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

    def _settle(self, key: _TextKey, full: Any) -> list[dict[str, Any]]:
        """
        Send whatever part of a finished text was not streamed.
        """
        if not isinstance(full, str):
            return []
        already = self._sent.get(key, "")
        if len(full) > len(already) and full.startswith(already):
            return self._text(key, full[len(already) :])
        return []

    def _open_call(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Announce the C{function_call} item at output index C{index}, once,
        with whatever arguments it already carries.
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
                            "function": {"name": chat_call_name(item), "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks.extend(self._settle_arguments(index, item.get("arguments")))
        return chunks

    def _arguments(self, index: int, delta: Any) -> list[dict[str, Any]]:
        """
        Forward an arguments delta of the announced call at output index
        C{index}.
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
        Send whatever part of a finished output item was not streamed;
        types without a settler in L{_ITEM_SETTLERS} are ignored.
        """
        settle = _lookup(self._ITEM_SETTLERS, item.get("type"))
        return [] if settle is None else settle(self, index, item)

    def _settle_call_item(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """
        Announce a finished function call not seen before, or send the
        unstreamed tail of its arguments.
        """
        if index not in self._calls:
            return self._open_call(index, item)
        return self._settle_arguments(index, item.get("arguments"))

    def _settle_message(self, index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
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
        Send the unstreamed tails of a reasoning item's summary, then of its
        reasoning text.
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
        Finish the stream on the final response (C{incomplete} when it came
        in C{response.incomplete}).

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
        C{content_filter} or C{length} for an incomplete response, else
        C{tool_calls} when calls were sent, else C{stop}.
        """
        if incomplete or response.get("status") == "incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, Mapping) else None
            return "content_filter" if reason == "content_filter" else "length"
        return "tool_calls" if self._calls else "stop"

    def _usage_chunk(self, usage: Any) -> list[dict[str, Any]]:
        """
        The last, C{choices: []} chunk carrying the Chat form of the
        Responses C{usage}, when the client asked for it.
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
    """
    return table.get(key) if isinstance(key, str) else None


def _as_int(value: Any) -> int:
    """
    An event index as an C{int}: 0 when missing or not an integer.
    """
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
