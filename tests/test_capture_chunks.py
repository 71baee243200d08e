"""
A secret a stream splits between chunks: whole in one chunk before
redaction, the stream's bytes unchanged (pure, and through the proxy).
"""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.capture.chunks import ChunkCarry, dangling
from llmproxy.capture.entries import Record, render
from llmproxy.capture.redact import REDACTED, Redactor
from llmproxy.testing import Stream, chat_request, openai_config
from tests.test_capture_proxy import CapturedProxy, _result

SECRET = b"sk-split-secret-0123456789"
OTHER = b"pk-other-key-abcdef"


class DanglingTests(SynchronousTestCase):
    def test_dangling(self) -> None:
        self.assertEqual(dangling(b"xx sk-sp", [SECRET]), 5)
        self.assertEqual(dangling(b"xx s", [SECRET]), 1)
        self.assertEqual(dangling(b"xx", [SECRET]), 0)
        self.assertEqual(dangling(SECRET, [SECRET]), 0)  # whole: redaction sees it
        self.assertEqual(dangling(b"sk-split-secret-012345678", [SECRET]), len(SECRET) - 1)
        self.assertEqual(dangling(b"a pk-o", [SECRET, OTHER]), 4)
        self.assertEqual(dangling(b"", [SECRET]), 0)

    @given(st.binary(max_size=30), st.binary(max_size=30),
           st.lists(st.integers(min_value=0, max_value=100), max_size=10))
    def test_split_anywhere(self, before: bytes, after: bytes, cuts: list[int]) -> None:
        """
        However the stream is cut, every chunk written is free of the
        secret, and the chunks, unredacted, join to the stream.
        """
        stream = before + SECRET + after + OTHER
        points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
        out: list[Record] = []
        carry = ChunkCarry(out.append, [SECRET, OTHER])
        for a, b in zip(points, points[1:]):
            carry.add(Record("stream_chunk", 0.0, "u", "proxy", body=stream[a:b]))
        carry.flush()
        self.assertEqual(b"".join(r.body or b"" for r in out), stream)
        redactor = Redactor([SECRET.decode(), OTHER.decode()])
        written = b"".join(redactor.data(r.body or b"") for r in out)
        self.assertNotIn(SECRET, written)
        self.assertNotIn(OTHER, written)
        # Every secret became one marker (markers the stream already had stay).
        self.assertEqual(written.count(REDACTED.encode()),
                         stream.count(REDACTED.encode()) + stream.count(SECRET)
                         + stream.count(OTHER))
        for record in out:
            record.redactor = redactor
            self.assertNotIn(SECRET, render(record))


class SplitThroughProxyTests(SynchronousTestCase):
    def test_upstream_splits_its_key(self) -> None:
        """
        An upstream stream echoing the key across two chunks: the file
        never holds the key, on either side, and the client's chunks still
        join to what it got.
        """
        path = os.path.join(self.mktemp(), "cap.jsonl")
        key = SECRET.decode()
        proxy = CapturedProxy(lambda upstream: openai_config(
            upstream, keys=(key,), capture={"file": path}))
        self.addCleanup(proxy.service.stopService)
        first = ('data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
                 '"choices":[{"index":0,"delta":{"content":"' + key[:9]).encode()
        second = (key[9:] + '"},"finish_reason":null}]}\n\ndata: [DONE]\n\n').encode()
        proxy.fake.script.append(Stream([first, second], delay=1.0))
        d = proxy.request("POST", "/v1/chat/completions", chat_request(stream=True))
        for _ in range(3):
            proxy.advance(1.0)
        answer = _result(d)
        raw = proxy.raw()
        self.assertNotIn(SECRET, raw)
        chunks = [e for e in proxy.entries()[1:] if e["direction"] == "stream_chunk"]
        got = "".join(e["payload"] for e in chunks if e["destination"] == "proxy")
        self.assertEqual(got.encode(), (first + second).replace(SECRET, REDACTED.encode()))
        sent = "".join(e["payload"] for e in chunks if e["destination"] == "client")
        self.assertEqual(sent.encode(), answer.content.replace(SECRET, REDACTED.encode()))
        self.assertEqual(json.loads(raw.splitlines()[0])["direction"], "header")
