"""
Redaction (pure): secrets gone from strings, keys, bytes and headers, the
JSON structure kept.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.capture.entries import Record, payload, render
from llmproxy.capture.redact import REDACTED, Redactor

SECRET = "sk-live-0123456789abcdef"

_text = st.text(alphabet=st.sampled_from("ab -_:" + SECRET[:6]), max_size=8).map(
    lambda t: t.replace("[", "")) | st.just(SECRET) | st.builds(
    lambda a, b: a + SECRET + b, st.text(max_size=3), st.text(max_size=3))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


def _shape(value: Any) -> Any:
    """
    The structure of a JSON value: its containers and sizes, strings
    blanked.
    """
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return sorted((_shape(v) for v in value.values()), key=repr)
    return "s" if isinstance(value, str) else value


class RedactTests(SynchronousTestCase):
    @given(_json)
    def test_secret_gone_structure_kept(self, value: Any) -> None:
        redactor = Redactor([SECRET])
        out = redactor.value(value)
        self.assertNotIn(SECRET, json.dumps(out, ensure_ascii=False))
        self.assertEqual(_shape(out), _shape(value))
        self.assertEqual(redactor.value(out), out)  # nothing left to redact

    @given(_json)
    def test_payload_bytes(self, value: Any) -> None:
        raw = json.dumps(value, ensure_ascii=False).encode()
        out = payload(raw, Redactor([SECRET]))
        self.assertNotIn(SECRET, json.dumps(out, ensure_ascii=False))
        self.assertEqual(_shape(out), _shape(value))

    @given(st.binary(max_size=20), st.binary(max_size=20))
    def test_binary(self, a: bytes, b: bytes) -> None:
        raw = b"\xff" + a + SECRET.encode() + b
        out = payload(raw, Redactor([SECRET]))
        self.assertIn("$base64", json.dumps(out))
        line = render(Record("stream_chunk", 0.0, "a", "b", body=raw,
                             redactor=Redactor([SECRET])))
        self.assertNotIn(SECRET.encode(), line)

    def test_text_payload(self) -> None:
        out = payload(f"data: {{\"k\": \"{SECRET}\"}}\n\n".encode(), Redactor([SECRET]))
        self.assertEqual(out, f'data: {{"k": "{REDACTED}"}}\n\n')

    def test_longest_first(self) -> None:
        self.assertEqual(Redactor(["abc", "abcdef"]).text("xabcdefx"), f"x{REDACTED}x")

    def test_headers(self) -> None:
        redactor = Redactor([SECRET])
        headers = redactor.headers([
            (b"Authorization", b"Bearer anything"), (b"X-Api-Key", b"k"),
            (b"X-Other", f"has {SECRET}".encode()), (b"X-Other", b"two"),
        ])
        self.assertEqual(headers, {"authorization": REDACTED, "x-api-key": REDACTED,
                                   "x-other": [f"has {REDACTED}", "two"]})

    def test_colliding_keys_kept(self) -> None:
        out = Redactor(["s1", "s2"]).value({"s1": 1, "s2": 2})
        self.assertEqual(sorted(out.values()), [1, 2])
