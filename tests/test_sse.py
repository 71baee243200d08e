# -*- test-case-name: tests.test_sse -*-
"""
Tests for L{llmproxy.sse}.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.sse import (
    DONE, KEEPALIVE, MAX_EVENT_BYTES, Event, SSEError, SSEFramer, SSEParser, encode_event,
    parse_event,
)

LINE_ENDS = ("\n", "\r\n", "\r")

# Text that fits on one SSE line.
_line_text = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
)


@st.composite
def _field(draw: Any) -> tuple[str, tuple[str, Any] | None]:
    """
    One field line (without its line end) and what it contributes:
    C{(name, value)}, or L{None} when the parser must ignore it.
    """
    kind = draw(st.sampled_from(["data", "data", "event", "id", "retry", "badretry",
                                 "comment", "unknown", "bare"]))
    value = draw(_line_text)
    if kind == "comment":
        return ":" + value, None
    if kind == "bare":
        # A field name alone: "data" with an empty value.
        return "data", ("data", "")
    if kind == "retry":
        number = draw(st.integers(min_value=0, max_value=10**9))
        return f"retry: {number}", ("retry", number)
    if kind == "badretry":
        return "retry: " + draw(st.sampled_from(["x1", "1.5", "-3", "\u00b2", ""])), None
    if kind == "unknown":
        return draw(st.sampled_from(["foo", "Data", "eventx"])) + ": " + value, None
    if draw(st.booleans()):
        return f"{kind}: {value}", (kind, value)
    # No space after the colon: one leading space of the value is still eaten.
    return f"{kind}:{value}", (kind, value[1:] if value.startswith(" ") else value)


@st.composite
def _event(draw: Any) -> tuple[bytes, Event | None]:
    """
    One raw event (lines, each with a random line end, and the blank line)
    and the event it must parse to.
    """
    fields = draw(st.lists(_field(), min_size=1, max_size=5))
    ends = [draw(st.sampled_from(LINE_ENDS)) for _ in fields]
    blank = draw(st.sampled_from(LINE_ENDS))
    if ends[-1] == "\r" and blank == "\n":
        # "\r" + "\n" would be one line end, not a line end and a blank line.
        blank = draw(st.sampled_from(["\r", "\r\n"]))
    text = "".join(line + end for (line, _), end in zip(fields, ends)) + blank
    data: list[str] = []
    values: dict[str, Any] = {}
    for _, contribution in fields:
        if contribution is None:
            continue
        name, value = contribution
        if name == "data":
            data.append(value)
        values[name] = value
    if not values:
        return text.encode("utf-8"), None
    expected = Event(
        "\n".join(data) if data else None, values.get("event"), values.get("id"),
        values.get("retry"),
    )
    return text.encode("utf-8"), expected


_streams = st.lists(_event(), min_size=1, max_size=6)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at each position in C{cuts} (in any order, repeats allowed).
    """
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def _frame(chunks: list[bytes], max_event_bytes: int = MAX_EVENT_BYTES) -> list[bytes]:
    """
    Raw events from feeding C{chunks}, the end-of-stream remainder included.
    """
    framer = SSEFramer(max_event_bytes)
    out = [raw for chunk in chunks for raw in framer.feed(chunk)]
    rest = framer.remainder()
    return out + ([rest] if rest else [])


def _parse(chunks: list[bytes]) -> list[Event]:
    parser = SSEParser()
    return [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()


class ChunkingPropertyTests(SynchronousTestCase):
    """
    Framing and parsing do not depend on where chunk boundaries fall.
    """

    @given(_streams, st.data())
    def test_raw_events_independent_of_chunking(self, stream: list[Any], data: Any) -> None:
        """
        Whatever the chunking, the framer yields exactly the raw events of
        the stream, each byte for byte, and they re-join to the input.
        """
        raw = [r for r, _ in stream]
        whole = b"".join(raw)
        cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=12))
        framed = _frame(_split(whole, cuts))
        self.assertEqual(framed, raw)
        self.assertEqual(b"".join(framed), whole)

    @given(_streams, st.data())
    def test_events_independent_of_chunking(self, stream: list[Any], data: Any) -> None:
        """
        Whatever the chunking, the parser yields the expected events:
        multi-line data joined with newlines, the last C{event:}/C{id:}/
        valid C{retry:}, comment-only events and unknown fields ignored.
        """
        whole = b"".join(r for r, _ in stream)
        expected = [e for _, e in stream if e is not None]
        cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=12))
        self.assertEqual(_parse(_split(whole, cuts)), expected)

    @settings(max_examples=30)
    @given(_streams)
    def test_byte_at_a_time(self, stream: list[Any]) -> None:
        """
        Feeding one byte at a time gives the same raw and parsed events.
        """
        whole = b"".join(r for r, _ in stream)
        chunks = [whole[i:i + 1] for i in range(len(whole))]
        self.assertEqual(_frame(chunks), [r for r, _ in stream])
        self.assertEqual(_parse(chunks), [e for _, e in stream if e is not None])

    def test_every_single_split(self) -> None:
        """
        A stream mixing every line end, cut in two at every position
        (including between each CR and LF), frames and parses the same.
        """
        raw = [b"data: a\r\r", b"data: b\r\n\r\n", b"data: c\n\r\n", b"data: d\r\n\r",
               b"data: e\n\n", b": only a comment\r\r", b"data: f\r\r\n", b"data: g\n\r"]
        whole = b"".join(raw)
        events = [d for d in "abcdefg"]
        for i in range(len(whole) + 1):
            chunks = [whole[:i], whole[i:]]
            self.assertEqual(_frame(chunks), raw, f"split at {i}")
            self.assertEqual([e.data for e in _parse(chunks)], events, f"split at {i}")


class FramerTests(SynchronousTestCase):
    """
    Tests for L{SSEFramer}.
    """

    def test_incremental(self) -> None:
        """
        An event is returned only once its blank line arrived.
        """
        framer = SSEFramer()
        self.assertEqual(framer.feed(b"data: a\n"), [])
        self.assertEqual(framer.feed(b"\ndata: b\n\ndata: c"), [b"data: a\n\n", b"data: b\n\n"])
        self.assertEqual(framer.feed(b"\n\n"), [b"data: c\n\n"])
        self.assertEqual(framer.remainder(), b"")

    def test_cr_cr_waits_for_lf(self) -> None:
        """
        C{"\\r\\r"} at the end of a chunk is not yet a complete event: the
        next byte may be the C{"\\n"} of a C{"\\r\\n"} blank line, which
        belongs to this event, not the next.
        """
        framer = SSEFramer()
        self.assertEqual(framer.feed(b"data: a\r\r"), [])
        self.assertEqual(framer.feed(b"\ndata: b\r\r\n"), [b"data: a\r\r\n", b"data: b\r\r\n"])

    def test_lf_cr_waits_for_lf(self) -> None:
        """
        C{"\\n\\r"} at the end of a chunk waits likewise.
        """
        framer = SSEFramer()
        self.assertEqual(framer.feed(b"data: a\n\r"), [])
        self.assertEqual(framer.feed(b"\n"), [b"data: a\n\r\n"])

    def test_cr_then_other_byte_completes(self) -> None:
        """
        A waiting C{"\\r\\r"} event is released by any byte but C{"\\n"}.
        """
        framer = SSEFramer()
        self.assertEqual(framer.feed(b"data: a\r\r"), [])
        self.assertEqual(framer.feed(b"d"), [b"data: a\r\r"])
        self.assertEqual(framer.remainder(), b"d")

    def test_crlf_is_one_line_end(self) -> None:
        """
        C{"\\r\\n"} after a line is a single line end, not a blank line.
        """
        framer = SSEFramer()
        self.assertEqual(framer.feed(b"data: a\r\ndata: b\r\n"), [])
        self.assertEqual(framer.feed(b"\r\n"), [b"data: a\r\ndata: b\r\n\r\n"])

    def test_remainder_once(self) -> None:
        """
        The unfinished tail is handed out once, then the framer is empty.
        """
        framer = SSEFramer()
        framer.feed(b"data: partial")
        self.assertEqual(framer.remainder(), b"data: partial")
        self.assertEqual(framer.remainder(), b"")
        self.assertEqual(framer.feed(b"data: x\n\n"), [b"data: x\n\n"])

    def test_default_cap(self) -> None:
        """
        The default cap is 262,144 bytes: an unfinished event of exactly
        that size is kept, one byte more raises L{SSEError}.
        """
        self.assertEqual(MAX_EVENT_BYTES, 262_144)
        framer = SSEFramer()
        head = b"data: "
        self.assertEqual(framer.feed(head + b"x" * (MAX_EVENT_BYTES - len(head))), [])
        self.assertRaises(SSEError, framer.feed, b"x")

    def test_cap_in_small_chunks(self) -> None:
        """
        An event that grows past the cap over many chunks raises.
        """
        framer = SSEFramer(max_event_bytes=100)
        framer.feed(b"data: ")
        with self.assertRaises(SSEError):
            for _ in range(20):
                framer.feed(b"0123456789")

    def test_cap_complete_event_in_one_chunk(self) -> None:
        """
        An over-cap event is refused even when it arrives complete in a
        single chunk, so the limit does not depend on chunking.
        """
        framer = SSEFramer(max_event_bytes=100)
        self.assertRaises(SSEError, framer.feed, b"data: " + b"x" * 100 + b"\n\n")

    def test_cap_counts_one_event(self) -> None:
        """
        The cap is per event: many small events in one chunk are fine.
        """
        framer = SSEFramer(max_event_bytes=100)
        events = framer.feed(b"data: 0123456789\n\n" * 50)
        self.assertEqual(len(events), 50)
        exact = b"data: " + b"x" * 92 + b"\n\n"
        self.assertEqual(framer.feed(exact), [exact])


class ParseEventTests(SynchronousTestCase):
    """
    Tests for L{parse_event} and L{Event}.
    """

    def test_fields(self) -> None:
        """
        C{data:} lines are joined with newlines; C{event:}, C{id:} and
        C{retry:} are read; one space after the colon is dropped.
        """
        event = parse_event(b"event: delta\nid: 7\nretry: 1500\ndata: one\ndata:  two\n\n")
        self.assertEqual(event, Event("one\n two", "delta", "7", 1500))

    def test_comments_only(self) -> None:
        """
        Comments and blank lines dispatch nothing.
        """
        self.assertIsNone(parse_event(b": keepalive\n\n"))
        self.assertIsNone(parse_event(KEEPALIVE))
        self.assertIsNone(parse_event(b"\n\n"))

    def test_event_without_data(self) -> None:
        """
        An event with no C{data:} line has L{None} data.
        """
        event = parse_event(b"event: ping\n\n")
        self.assertEqual(event, Event(None, "ping"))
        self.assertRaises(ValueError, event.json)

    def test_retry_digits_only(self) -> None:
        """
        A C{retry:} that is not ASCII digits is ignored, and does not raise
        (even for Unicode digits such as superscripts).
        """
        self.assertIsNone(parse_event("retry: \u00b2\n\n".encode()))
        self.assertIsNone(parse_event(b"retry: 1e3\n\n"))
        self.assertEqual(parse_event("retry: 5\ndata: x\n\n".encode()), Event("x", retry=5))

    def test_done(self) -> None:
        """
        C{data: [DONE]} is the terminator; other data is not.
        """
        done = parse_event(DONE)
        self.assertTrue(done.done)
        self.assertTrue(parse_event(b"data:[DONE]\r\n\r\n").done)
        self.assertFalse(parse_event(b'data: "[DONE]"\n\n').done)
        self.assertFalse(parse_event(b"data: [DONE] \n\n").done)

    def test_json(self) -> None:
        """
        L{Event.json} decodes the data, and raises L{ValueError} on non-JSON.
        """
        self.assertEqual(parse_event(b'data: {"a": [1, 2]}\n\n').json(), {"a": [1, 2]})
        self.assertRaises(ValueError, parse_event(b"data: {nope\n\n").json)

    def test_invalid_utf8(self) -> None:
        """
        Undecodable bytes do not raise.
        """
        event = parse_event(b"data: \xff\xfe\n\n")
        self.assertEqual(event.data, "\ufffd\ufffd")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


class EncodeEventTests(SynchronousTestCase):
    """
    Tests for L{encode_event}.
    """

    def test_compact_json(self) -> None:
        """
        Non-string data is compact JSON on one C{data:} line.
        """
        self.assertEqual(encode_event({"a": 1, "b": "é"}), 'data: {"a":1,"b":"é"}\n\n'.encode())
        self.assertEqual(encode_event({"x": 1}, "response.created"),
                         b'event: response.created\ndata: {"x":1}\n\n')

    @given(_json.filter(lambda v: not isinstance(v, str)),
           st.one_of(st.none(), _line_text.filter(bool)))
    def test_json_round_trip(self, value: Any, name: str | None) -> None:
        """
        Any JSON value but a string (strings are sent as they are) and any
        event name survive encode, frame and parse.
        """
        encoded = encode_event(value, name)
        self.assertEqual(SSEFramer().feed(encoded), [encoded])
        [event] = SSEParser().feed(encoded)
        self.assertEqual(event.json(), value)
        self.assertEqual(event.event, name)

    @given(st.text(st.characters(blacklist_categories=("Cs",))))
    def test_string_round_trip(self, text: str) -> None:
        """
        A string is sent as is; one with line breaks becomes several
        C{data:} lines, which the parser joins back with C{"\\n"}.
        """
        encoded = encode_event(text)
        [event] = SSEParser().feed(encoded)
        self.assertEqual(event.data, "\n".join(re.split(r"\r\n|\r|\n", text)))
        if "\r" not in text:
            self.assertEqual(event.data, text)

    def test_multiline_string(self) -> None:
        """
        A newline in string data cannot end the event early.
        """
        self.assertEqual(encode_event("a\nb"), b"data: a\ndata: b\n\n")
        self.assertEqual(parse_event(encode_event("a\n\nb")).data, "a\n\nb")

    def test_done_constant(self) -> None:
        """
        L{DONE} is the OpenAI terminator and L{KEEPALIVE} a comment.
        """
        self.assertEqual(DONE, b"data: [DONE]\n\n")
        self.assertEqual(encode_event("[DONE]"), DONE)
        self.assertEqual(SSEParser().feed(KEEPALIVE + DONE), [Event("[DONE]")])
        self.assertEqual(json.loads(parse_event(encode_event([1])).data), [1])
