"""
Tests for L{llmproxy.translate.aggregate}: a Responses event stream made
into one whole response.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.sse import encode_event
from llmproxy.testing import (
    function_call_events, function_call_response, responses_events, responses_object, sse_json,
)
from llmproxy.translate.aggregate import (
    NO_TERMINAL, ResponsesAggregator, StreamFailed, aggregate_responses,
)

pieces = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6)


def encode(events: Sequence[dict[str, Any]]) -> bytes:
    """
    Events as a Responses upstream sends them, numbered.
    """
    return b"".join(encode_event({**e, "sequence_number": i}, e["type"])
                    for i, e in enumerate(events))


def emptied(body: bytes) -> list[dict[str, Any]]:
    """
    The events of C{body}, the final response's C{output} emptied, as the
    ChatGPT backend sends it.
    """
    events = sse_json(body)
    final = events[-1]["response"]
    events[-1] = {**events[-1], "response": {**final, "output": []}}
    return events


def split(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    """
    C{body} cut at C{cuts} (positions, in any order, any number).
    """
    points = sorted({c % (len(body) + 1) for c in cuts})
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:])]


def fed(chunks: Sequence[bytes]) -> dict[str, Any]:
    aggregator = ResponsesAggregator()
    for chunk in chunks:
        aggregator.feed(chunk)
    return aggregator.result()


def failure(body: bytes) -> dict[str, Any]:
    try:
        aggregate_responses(body)
    except StreamFailed as e:
        return e.error
    raise AssertionError("the stream did not fail")


#: A reasoning item, a message and a function call, as the upstream's
#: final response lists them.
REASONING = {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA",
             "summary": [{"type": "summary_text", "text": "Think."}]}
MESSAGE = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "Calling.", "annotations": []}]}
CALL = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
        "arguments": '{"cmd":"ls"}', "status": "completed"}


def mixed(done_order: Sequence[int] = (0, 1, 2)) -> list[dict[str, Any]]:
    """
    A stream of L{REASONING}, L{MESSAGE} and L{CALL}, their C{done} events
    in C{done_order}; its final response lists no output.
    """
    items = [REASONING, MESSAGE, CALL]
    started = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-5",
               "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
    events += [{"type": "response.output_item.added", "output_index": i,
                "item": {**item, "status": "in_progress"}} for i, item in enumerate(items)]
    events += [
        {"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": 0,
         "summary_index": 0, "delta": "Think."},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1,
         "content_index": 0, "delta": "Calling."},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1",
         "output_index": 2, "delta": '{"cmd":"ls"}'},
    ]
    events += [{"type": "response.output_item.done", "output_index": i, "item": items[i]}
               for i in done_order]
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    events.append({"type": "response.completed",
                   "response": {**started, "status": "completed", "usage": usage}})
    return events


class WholeStreamTests(SynchronousTestCase):
    """
    A stream whose final event carries the whole response gives that
    response back, however the bytes were cut.
    """

    @given(pieces, st.lists(st.integers(min_value=0), max_size=12))
    def test_text(self, parts: list[str], cuts: list[int]) -> None:
        body = b"".join(responses_events("gpt-5", parts))
        self.assertEqual(fed(split(body, cuts)), responses_object("gpt-5", "".join(parts)))

    @given(pieces, st.lists(st.integers(min_value=0), max_size=12))
    def test_function_call(self, arguments: list[str], cuts: list[int]) -> None:
        body = b"".join(function_call_events("gpt-5", "f", arguments))
        self.assertEqual(fed(split(body, cuts)),
                         function_call_response("gpt-5", "f", "".join(arguments)))

    def test_incomplete(self) -> None:
        """
        C{response.incomplete} is an answer too (cut short), not a failure.
        """
        final = {**responses_object("m", "Hel"), "status": "incomplete",
                 "incomplete_details": {"reason": "max_output_tokens"}}
        body = encode([{"type": "response.incomplete", "response": final}])
        self.assertEqual(aggregate_responses(body), final)

    def test_after_the_end(self) -> None:
        """
        Nothing after the final event counts.
        """
        body = b"".join(responses_events("m", ["a"]))
        late = encode([{"type": "error", "message": "late"}])
        self.assertEqual(aggregate_responses(body + late), responses_object("m", "a"))


class EmptyOutputTests(SynchronousTestCase):
    """
    The ChatGPT backend's final response lists no output: it is rebuilt
    from the stream's items.
    """

    @given(pieces, st.lists(st.integers(min_value=0), max_size=12))
    def test_items(self, parts: list[str], cuts: list[int]) -> None:
        body = encode(emptied(b"".join(responses_events("gpt-5", parts))))
        self.assertEqual(fed(split(body, cuts)), responses_object("gpt-5", "".join(parts)))

    @given(pieces)
    def test_function_call(self, arguments: list[str]) -> None:
        body = encode(emptied(b"".join(function_call_events("gpt-5", "f", arguments))))
        self.assertEqual(aggregate_responses(body),
                         function_call_response("gpt-5", "f", "".join(arguments)))

    @given(st.permutations([0, 1, 2]))
    def test_order_and_kinds(self, order: list[int]) -> None:
        """
        Reasoning (with its encrypted content), messages and function
        calls survive, in C{output_index} order whatever order they were
        done in; the usage is the final event's.
        """
        response = aggregate_responses(encode(mixed(order)))
        self.assertEqual(response["output"], [REASONING, MESSAGE, CALL])
        self.assertEqual((response["id"], response["status"], response["usage"]["total_tokens"]),
                         ("resp_1", "completed", 12))

    @given(pieces, st.lists(st.integers(min_value=0), max_size=12))
    def test_text_from_deltas(self, parts: list[str], cuts: list[int]) -> None:
        """
        When no item carries the text, the deltas do.
        """
        events = [e for e in emptied(b"".join(responses_events("gpt-5", parts)))
                  if e["type"] not in ("response.output_item.done", "response.output_text.done",
                                       "response.content_part.done")]
        response = fed(split(encode(events), cuts))
        [item] = response["output"]
        self.assertEqual(item["content"], [{"type": "output_text", "text": "".join(parts),
                                            "annotations": []}])
        self.assertEqual((item["id"], item["status"]), ("msg_fake", "completed"))

    def test_pieces_only(self) -> None:
        """
        Deltas of items never announced still make items, of their kind.
        """
        events = [
            {"type": "response.reasoning_summary_text.delta", "output_index": 0,
             "item_id": "rs_1", "summary_index": 0, "delta": "Hm"},
            {"type": "response.output_text.delta", "output_index": 1, "item_id": "msg_1",
             "content_index": 0, "delta": "Hi"},
            {"type": "response.function_call_arguments.delta", "output_index": 2,
             "item_id": "fc_1", "delta": "{"},
            {"type": "response.function_call_arguments.done", "output_index": 2,
             "item_id": "fc_1", "arguments": "{}"},
            {"type": "response.completed", "response": {"id": "r", "output": []}},
        ]
        output = aggregate_responses(encode(events))["output"]
        self.assertEqual([i["type"] for i in output], ["reasoning", "message", "function_call"])
        self.assertEqual(output[0]["summary"], [{"type": "summary_text", "text": "Hm"}])
        self.assertEqual(output[1]["content"], [{"type": "output_text", "text": "Hi"}])
        self.assertEqual(output[2]["arguments"], "{}")

    def test_no_output_index(self) -> None:
        """
        Events without C{output_index} (as Codex's own fixtures send them)
        are placed by their item id, else in arrival order.
        """
        events = [
            {"type": "response.output_item.added", "item": {**MESSAGE, "content": []}},
            {"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Calling."},
            {"type": "response.output_item.done", "item": CALL},
            {"type": "response.completed", "response": {"id": "r"}},
        ]
        output = aggregate_responses(encode(events))["output"]
        self.assertEqual(output, [{**MESSAGE, "content": [
            {"type": "output_text", "text": "Calling."}]}, CALL])


class FailureTests(SynchronousTestCase):
    """
    A stream that ends in no answer is a L{StreamFailed} with the
    upstream's error object.
    """

    def test_response_failed(self) -> None:
        error = {"code": "context_length_exceeded", "message": "Too long."}
        body = b"".join(responses_events("m", ["a"])[:3]) + encode(
            [{"type": "response.failed", "response": {"id": "r", "status": "failed",
                                                      "error": error}}])
        self.assertEqual(failure(body), {**error, "type": None, "param": None})

    def test_bare_error(self) -> None:
        """
        A bare C{error} event, flat or nested: its C{type} is the event's,
        not the error's.
        """
        flat = encode([{"type": "error", "code": "rate_limit_exceeded",
                        "message": "Slow down. Please try again in 2s.", "param": None}])
        self.assertEqual(failure(flat), {"code": "rate_limit_exceeded", "param": None,
                                         "message": "Slow down. Please try again in 2s.",
                                         "type": None})
        nested = encode([{"type": "error", "error": {
            "type": "invalid_request_error", "code": "bad", "message": "No.",
            "resets_at": 5}}])
        self.assertEqual(failure(nested), {"type": "invalid_request_error", "code": "bad",
                                           "message": "No.", "param": None, "resets_at": 5})

    def test_chat_shaped_error(self) -> None:
        body = b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n'
        self.assertEqual(failure(body)["message"], "boom")

    @given(st.integers(min_value=0, max_value=8))
    def test_no_terminal(self, keep: int) -> None:
        """
        A stream cut anywhere before its final event, empty included, is
        a failure without a code.
        """
        body = b"".join(responses_events("m", ["a", "b"])[:keep])
        self.assertEqual(failure(body), {"message": NO_TERMINAL, "type": None,
                                         "code": None, "param": None})

    def test_failed_without_error(self) -> None:
        body = encode([{"type": "response.failed", "response": {"id": "r"}}])
        self.assertEqual(failure(body)["message"], "The upstream response failed.")

    def test_not_json(self) -> None:
        """
        Events that are not JSON objects are skipped, not fatal.
        """
        body = b"data: nope\n\ndata: [1]\n\n: comment\n\n" + b"".join(
            responses_events("m", ["a"])) + b"data: [DONE]\n\n"
        self.assertEqual(aggregate_responses(body), responses_object("m", "a"))
        self.assertEqual(json.dumps(failure(b"data: nope\n\n")["message"]),
                         json.dumps(NO_TERMINAL))
