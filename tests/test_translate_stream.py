# -*- test-case-name: tests.test_translate_stream -*-
"""
Tests for L{llmproxy.translate.stream}.

Synthesised streams are checked three ways: against the non-streamed
translation of the same answer, through a reducer written here, and
through the openai SDK's own stream accumulators
(C{ResponseStreamState} and C{ChatCompletionStreamState}).
"""

from __future__ import annotations

import copy
import typing
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseFailedEvent, ResponseStreamEvent
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.translate.responses import chat_completion_to_response, responses_to_chat_completion
from llmproxy.translate.stream import ChatToResponsesStream, ResponsesToChatStream
from tests.test_translate_responses import (
    chat_completions,
    completion_summary,
    normalised_completion,
    responses_objects,
    responses_requests,
)

RESPONSE_ID = "resp_stream1"
CREATED = 1_700_000_123


def _event_classes() -> dict[str, type[Any]]:
    """
    The SDK's stream event classes by their C{type}.
    """
    union = typing.get_args(ResponseStreamEvent)[0]
    classes = {}
    for cls in typing.get_args(union):
        (literal,) = typing.get_args(cls.model_fields["type"].annotation)
        classes[literal] = cls
    return classes


EVENT_CLASSES = _event_classes()


# ---------------------------------------------------------------------------
# Building streams
# ---------------------------------------------------------------------------


def _pieces(draw: Callable[[st.SearchStrategy[Any]], Any], text: str) -> list[str]:
    """
    Cut C{text} into non-empty pieces at drawn positions.
    """
    if not text:
        return []
    cuts = sorted(set(draw(st.lists(st.integers(1, len(text)), max_size=4))) | {len(text)})
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(text[start:cut])
        start = cut
    return pieces


def _chunk(
    chat: dict[str, Any], delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    """
    A chunk of C{chat}'s stream.
    """
    return {
        "id": chat["id"],
        "object": "chat.completion.chunk",
        "created": chat["created"],
        "model": chat["model"],
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """
    A chat completion and one of the chunk sequences that stream it.
    """
    chat = draw(chat_completions())
    message = chat["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    opens_with_text = bool(message.get("content")) or not (calls or message.get("refusal"))
    chunks = [_chunk(chat, {"role": "assistant", "content": "" if opens_with_text else None})]
    for piece in _pieces(draw, message.get("reasoning_content") or ""):
        chunks.append(_chunk(chat, {"reasoning_content": piece}))
    for piece in _pieces(draw, message.get("content") or ""):
        chunks.append(_chunk(chat, {"content": piece}))
    for piece in _pieces(draw, message.get("refusal") or ""):
        chunks.append(_chunk(chat, {"refusal": piece}))
    for index, call in enumerate(calls):
        arguments = _pieces(draw, call["function"]["arguments"]) or [""]
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": arguments[0] if draw(st.booleans()) else "",
            },
        }
        rest = arguments[1:] if first["function"]["arguments"] else arguments
        chunks.append(_chunk(chat, {"tool_calls": [first]}))
        for piece in rest:
            chunks.append(
                _chunk(chat, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            )
    finish = _chunk(chat, {}, chat["choices"][0]["finish_reason"])
    chunks.append(finish)
    if "usage" in chat:
        if draw(st.booleans()):
            chunks.append({**_chunk(chat, {}), "choices": [], "usage": chat["usage"]})
        else:
            finish["usage"] = chat["usage"]
    return chat, chunks


def _translate_chat_stream(
    chunks: list[dict[str, Any]], request: dict[str, Any] | None = None
) -> tuple[ChatToResponsesStream, list[dict[str, Any]]]:
    """
    Run C{chunks} through a L{ChatToResponsesStream}.
    """
    stream = ChatToResponsesStream(response_id=RESPONSE_ID, created_at=CREATED, request=request)
    events = stream.start()
    for chunk in chunks:
        events.extend(stream.feed(chunk))
    events.extend(stream.finish())
    return stream, events


def _events_for_response(
    draw: Callable[[st.SearchStrategy[Any]], Any] | None, resp: dict[str, Any]
) -> list[dict[str, Any]]:
    """
    The official event sequence streaming C{resp}.  With C{draw}, texts are
    cut at drawn places and each part may lose a tail of its deltas (a
    sparse upstream), which the C{*.done} events still carry.
    """
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    def deltas(kind: str, text: str, **fields: Any) -> None:
        pieces = _pieces(draw, text) if draw is not None else ([text] if text else [])
        keep = draw(st.integers(0, len(pieces))) if draw is not None else len(pieces)
        for piece in pieces[:keep]:
            emit(kind, delta=piece, **fields)

    snapshot = {
        **resp,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "incomplete_details": None,
    }
    emit("response.created", response=snapshot)
    emit("response.in_progress", response=snapshot)
    for index, item in enumerate(resp["output"]):
        common = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            for position, part in enumerate(item["content"]):
                where = {**common, "content_index": position}
                if part["type"] == "output_text":
                    emit("response.content_part.added", part={**part, "text": ""}, **where)
                    deltas("response.output_text.delta", part["text"], logprobs=[], **where)
                    emit("response.output_text.done", text=part["text"], logprobs=[], **where)
                else:
                    emit("response.content_part.added", part={**part, "refusal": ""}, **where)
                    deltas("response.refusal.delta", part["refusal"], **where)
                    emit("response.refusal.done", refusal=part["refusal"], **where)
                emit("response.content_part.done", part=part, **where)
        elif item["type"] == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            deltas("response.function_call_arguments.delta", item["arguments"], **common)
            emit(
                "response.function_call_arguments.done",
                arguments=item["arguments"],
                name=item["name"],
                **common,
            )
        else:
            emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "summary": [], "content": None},
            )
            for position, part in enumerate(item["summary"]):
                where = {**common, "summary_index": position}
                emit("response.reasoning_summary_part.added", part={**part, "text": ""}, **where)
                deltas("response.reasoning_summary_text.delta", part["text"], **where)
                emit("response.reasoning_summary_text.done", text=part["text"], **where)
                emit("response.reasoning_summary_part.done", part=part, **where)
            for position, part in enumerate(item.get("content") or []):
                where = {**common, "content_index": position}
                deltas("response.reasoning_text.delta", part["text"], **where)
                emit("response.reasoning_text.done", text=part["text"], **where)
        emit("response.output_item.done", output_index=index, item=item)
    emit(
        "response.completed" if resp["status"] == "completed" else "response.incomplete",
        response=resp,
    )
    return events


# ---------------------------------------------------------------------------
# Reducers
# ---------------------------------------------------------------------------


def reduce_events(test: SynchronousTestCase, events: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Rebuild the final response from Responses events, checking on the way
    that numbering, nesting and every C{*.done} event agree with the
    deltas, and that the final response carries what was streamed.
    """
    test.assertEqual([event["sequence_number"] for event in events], list(range(len(events))))
    test.assertEqual(
        [event["type"] for event in events[:2]], ["response.created", "response.in_progress"]
    )
    output: list[dict[str, Any]] = []
    closed: set[int] = set()
    final: dict[str, Any] | None = None
    for position, event in enumerate(events):
        kind = event["type"]
        EVENT_CLASSES[kind].model_validate(event)
        test.assertIsNone(final, "event after the final one")
        index: int = event.get("output_index", -1)
        item = output[index] if 0 <= index < len(output) else None
        if kind in ("response.created", "response.in_progress"):
            test.assertEqual(event["response"]["status"], "in_progress")
            test.assertEqual(event["response"]["output"], [])
            Response.model_validate(event["response"])
        elif kind == "response.output_item.added":
            test.assertEqual(index, len(output))
            output.append(copy.deepcopy(event["item"]))
        elif kind in ("response.content_part.added", "response.reasoning_summary_part.added"):
            assert item is not None and index not in closed
            parts = item["content"] if kind == "response.content_part.added" else item["summary"]
            test.assertEqual(event.get("content_index", event.get("summary_index")), len(parts))
            parts.append(copy.deepcopy(event["part"]))
        elif kind == "response.output_text.delta":
            assert item is not None and index not in closed
            item["content"][event["content_index"]]["text"] += event["delta"]
        elif kind == "response.refusal.delta":
            assert item is not None and index not in closed
            item["content"][event["content_index"]]["refusal"] += event["delta"]
        elif kind == "response.reasoning_summary_text.delta":
            assert item is not None and index not in closed
            item["summary"][event["summary_index"]]["text"] += event["delta"]
        elif kind == "response.function_call_arguments.delta":
            assert item is not None and index not in closed
            item["arguments"] += event["delta"]
        elif kind == "response.output_text.done":
            assert item is not None
            test.assertEqual(event["text"], item["content"][event["content_index"]]["text"])
        elif kind == "response.refusal.done":
            assert item is not None
            test.assertEqual(event["refusal"], item["content"][event["content_index"]]["refusal"])
        elif kind == "response.content_part.done":
            assert item is not None
            test.assertEqual(event["part"], item["content"][event["content_index"]])
        elif kind == "response.reasoning_summary_text.done":
            assert item is not None
            test.assertEqual(event["text"], item["summary"][event["summary_index"]]["text"])
        elif kind == "response.reasoning_summary_part.done":
            assert item is not None
            test.assertEqual(event["part"], item["summary"][event["summary_index"]])
        elif kind == "response.function_call_arguments.done":
            assert item is not None
            test.assertEqual((event["name"], event["arguments"]), (item["name"], item["arguments"]))
        elif kind == "response.output_item.done":
            assert item is not None and index not in closed
            test.assertEqual(
                event["item"], {**item, **({"status": "completed"} if "status" in item else {})}
            )
            output[index] = copy.deepcopy(event["item"])
            closed.add(index)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            test.assertEqual(position, len(events) - 1)
            final = event["response"]
            Response.model_validate(final) if kind != "response.failed" else None
            test.assertEqual(final["status"], kind.rsplit(".", 1)[1])
            if kind != "response.failed":
                test.assertEqual(closed, set(range(len(output))))
            test.assertEqual(final["output"], output)
        else:
            test.fail(f"unexpected event {kind}")
    assert final is not None
    return final


def sdk_final_response(events: list[dict[str, Any]]) -> tuple[Any, dict[int, str]]:
    """
    Feed events to the SDK's C{responses.stream()} accumulator.

    @return: its final response (the parsed one for C{response.completed};
        for C{response.incomplete}, which the SDK only passes on, the
        event's response), and the text snapshots it reported last for each
        output index (from the text and arguments delta events).
    """
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    snapshots: dict[int, str] = {}
    last: Any = None
    for event in events:
        parsed = typing.cast(
            ResponseStreamEvent, construct_type(type_=ResponseStreamEvent, value=event)
        )
        for out in state.handle_event(parsed):
            last = out
            if out.type in ("response.output_text.delta", "response.function_call_arguments.delta"):
                snapshots[out.output_index] = out.snapshot
    if state._completed_response is not None:
        return state._completed_response, snapshots
    return last.response, snapshots


def reduce_chunks(test: SynchronousTestCase, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Rebuild a chat completion from chunks, checking that the first chunk
    opens the assistant turn, that every chunk repeats the envelope and that
    only a usage chunk follows the finish chunk.
    """
    test.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
    content, refusal, reasoning = "", "", ""
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    usage = None
    for chunk in chunks:
        test.assertEqual(chunk["object"], "chat.completion.chunk")
        test.assertEqual(chunk["id"], chunks[0]["id"])
        if not chunk["choices"]:
            test.assertIsNotNone(finish)
            usage = chunk["usage"]
            continue
        test.assertIsNone(finish, "chunk after the finish chunk")
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        content += delta.get("content") or ""
        refusal += delta.get("refusal") or ""
        reasoning += delta.get("reasoning_content") or ""
        for fragment in delta.get("tool_calls") or []:
            if fragment["index"] not in calls:
                test.assertEqual(fragment["index"], len(calls))
                calls[fragment["index"]] = {
                    "id": fragment["id"],
                    "type": "function",
                    "function": {"name": fragment["function"]["name"], "arguments": ""},
                }
            calls[fragment["index"]]["function"]["arguments"] += fragment["function"].get(
                "arguments", ""
            )
        finish = choice["finish_reason"]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or None,
        "refusal": refusal or None,
    }
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    if reasoning:
        message["reasoning_content"] = reasoning
    completion: dict[str, Any] = {
        "id": chunks[0]["id"],
        "object": "chat.completion",
        "created": chunks[0]["created"],
        "model": chunks[0]["model"],
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        completion["usage"] = usage
    return completion


def _without_empty_text(chat: dict[str, Any]) -> dict[str, Any]:
    """
    A copy of C{chat} where empty content or refusal is L{None}.
    """
    chat = copy.deepcopy(chat)
    message = chat["choices"][0]["message"]
    message["content"] = message["content"] or None
    message["refusal"] = message["refusal"] or None
    return chat


# ---------------------------------------------------------------------------
# Chat -> Responses
# ---------------------------------------------------------------------------


def _text_chunk(content: str | None = None, **delta: Any) -> dict[str, Any]:
    """
    A chunk from model C{m} with C{content} and other C{delta} fields.
    """
    finish = delta.pop("finish_reason", None)
    if content is not None:
        delta["content"] = content
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _call_chunk(
    index: int | None, id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    """
    A chunk carrying one tool-call fragment.
    """
    fragment: dict[str, Any] = {"function": {"arguments": arguments}}
    if index is not None:
        fragment["index"] = index
    if id is not None:
        fragment["id"] = id
        fragment["type"] = "function"
    if name is not None:
        fragment["function"]["name"] = name
    return _text_chunk(tool_calls=[fragment])


def _types(events: list[dict[str, Any]]) -> list[str]:
    """
    The event types, without the C{response.} prefix.
    """
    return [event["type"].removeprefix("response.") for event in events]


class ChatToResponsesStreamTests(SynchronousTestCase):
    """
    Tests for L{ChatToResponsesStream}.
    """

    def test_textSequence(self) -> None:
        """
        A text answer streams the official event sequence, numbered from 0.
        """
        stream, events = _translate_chat_stream(
            [
                _text_chunk("", role="assistant"),
                _text_chunk("Hel"),
                _text_chunk("lo"),
                _text_chunk(finish_reason="stop"),
            ]
        )
        self.assertEqual(
            _types(events),
            [
                "created",
                "in_progress",
                "output_item.added",
                "content_part.added",
                "output_text.delta",
                "output_text.delta",
                "output_text.done",
                "content_part.done",
                "output_item.done",
                "completed",
            ],
        )
        self.assertEqual([event["sequence_number"] for event in events], list(range(10)))
        delta = events[4]
        self.assertEqual(
            delta,
            {
                "type": "response.output_text.delta",
                "sequence_number": 4,
                "item_id": "msg_stream1_0",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hel",
                "logprobs": [],
            },
        )
        self.assertEqual(events[2]["item"]["status"], "in_progress")
        self.assertEqual(events[2]["item"]["content"], [])
        self.assertEqual(events[6]["text"], "Hello")
        self.assertEqual(events[8]["item"]["status"], "completed")
        self.assertEqual(events[-1]["response"], stream.response)
        self.assertEqual(Response.model_validate(stream.response).output_text, "Hello")
        reduce_events(self, events)

    def test_functionCallSequence(self) -> None:
        """
        A tool call streams C{output_item.added} with empty arguments, the
        argument deltas, C{function_call_arguments.done} with name and
        arguments, and C{output_item.done}.
        """
        _, events = _translate_chat_stream(
            [
                _text_chunk(None, role="assistant"),
                _call_chunk(0, "call_1", "lookup", ""),
                _call_chunk(0, arguments='{"q":'),
                _call_chunk(0, arguments='"x"}'),
                _text_chunk(finish_reason="tool_calls"),
            ]
        )
        self.assertEqual(
            _types(events),
            [
                "created",
                "in_progress",
                "output_item.added",
                "function_call_arguments.delta",
                "function_call_arguments.delta",
                "function_call_arguments.done",
                "output_item.done",
                "completed",
            ],
        )
        self.assertEqual(
            events[2]["item"],
            {
                "id": "fc_stream1_0",
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": "call_1",
                "name": "lookup",
            },
        )
        self.assertEqual((events[5]["name"], events[5]["arguments"]), ("lookup", '{"q":"x"}'))
        reduce_events(self, events)

    def test_newToolIndexClosesText(self) -> None:
        """
        A tool-call index not seen before closes the open text item first.
        """
        _, events = _translate_chat_stream(
            [
                _text_chunk("Let me look."),
                _call_chunk(0, "call_1", "f", "{}"),
                _call_chunk(1, "call_2", "g", "{}"),
            ]
        )
        types = _types(events)
        self.assertLess(types.index("output_item.done"), types.index("output_item.added", 3))
        final = reduce_events(self, events)
        self.assertEqual(
            [item["type"] for item in final["output"]],
            ["message", "function_call", "function_call"],
        )
        self.assertEqual([item["call_id"] for item in final["output"][1:]], ["call_1", "call_2"])

    def test_interleavedCalls(self) -> None:
        """
        Argument fragments of parallel calls may interleave.
        """
        _, events = _translate_chat_stream(
            [
                _call_chunk(0, "call_a", "f", '{"a"'),
                _call_chunk(1, "call_b", "g", '{"b"'),
                _call_chunk(0, arguments=":1}"),
                _call_chunk(1, arguments=":2}"),
            ]
        )
        final = reduce_events(self, events)
        self.assertEqual([item["arguments"] for item in final["output"]], ['{"a":1}', '{"b":2}'])

    def test_callsWithoutIndex(self) -> None:
        """
        Servers that omit the index are matched by id, and fragments without
        id continue the last call.
        """
        _, events = _translate_chat_stream(
            [
                _call_chunk(None, "call_a", "f", "{"),
                _call_chunk(None, arguments="}"),
                _call_chunk(None, "call_b", "g", "[]"),
            ]
        )
        final = reduce_events(self, events)
        self.assertEqual(
            [(item["call_id"], item["arguments"]) for item in final["output"]],
            [("call_a", "{}"), ("call_b", "[]")],
        )

    def test_callWithoutId(self) -> None:
        """
        A call without an id gets a deterministic call id.
        """
        stream, events = _translate_chat_stream([_call_chunk(0, name="f", arguments="{}")])
        self.assertEqual(stream.response["output"][0]["call_id"], "call_stream1_0")
        reduce_events(self, events)

    def test_length(self) -> None:
        """
        C{finish_reason: length} ends with C{response.incomplete}.
        """
        stream, events = _translate_chat_stream(
            [_text_chunk("cut"), _text_chunk(finish_reason="length")]
        )
        self.assertEqual(events[-1]["type"], "response.incomplete")
        self.assertEqual(stream.response["status"], "incomplete")
        self.assertEqual(stream.response["incomplete_details"], {"reason": "max_output_tokens"})
        reduce_events(self, events)

    def test_usage(self) -> None:
        """
        A C{choices: []} usage chunk gives the final usage.
        """
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        _, events = _translate_chat_stream(
            [
                _text_chunk("x"),
                _text_chunk(finish_reason="stop"),
                {**_text_chunk(), "choices": [], "usage": usage},
            ]
        )
        self.assertEqual(events[-1]["response"]["usage"]["input_tokens"], 5)
        self.assertEqual(events[-1]["response"]["usage"]["output_tokens"], 2)

    def test_lifecycleSnapshots(self) -> None:
        """
        Lifecycle events carry full response snapshots echoing the request.
        """
        request = {"model": "asked", "instructions": "Be brief.", "metadata": {"k": "v"}}
        _, events = _translate_chat_stream([_text_chunk("x")], request)
        for event in (events[0], events[1], events[-1]):
            Response.model_validate(event["response"])
            self.assertEqual(event["response"]["id"], RESPONSE_ID)
            self.assertEqual(event["response"]["created_at"], CREATED)
            self.assertEqual(event["response"]["instructions"], "Be brief.")
            self.assertEqual(event["response"]["metadata"], {"k": "v"})
        self.assertEqual(events[0]["response"]["model"], "asked")
        self.assertEqual(events[-1]["response"]["model"], "m")

    def test_startIsImplicitAndOnce(self) -> None:
        """
        L{ChatToResponsesStream.feed} starts the stream when needed, and
        L{ChatToResponsesStream.start} then does nothing.
        """
        stream = ChatToResponsesStream(response_id="r", created_at=0)
        events = stream.feed(_text_chunk("x"))
        self.assertEqual(_types(events)[:2], ["created", "in_progress"])
        self.assertEqual(stream.start(), [])
        self.assertEqual(stream.response["status"], "in_progress")

    def test_finishOnce(self) -> None:
        """
        After L{ChatToResponsesStream.finish}, nothing more is emitted.
        """
        stream, events = _translate_chat_stream([_text_chunk("x")])
        self.assertEqual(stream.finish(), [])
        self.assertEqual(stream.feed(_text_chunk("more")), [])
        self.assertEqual(stream.fail({"message": "late"}), [])
        self.assertEqual(stream.response, events[-1]["response"])

    def test_fail(self) -> None:
        """
        L{ChatToResponsesStream.fail} ends with C{response.failed} carrying
        the error and the output produced so far.
        """
        stream = ChatToResponsesStream(response_id="r", created_at=0)
        events = stream.start() + stream.feed(_text_chunk("partial"))
        events += stream.fail(
            {"message": "Rate limited", "code": "rate_limit_exceeded", "type": "x"}
        )
        self.assertEqual(events[-1]["type"], "response.failed")
        response = events[-1]["response"]
        self.assertEqual(response["status"], "failed")
        self.assertEqual(
            response["error"], {"code": "rate_limit_exceeded", "message": "Rate limited"}
        )
        self.assertEqual(response["output"][0]["content"][0]["text"], "partial")
        self.assertEqual(stream.finish(), [])
        failed = ResponseFailedEvent.model_validate(events[-1])
        assert failed.response.error is not None
        self.assertEqual(failed.response.error.message, "Rate limited")

    def test_errorChunk(self) -> None:
        """
        A chunk carrying an C{error} object fails the response; a missing
        code becomes C{server_error}.
        """
        stream = ChatToResponsesStream(response_id="r", created_at=0)
        events = stream.feed({"error": {"message": "boom"}})
        self.assertEqual(_types(events), ["created", "in_progress", "failed"])
        self.assertEqual(
            events[-1]["response"]["error"], {"code": "server_error", "message": "boom"}
        )
        Response.model_validate(events[-1]["response"])

    def test_eventsAreNotShared(self) -> None:
        """
        Changing an emitted event does not change later events or the
        final response.
        """
        stream = ChatToResponsesStream(
            response_id="r", created_at=0, request={"metadata": {"a": "b"}}
        )
        events = stream.start() + stream.feed(_text_chunk("x"))
        events[0]["response"]["metadata"]["a"] = "changed"
        events[2]["item"]["content"].append("junk")
        final = stream.finish()[-1]["response"]
        self.assertEqual(final["metadata"], {"a": "b"})
        self.assertEqual(
            final["output"][0]["content"], [{"type": "output_text", "text": "x", "annotations": []}]
        )

    def test_reasoningThenText(self) -> None:
        """
        Reasoning streams first as a reasoning item with one summary part.
        """
        _, events = _translate_chat_stream(
            [_text_chunk(reasoning_content="hmm"), _text_chunk("ok")]
        )
        self.assertEqual(
            _types(events)[2:9],
            [
                "output_item.added",
                "reasoning_summary_part.added",
                "reasoning_summary_text.delta",
                "reasoning_summary_text.done",
                "reasoning_summary_part.done",
                "output_item.done",
                "output_item.added",
            ],
        )
        final = reduce_events(self, events)
        self.assertEqual(final["output"][0]["summary"], [{"type": "summary_text", "text": "hmm"}])

    @settings(max_examples=100, deadline=None)
    @given(chat_streams(), responses_requests())
    def test_matchesNonStreamed(
        self,
        stream_case: tuple[dict[str, Any], list[dict[str, Any]]],
        request: dict[str, Any] | None,
    ) -> None:
        """
        However the answer is chunked, the events reassemble (here and in
        the SDK's accumulator) into the response
        L{chat_completion_to_response} gives for the whole answer.
        """
        chat, chunks = stream_case
        before = copy.deepcopy((chunks, request))
        stream, events = _translate_chat_stream(chunks, request)
        self.assertEqual((chunks, request), before)
        expected = chat_completion_to_response(
            {**chat, "created": CREATED}, response_id=RESPONSE_ID, request=request
        )
        self.assertEqual(stream.response, expected)
        self.assertEqual(reduce_events(self, events), expected)
        sdk_response, snapshots = sdk_final_response(events)
        self.assertEqual(sdk_response.output_text, Response.model_validate(expected).output_text)
        self.assertEqual(sdk_response.status, expected["status"])
        self.assertEqual(
            [(item.type, item.id) for item in sdk_response.output],
            [(item["type"], item["id"]) for item in expected["output"]],
        )
        for index, item in enumerate(expected["output"]):
            if item["type"] == "function_call":
                self.assertEqual(snapshots.get(index, ""), item["arguments"])
            elif item["type"] == "message" and item["content"][0]["type"] == "output_text":
                self.assertEqual(snapshots[index], item["content"][0]["text"])


# ---------------------------------------------------------------------------
# Responses -> Chat
# ---------------------------------------------------------------------------


def _chat_stream(include_usage: bool = True) -> ResponsesToChatStream:
    """
    A L{ResponsesToChatStream} with fixed envelope values.
    """
    return ResponsesToChatStream(
        chunk_id="chatcmpl-1", created=42, model="m", include_usage=include_usage
    )


def _feed_all(stream: ResponsesToChatStream, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Feed every event, collecting the chunks.
    """
    chunks: list[dict[str, Any]] = []
    for event in events:
        chunks.extend(stream.feed(event))
    return chunks


_USAGE = {
    "input_tokens": 4,
    "input_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 0},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 10,
}


class ResponsesToChatStreamTests(SynchronousTestCase):
    """
    Tests for L{ResponsesToChatStream}.
    """

    def _final(
        self, output: list[dict[str, Any]], status: str = "completed", **extra: Any
    ) -> dict[str, Any]:
        """
        A final response with C{output}.
        """
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 42,
            "model": "m",
            "status": status,
            "output": output,
            "usage": _USAGE,
            **extra,
        }

    def test_roleChunkFirst(self) -> None:
        """
        C{response.created} gives the role chunk, once, with the envelope.
        """
        stream = _chat_stream()
        chunks = stream.feed({"type": "response.created", "response": {}})
        self.assertEqual(
            chunks,
            [
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 42,
                    "model": "m",
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                    "usage": None,
                }
            ],
        )
        self.assertEqual(stream.feed({"type": "response.in_progress", "response": {}}), [])
        self.assertFalse(stream.finished)

    def test_textAndFinish(self) -> None:
        """
        Text deltas become content chunks; C{completed} gives the finish
        chunk and the usage chunk.
        """
        stream = _chat_stream()
        chunks = _feed_all(
            stream,
            [
                {"type": "response.created", "response": {}},
                {
                    "type": "response.output_text.delta",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "Hi",
                },
                {"type": "response.completed", "response": self._final([])},
            ],
        )
        self.assertEqual(chunks[1]["choices"][0]["delta"], {"content": "Hi"})
        self.assertEqual(
            chunks[2]["choices"][0],
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"},
        )
        self.assertEqual(chunks[3]["choices"], [])
        self.assertEqual(
            chunks[3]["usage"],
            {
                "prompt_tokens": 4,
                "completion_tokens": 6,
                "total_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 1},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        )
        self.assertEqual(len(chunks), 4)
        self.assertTrue(stream.finished)
        self.assertEqual(stream.feed({"type": "response.output_text.delta", "delta": "late"}), [])

    def test_noUsageUnlessAsked(self) -> None:
        """
        Without C{include_usage} there is no usage chunk and no C{usage}
        key.
        """
        chunks = _feed_all(
            _chat_stream(False), [{"type": "response.completed", "response": self._final([])}]
        )
        self.assertEqual(len(chunks), 2)
        for chunk in chunks:
            self.assertNotIn("usage", chunk)

    def test_functionCalls(self) -> None:
        """
        Function call items become tool calls numbered from 0, and the
        finish reason is C{tool_calls}.
        """
        chunks = _feed_all(
            _chat_stream(False),
            [
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {"type": "message", "id": "msg", "content": []},
                },
                {
                    "type": "response.output_item.added",
                    "output_index": 1,
                    "item": {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "call_1",
                        "name": "f",
                        "arguments": "",
                    },
                },
                {
                    "type": "response.function_call_arguments.delta",
                    "output_index": 1,
                    "delta": "{}",
                },
                {
                    "type": "response.output_item.added",
                    "output_index": 2,
                    "item": {
                        "type": "function_call",
                        "id": "fc_2",
                        "call_id": "call_2",
                        "name": "g",
                        "arguments": "",
                    },
                },
                {"type": "response.completed", "response": self._final([])},
            ],
        )
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
        self.assertEqual(
            deltas[1:4],
            [
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                },
                {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "g", "arguments": ""},
                        }
                    ]
                },
            ],
        )
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    def test_incomplete(self) -> None:
        """
        C{response.incomplete} finishes with C{length} or
        C{content_filter}.
        """
        for reason, finish in (
            ("max_output_tokens", "length"),
            ("content_filter", "content_filter"),
        ):
            chunks = _feed_all(
                _chat_stream(False),
                [
                    {
                        "type": "response.incomplete",
                        "response": self._final(
                            [], "incomplete", incomplete_details={"reason": reason}
                        ),
                    }
                ],
            )
            self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], finish)

    def test_failed(self) -> None:
        """
        C{response.failed} gives one error object and ends the stream.
        """
        stream = _chat_stream()
        chunks = stream.feed(
            {
                "type": "response.failed",
                "response": self._final(
                    [], "failed", error={"code": "rate_limit_exceeded", "message": "slow down"}
                ),
            }
        )
        self.assertEqual(
            chunks,
            [
                {
                    "error": {
                        "message": "slow down",
                        "type": "server_error",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                }
            ],
        )
        self.assertTrue(stream.finished)
        self.assertEqual(
            stream.feed({"type": "response.completed", "response": self._final([])}), []
        )

    def test_errorEvent(self) -> None:
        """
        An C{error} event gives one error object and ends the stream.
        """
        stream = _chat_stream()
        chunks = stream.feed(
            {
                "type": "error",
                "code": "bad",
                "message": "nope",
                "param": "input",
                "sequence_number": 3,
            }
        )
        self.assertEqual(
            chunks,
            [
                {
                    "error": {
                        "message": "nope",
                        "type": "server_error",
                        "param": "input",
                        "code": "bad",
                    }
                }
            ],
        )
        self.assertTrue(stream.finished)

    def test_unknownEvents(self) -> None:
        """
        Events without a Chat equivalent give nothing.
        """
        stream = _chat_stream()
        for kind in (
            "response.web_search_call.searching",
            "response.content_part.added",
            "whatever",
        ):
            self.assertEqual(stream.feed({"type": kind, "output_index": 0}), [])

    def test_reasoning(self) -> None:
        """
        Reasoning deltas become C{reasoning_content}, separate parts joined
        by a blank line.
        """
        chunks = _feed_all(
            _chat_stream(False),
            [
                {
                    "type": "response.reasoning_summary_text.delta",
                    "output_index": 0,
                    "summary_index": 0,
                    "delta": "a",
                },
                {
                    "type": "response.reasoning_summary_text.delta",
                    "output_index": 0,
                    "summary_index": 0,
                    "delta": "b",
                },
                {
                    "type": "response.reasoning_summary_text.delta",
                    "output_index": 0,
                    "summary_index": 1,
                    "delta": "c",
                },
            ],
        )
        self.assertEqual(
            [chunk["choices"][0]["delta"] for chunk in chunks[1:]],
            [
                {"reasoning_content": "a"},
                {"reasoning_content": "b"},
                {"reasoning_content": "\n\nc"},
            ],
        )

    def test_sparseStream(self) -> None:
        """
        Items that only arrive whole (in C{output_item.done} or the final
        response) are still delivered.
        """
        message = {
            "type": "message",
            "id": "m",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
        }
        call = {
            "type": "function_call",
            "id": "fc",
            "call_id": "call_9",
            "name": "f",
            "arguments": "{}",
            "status": "completed",
        }
        chunks = _feed_all(
            _chat_stream(False),
            [
                {
                    "type": "response.output_text.delta",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "He",
                },
                {"type": "response.output_item.done", "output_index": 0, "item": message},
                {"type": "response.completed", "response": self._final([message, call])},
            ],
        )
        completion = reduce_chunks(self, chunks)
        self.assertEqual(completion["choices"][0]["message"]["content"], "Hello")
        self.assertEqual(
            completion["choices"][0]["message"]["tool_calls"],
            [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        )

    @settings(max_examples=100, deadline=None)
    @given(responses_objects(), st.booleans(), st.data())
    def test_matchesNonStreamed(
        self, resp: dict[str, Any], include_usage: bool, data: st.DataObject
    ) -> None:
        """
        The chunks for an event stream (possibly missing some deltas)
        reassemble, here and in the SDK's accumulator, into the completion
        L{responses_to_chat_completion} gives for the final response.
        """
        events = _events_for_response(data.draw, resp)
        stream = ResponsesToChatStream(
            chunk_id=f"chatcmpl-{resp['id']}",
            created=resp["created_at"],
            model=resp["model"],
            include_usage=include_usage,
        )
        chunks = _feed_all(stream, events)
        self.assertTrue(stream.finished)
        expected = _without_empty_text(responses_to_chat_completion(resp))
        if not include_usage:
            expected.pop("usage", None)
        self.assertEqual(reduce_chunks(self, chunks), expected)

        state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
        for chunk in chunks:
            state.handle_chunk(
                typing.cast(
                    ChatCompletionChunk, construct_type(type_=ChatCompletionChunk, value=chunk)
                )
            )
        # get_final_completion() refuses length/content_filter endings by
        # design, so read the accumulated snapshot.
        final = state.current_completion_snapshot
        message = expected["choices"][0]["message"]
        self.assertEqual(final.choices[0].message.content or None, message["content"])
        self.assertEqual(final.choices[0].finish_reason, expected["choices"][0]["finish_reason"])
        self.assertEqual(
            [
                (call.id, call.function.name, call.function.arguments)
                for call in final.choices[0].message.tool_calls or []
            ],
            [
                (call["id"], call["function"]["name"], call["function"]["arguments"])
                for call in message.get("tool_calls", [])
            ],
        )
        if include_usage and resp["usage"] is not None:
            assert final.usage is not None
            self.assertEqual(final.usage.total_tokens, resp["usage"]["total_tokens"])


class RoundTripTests(SynchronousTestCase):
    """
    Chat chunks → Responses events → Chat chunks.
    """

    @settings(max_examples=80, deadline=None)
    @given(chat_streams())
    def test_chatThroughResponses(
        self, stream_case: tuple[dict[str, Any], list[dict[str, Any]]]
    ) -> None:
        """
        A chat stream translated to Responses events and back reassembles
        into the original answer.
        """
        chat, chunks = stream_case
        _, events = _translate_chat_stream(chunks)
        back = ResponsesToChatStream(
            chunk_id="chatcmpl-x", created=chat["created"], model=chat["model"], include_usage=True
        )
        completion = reduce_chunks(self, _feed_all(back, events))
        self.assertEqual(completion_summary(completion), normalised_completion(chat))
