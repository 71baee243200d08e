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

    def test_escaped_secret(self) -> None:
        """
        A secret the body writes with JSON escapes is not in its bytes but
        in its strings: the line is redacted string by string.
        """
        escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
        body = ('{"messages": [{"content": "key ' + escaped + '"}]}').encode()
        line = render(Record("inbound_request", 0.0, "a", "b", body=body,
                             redactor=Redactor([SECRET])))
        self.assertNotIn(SECRET.encode(), line)
        self.assertEqual(json.loads(line)["payload"]["messages"][0]["content"],
                         f"key {REDACTED}")

    def test_one_line(self) -> None:
        """
        A pretty-printed JSON body is written on one line, the same JSON.
        """
        value = {"a": [1, 2, {"b": "x\ny"}]}
        body = json.dumps(value, indent=2).encode()
        line = render(Record("inbound_response", 0.0, "a", "b", body=body))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(json.loads(line)["payload"], value)

    def test_escaped_secret_in_stream(self) -> None:
        """
        The same in an SSE chunk: the event's JSON is written again,
        redacted.
        """
        escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
        body = ('data: {"delta": "key ' + escaped + '"}\n\n').encode()
        line = render(Record("stream_chunk", 0.0, "a", "b", body=body,
                             redactor=Redactor([SECRET])))
        text = json.loads(line)["payload"]
        self.assertEqual(json.loads(text.split("\n")[0][5:]), {"delta": f"key {REDACTED}"})

    @given(_json)
    def test_no_secret_in_any_spelling(self, value: Any) -> None:
        """
        Whatever JSON escapes a body uses, a reader of the line never gets
        the secret back.
        """
        redactor = Redactor([SECRET])
        escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
        spelled = json.dumps(value).replace(SECRET, escaped)
        for body in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode(),
                     spelled.encode(), b"data: " + spelled.encode() + b"\n\n"):
            line = render(Record("inbound_request", 0.0, "a", "b", body=body,
                                 redactor=redactor))
            entry = json.loads(line)
            self.assertNotIn(SECRET, json.dumps(entry, ensure_ascii=False))
            payload_value = entry["payload"]
            if isinstance(payload_value, str) and payload_value.startswith("data: "):
                inner = json.loads(payload_value.split("\n")[0][6:])
                self.assertNotIn(SECRET, json.dumps(inner, ensure_ascii=False))
