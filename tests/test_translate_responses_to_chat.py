# -*- test-case-name: tests.test_translate_responses_to_chat -*-
"""
Tests for L{llmproxy.translate.responses_to_chat}.

Translated streams are checked against the non-streamed translation of the
same answer, through a reducer written here, and through the openai SDK's
own stream accumulator (C{ChatCompletionStreamState}); a round trip goes
through L{llmproxy.translate.chat_to_responses} too.
"""

from __future__ import annotations

import copy
import typing
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.translate.responses import responses_to_chat_completion
from llmproxy.translate.responses_to_chat import ResponsesToChatStream
from tests.test_translate_chat_to_responses import chat_streams, cut_text, translate_chat_stream
from tests.test_translate_responses import (
    completion_summary,
    normalised_completion,
    responses_objects,
)

# ---------------------------------------------------------------------------
# Building streams
# ---------------------------------------------------------------------------


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
        pieces = cut_text(draw, text) if draw is not None else ([text] if text else [])
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

    @settings(max_examples=80)
    @given(chat_streams())
    def test_chatThroughResponses(
        self, stream_case: tuple[dict[str, Any], list[dict[str, Any]]]
    ) -> None:
        """
        A chat stream translated to Responses events and back reassembles
        into the original answer.
        """
        chat, chunks = stream_case
        _, events = translate_chat_stream(chunks)
        back = ResponsesToChatStream(
            chunk_id="chatcmpl-x", created=chat["created"], model=chat["model"], include_usage=True
        )
        completion = reduce_chunks(self, _feed_all(back, events))
        self.assertEqual(completion_summary(completion), normalised_completion(chat))
