# -*- test-case-name: tests.test_translate_chat_to_responses -*-
"""
Tests for L{llmproxy.translate.chat_to_responses}.

Synthesised streams are checked three ways: against the non-streamed
translation of the same answer, through a reducer written here, and
through the openai SDK's own stream accumulator (C{ResponseStreamState}).

The stream builders here (L{cut_text}, L{chat_streams},
L{translate_chat_stream}) are shared with
L{tests.test_translate_responses_to_chat}.
"""

from __future__ import annotations

import copy
import typing
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseFailedEvent, ResponseStreamEvent
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.translate.chat_to_responses import ChatToResponsesStream
from llmproxy.translate.responses import chat_completion_to_response
from tests.test_translate_responses import chat_completions, responses_requests

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


def cut_text(draw: Callable[[st.SearchStrategy[Any]], Any], text: str) -> list[str]:
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
    for piece in cut_text(draw, message.get("reasoning_content") or ""):
        chunks.append(_chunk(chat, {"reasoning_content": piece}))
    for piece in cut_text(draw, message.get("content") or ""):
        chunks.append(_chunk(chat, {"content": piece}))
    for piece in cut_text(draw, message.get("refusal") or ""):
        chunks.append(_chunk(chat, {"refusal": piece}))
    for index, call in enumerate(calls):
        arguments = cut_text(draw, call["function"]["arguments"]) or [""]
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


def translate_chat_stream(
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
        stream, events = translate_chat_stream(
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
        _, events = translate_chat_stream(
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
        _, events = translate_chat_stream(
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
        _, events = translate_chat_stream(
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
        _, events = translate_chat_stream(
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
        stream, events = translate_chat_stream([_call_chunk(0, name="f", arguments="{}")])
        self.assertEqual(stream.response["output"][0]["call_id"], "call_stream1_0")
        reduce_events(self, events)

    def test_length(self) -> None:
        """
        C{finish_reason: length} ends with C{response.incomplete}.
        """
        stream, events = translate_chat_stream(
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
        _, events = translate_chat_stream(
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
        _, events = translate_chat_stream([_text_chunk("x")], request)
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
        stream, events = translate_chat_stream([_text_chunk("x")])
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
        _, events = translate_chat_stream(
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
        stream, events = translate_chat_stream(chunks, request)
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
