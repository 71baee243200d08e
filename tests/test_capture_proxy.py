"""
Wire capture through the whole proxy, in memory (L{MemoryProxy}): every
direction of a request in order, failover attempts with their outcomes,
streams that end and streams that break, secrets absent from the file's
bytes, filters, and capture off writing nothing and installing nothing.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from typing import Any, Callable, Mapping

from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.openai import OpenAIBackend
from llmproxy.capture.backend import CapturingBackend
from llmproxy.capture.request import CapturingRequest
from llmproxy.config import ApiKey
from llmproxy.frontends.site import ProxyRequest
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunks, chat_request, config_data, openai_config,
)
from tests.harness import Answer, MemoryProxy
from tests.test_capture_writer import MemorySink

PROXY_KEY = "pk-proxy-secret-1234"
UPSTREAM_KEY = "sk-upstream-secret-5678"
OTHER_KEY = "sk-other-secret-9999"
DOWN = Reply(500, {"error": {"message": "boom", "type": "server_error", "param": None,
                             "code": None}})


class CapturedProxy(MemoryProxy):
    """
    A L{MemoryProxy} whose backends are capture's wrappers.
    """

    def __init__(self, make_config: Callable[[str], Mapping[str, Any]],
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(make_config, environ)
        for backend in self.service.app.runtime.upstreams.backends.values():
            inner = getattr(backend, "inner", None)
            if isinstance(inner, OpenAIBackend):
                inner.agent = self._upstream  # type: ignore[assignment]

    def entries(self) -> list[dict[str, Any]]:
        """
        The file's entries, once the writer wrote everything.
        """
        capture = self.service.capture
        assert capture is not None
        capture.writer.drain()
        with open(capture.recorder.config.file, "rb") as f:
            return [json.loads(line) for line in f]

    def raw(self) -> bytes:
        self.entries()
        assert self.service.capture is not None
        with open(self.service.capture.recorder.config.file, "rb") as f:
            return f.read()


def _post(proxy: MemoryProxy, body: Any, path: str = "/v1/chat/completions",
          headers: Mapping[str, str] | None = None) -> Answer:
    d = proxy.request("POST", path, body, {"authorization": f"Bearer {PROXY_KEY}",
                                           **(headers or {})})
    proxy.pump()
    return _result(d)


def _result(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the request did not finish"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class CaptureTests(SynchronousTestCase):
    def proxy(self, capture: Mapping[str, Any] | None = None, **extra: Any) -> CapturedProxy:
        self.path = os.path.join(self.mktemp(), "cap.jsonl")
        section = {"file": self.path, **(capture or {})}
        proxy = CapturedProxy(lambda upstream: openai_config(
            upstream, keys=(UPSTREAM_KEY,), proxy_keys=[PROXY_KEY], capture=section, **extra))
        self.addCleanup(proxy.service.stopService)
        return proxy

    def directions(self, entries: list[dict[str, Any]]) -> list[str]:
        return [e["direction"] for e in entries[1:]]

    def test_chat_whole(self) -> None:
        """
        A whole chat answer: the header entry, then client request, upstream
        request, upstream answer, the attempt's outcome, the client's
        answer; C{seq} strictly increasing; one request id.
        """
        proxy = self.proxy()
        answer = _post(proxy, chat_request("hello there"))
        self.assertEqual(answer.status, 200)
        entries = proxy.entries()
        self.assertEqual(entries[0]["direction"], "header")
        self.assertEqual(entries[0]["version"], 1)
        self.assertEqual(self.directions(entries), [
            "inbound_request", "outbound_request", "inbound_response", "attempt",
            "outbound_response"])
        seqs = [e["seq"] for e in entries[1:]]
        self.assertEqual(seqs, sorted(set(seqs)))
        self.assertEqual(len({e["request_id"] for e in entries[1:]}), 1)
        inbound, out, back, attempt, reply = entries[1:]
        self.assertEqual(inbound["payload"]["messages"][-1]["content"], "hello there")
        self.assertEqual((inbound["source"], inbound["destination"]), ("client", "proxy"))
        self.assertEqual(out["backend"], "openai")
        self.assertEqual(out["key_name"], "openai#1")
        self.assertEqual(out["attempt"], 1)
        self.assertEqual(back["status"], 200)
        self.assertEqual(attempt["metadata"]["outcome"], "ok")
        self.assertEqual(reply["payload"], answer.json())
        self.assertEqual(reply["content_length"], len(answer.content))

    def test_secrets_absent(self) -> None:
        """
        The proxy key, the upstream key and the inbound bearer appear
        nowhere in the file, even inside payloads; the structure is kept.
        """
        proxy = self.proxy()
        _post(proxy, chat_request(f"my key is {UPSTREAM_KEY} and {PROXY_KEY}"))
        raw = proxy.raw()
        for secret in (PROXY_KEY, UPSTREAM_KEY):
            self.assertNotIn(secret.encode(), raw)
        inbound = proxy.entries()[1]
        self.assertEqual(inbound["metadata"]["headers"]["authorization"], "[REDACTED]")
        self.assertEqual(inbound["payload"]["messages"][-1]["content"],
                         "my key is [REDACTED] and [REDACTED]")

    def test_file_private(self) -> None:
        proxy = self.proxy()
        _post(proxy, chat_request())
        proxy.entries()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_stream(self) -> None:
        """
        A stream: start, chunks and end on both sides, the client's chunks
        making the bytes the client got.
        """
        proxy = self.proxy()
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["he", "llo"])))
        answer = _post(proxy, chat_request(stream=True))
        entries = proxy.entries()
        directions = self.directions(entries)
        self.assertEqual(directions[:3], ["inbound_request", "outbound_request", "stream_start"])
        self.assertEqual(directions[-2:], ["attempt", "stream_end"])
        client = [e for e in entries[1:] if e["destination"] == "client"]
        self.assertEqual(client[0]["direction"], "stream_start")
        self.assertEqual(client[-1]["direction"], "stream_end")
        self.assertTrue(client[-1]["metadata"]["completed"])
        sent = "".join(e["payload"] for e in client if e["direction"] == "stream_chunk")
        self.assertEqual(sent.encode(), answer.content)
        upstream = [e for e in entries[1:] if e["source"] != "client"
                    and e["destination"] == "proxy" and e["direction"].startswith("stream")]
        self.assertEqual(upstream[-1]["direction"], "stream_end")
        self.assertTrue(upstream[-1]["metadata"]["completed"])

    def test_failover(self) -> None:
        """
        Two attempts: each with its request, answer and outcome, numbered.
        """
        proxy = self.proxy(failover_routes={
            "gpt-x": {"policy": "m", "elements": ["openai:m1", "openai:m2"]}},
            failure_handling={"retries_per_target": 0})
        proxy.fake.script.extend([DOWN])
        answer = _post(proxy, chat_request(model="gpt-x"))
        self.assertEqual(answer.status, 200)
        entries = proxy.entries()
        attempts = [e for e in entries if e["direction"] == "attempt"]
        self.assertEqual([a["attempt"] for a in attempts], [1, 2])
        self.assertEqual(attempts[0]["status"], 500)
        self.assertNotEqual(attempts[0]["metadata"]["outcome"], "ok")
        self.assertEqual(attempts[1]["metadata"]["outcome"], "ok")
        sent = [e["attempt"] for e in entries if e["direction"] == "outbound_request"]
        self.assertEqual(sent, [1, 2])

    def test_mid_stream_failure(self) -> None:
        """
        An upstream stream cut after its first chunks: its end says it did
        not complete, and the attempt says it broke.
        """
        proxy = self.proxy()
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["par", "tial"])[:2], end="drop"))
        _post(proxy, chat_request(stream=True))
        entries = proxy.entries()
        ends = [e for e in entries if e["direction"] == "stream_end"
                and e["destination"] == "proxy"]
        self.assertEqual(len(ends), 1)
        self.assertFalse(ends[0]["metadata"]["completed"])
        self.assertIn("error", ends[0]["metadata"])
        attempts = [e for e in entries if e["direction"] == "attempt"]
        self.assertEqual(attempts[-1]["metadata"]["outcome"], "broken")

    def test_responses(self) -> None:
        proxy = self.proxy()
        answer = _post(proxy, {"model": "gpt-4o", "input": "hi"}, path="/v1/responses")
        self.assertEqual(answer.status, 200)
        entries = proxy.entries()
        self.assertEqual(self.directions(entries)[0], "inbound_request")
        self.assertEqual(entries[1]["metadata"]["path"], "/v1/responses")
        self.assertEqual(entries[-1]["payload"], answer.json())

    def test_responses_stream(self) -> None:
        proxy = self.proxy()
        answer = _post(proxy, {"model": "gpt-4o", "input": "hi", "stream": True},
                       path="/v1/responses")
        entries = proxy.entries()
        client = [e for e in entries[1:] if e["destination"] == "client"]
        sent = "".join(e["payload"] for e in client if e["direction"] == "stream_chunk")
        self.assertEqual(sent.encode(), answer.content)

    def test_headers_only(self) -> None:
        proxy = self.proxy({"bodies": "headers-only"})
        _post(proxy, chat_request("not in the file"))
        raw = proxy.raw()
        self.assertNotIn(b"not in the file", raw)
        self.assertTrue(all(e.get("payload") is None for e in proxy.entries()[1:]))

    def test_sessions_filter(self) -> None:
        proxy = self.proxy({"sessions": ["wanted"]})
        _post(proxy, chat_request("other"), headers={"x-session-id": "other"})
        _post(proxy, chat_request("mine"), headers={"x-session-id": "wanted"})
        entries = proxy.entries()[1:]
        self.assertEqual({e["session_id"] for e in entries}, {"wanted"})
        self.assertEqual(entries[0]["payload"]["messages"][-1]["content"], "mine")

    def test_backends_filter(self) -> None:
        """
        Only the requests that reached a named backend are captured, their
        client side included.
        """
        self.path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: config_data(
            {"a": backend_data(upstream, "sk-a"), "b": backend_data(upstream, "sk-b")},
            capture={"file": self.path, "backends": ["b"]}))
        self.addCleanup(proxy.service.stopService)
        proxy.request("POST", "/v1/chat/completions", chat_request(model="a:gpt-4o"))
        proxy.request("POST", "/v1/chat/completions", chat_request(model="b:gpt-4o"))
        entries = proxy.entries()[1:]
        self.assertEqual(entries[0]["direction"], "inbound_request")
        self.assertEqual(entries[0]["model"], "b:gpt-4o")
        self.assertEqual({e["backend"] for e in entries if e["backend"]}, {"b"})
        self.assertEqual(len({e["request_id"] for e in entries}), 1)

    def test_capture_off(self) -> None:
        """
        Without a capture file: no writer, no wrapper, the plain request
        class.
        """
        proxy = MemoryProxy(lambda upstream: openai_config(upstream, metrics=False))
        self.assertIsNone(proxy.service.capture)
        backends = proxy.service.app.runtime.upstreams.backends.values()
        self.assertFalse(any(isinstance(b, CapturingBackend) for b in backends))
        self.assertIs(proxy.service.app.request_factory, ProxyRequest)
        self.assertFalse(proxy.service.app.events.observed)

    def test_capture_on_installs(self) -> None:
        proxy = self.proxy()
        self.assertTrue(issubclass(proxy.service.app.request_factory, CapturingRequest))


class CaptureEdgeTests(SynchronousTestCase):
    def test_inbound_bearer_redacted(self) -> None:
        """
        A bearer the configuration does not know (auth off) is redacted
        too, in headers and payloads.
        """
        path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: openai_config(upstream, capture={"file": path}))
        self.addCleanup(proxy.service.stopService)
        bearer = "client-token-abcdef123456"
        proxy.request("POST", "/v1/chat/completions", chat_request(f"echo {bearer}"),
                      {"authorization": f"Bearer {bearer}"})
        self.assertNotIn(bearer.encode(), proxy.raw())

    def test_stalled_disk_never_stalls_requests(self) -> None:
        """
        With the disk stalled, requests are answered as before; what does
        not fit the buffer is dropped and counted.
        """
        path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: openai_config(
            upstream, capture={"file": path, "buffer_bytes": 4096}))
        capture = proxy.service.capture
        assert capture is not None
        sink = MemorySink()
        sink.gate.clear()
        self.addCleanup(sink.gate.set)
        capture.writer.sink = sink
        capture.writer.join_timeout = 0.1
        for i in range(50):
            answer = _result(proxy.request("POST", "/v1/chat/completions",
                                           chat_request(f"n{i}")))
            self.assertEqual(answer.status, 200)
        self.assertGreater(capture.writer.dropped_total, 100)
        sink.gate.set()
        capture.writer.drain()
        _result(proxy.request("POST", "/v1/chat/completions", chat_request("after")))
        capture.writer.drain()
        notes = [e for e in sink.entries() if e["direction"] == "dropped"]
        self.assertEqual(sum(n["metadata"]["dropped"] for n in notes),
                         capture.writer.dropped_total)

    def test_reload_redacts_new_keys(self) -> None:
        """
        After a reload, the new configuration's keys are redacted too.
        """
        path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: openai_config(
            upstream, keys=(UPSTREAM_KEY,), capture={"file": path}))
        self.addCleanup(proxy.service.stopService)
        capture = proxy.service.capture
        assert capture is not None
        first = capture.recorder.redactor()
        self.assertIs(capture.recorder.redactor([UPSTREAM_KEY]), first)
        config = proxy.service.config
        backend = replace(config.backends["openai"], keys=(ApiKey("openai#1", OTHER_KEY),))
        proxy.service.use_config(replace(config, backends={"openai": backend}))
        for backend in proxy.service.app.runtime.upstreams.backends.values():
            inner = getattr(backend, "inner", None)
            if isinstance(inner, OpenAIBackend):
                inner.agent = proxy._upstream  # type: ignore[assignment]
        proxy.request("POST", "/v1/chat/completions", chat_request(f"say {OTHER_KEY}"))
        self.assertNotIn(OTHER_KEY.encode(), proxy.raw())
        self.assertIn(OTHER_KEY, capture.recorder.redactor().secrets)

    def test_models_filter(self) -> None:
        """
        Only the requests for a named model (the client's, or an
        attempt's) are captured.
        """
        path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: openai_config(
            upstream, capture={"file": path, "models": ["wanted", "upstream-m"]},
            model_aliases=[{"pattern": "^alias$", "replacement": "upstream-m"}]))
        self.addCleanup(proxy.service.stopService)
        for model in ("other", "wanted", "alias"):
            proxy.request("POST", "/v1/chat/completions", chat_request(model=model))
        entries = proxy.entries()[1:]
        requests = {e["request_id"]: e["model"] for e in entries
                    if e["direction"] == "inbound_request"}
        self.assertEqual(sorted(requests.values()), ["alias", "wanted"])
        self.assertEqual(len({e["request_id"] for e in entries}), 2)
