# -*- test-case-name: tests.test_capture_replay -*-
"""
One captured request, replayed through llmproxy in memory: its upstream
answers served by a L{ReplayUpstream}, a configuration rebuilt from what
the capture shows (the backends tried, by name and dialect; the route from
the client's model to the attempts' targets), the client's request sent
again.  L{replay_captured} gives the client-visible result the capture
holds and the one the replay got, to compare; the tests C{to-test} writes
are one call of it.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import Site

from llmproxy.backends import REGISTRY
from llmproxy.backends.base import IUpstreamReactor
from llmproxy.backends.openai import BytesProducer, OpenAIBackend
from llmproxy.capture.entries import (
    INBOUND_REQUEST, OUTBOUND_REQUEST, OUTBOUND_RESPONSE, STREAM_CHUNK, STREAM_START,
)
from llmproxy.capture.replay import ReplayUpstream, canned, payload_bytes
from llmproxy.capture.timeline import Captured, read_requests
from llmproxy.config import build_config
from llmproxy.service import ProxyService
from llmproxy.testing.memory import MemoryAgent

#: Where the rebuilt configuration's backends point (served in memory).
REPLAY_URL = "http://replay.test/v1"
#: Headers not sent again (the replay runs without proxy keys).
_DROPPED = frozenset({"authorization", "content-length", "host", "connection"})


class ClientResult(NamedTuple):
    """
    What a client saw: status, content type, and the body (parsed JSON for
    a whole JSON answer, else the text).
    """

    status: int
    content_type: str | None
    body: Any


#: The identifiers llmproxy makes itself (L{llmproxy.exchange.transform}):
#: different at each run, so compared by order of appearance.
_MADE_ID = re.compile(r"(?<=[_-])[0-9a-f]{24}(?![0-9a-f])")


def normalised(result: ClientResult) -> ClientResult:
    """
    C{result} with the identifiers llmproxy made replaced by C{<id-N>}, N
    counting distinct identifiers in order of appearance.
    """
    seen: dict[str, str] = {}

    def name(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(0), f"<id-{len(seen) + 1}>")

    if isinstance(result.body, str):
        return result._replace(body=_MADE_ID.sub(name, result.body))
    return result._replace(body=json.loads(_MADE_ID.sub(name, json.dumps(result.body))))


def expected_result(captured: Captured) -> ClientResult:
    """
    The client-visible result a capture holds.
    """
    side = [e for e in captured.side(True) if e["destination"] == "client"]
    start = next(e for e in side if e["direction"] in (STREAM_START, OUTBOUND_RESPONSE))
    if start["direction"] == STREAM_START:
        text = b"".join(payload_bytes(e.get("payload")) for e in side
                        if e["direction"] == STREAM_CHUNK)
        return ClientResult(start["status"], start["content_type"], text.decode("utf-8"))
    return ClientResult(start["status"], start["content_type"],
                        _body(payload_bytes(start.get("payload")), start["content_type"]))


def config_data(captured: Captured) -> dict[str, Any]:
    """
    A configuration reproducing the request's route: its backends (one
    key per key index seen) at L{REPLAY_URL}, and the client's model routed
    to the targets its attempts tried, in order.
    """
    sent = [e for e in captured.entries if e["direction"] == OUTBOUND_REQUEST]
    backends: dict[str, dict[str, Any]] = {}
    for e in sent:
        responses = e["metadata"].get("dialect") == "responses"
        entry = backends.setdefault(e["backend"], {
            "type": "openai-responses" if responses else "openai", "base_url": REPLAY_URL,
            "api_keys": ["sk-replay-1"]})
        index = re.search(r"#(\d+)$", e.get("key_name") or "")
        while index and len(entry["api_keys"]) < int(index.group(1)):
            entry["api_keys"].append(f"sk-replay-{len(entry['api_keys']) + 1}")
    targets = list(dict.fromkeys(f"{e['backend']}:{e['model']}" for e in sent))
    client_model = str(next(e for e in captured.entries
                            if e["direction"] == INBOUND_REQUEST).get("model") or "")
    data: dict[str, Any] = {"backends": backends,
                            "default_backend": sent[0]["backend"] if sent else None,
                            "failure_handling": {"max_attempts": max(len(sent), 1)}}
    if targets and client_model and ":" not in client_model and "|" not in client_model:
        data["failover_routes"] = {client_model: {"policy": "m", "elements": targets}}
    return data


def replay_captured(path: str, request_id: str) -> tuple[ClientResult, ClientResult]:
    """
    The client-visible result of request C{request_id} in the capture at
    C{path}, and the one llmproxy gives when it is replayed, both
    L{normalised}.
    """
    captured = read_requests(path)[request_id]
    clock = Clock()
    clock.advance(captured.entries[0]["timestamp_unix"])  # timestamps llmproxy makes
    config = build_config(config_data(captured), environ={}, source=path,
                          kinds=REGISTRY.kinds)
    sites: list[Site] = []

    def listener(site: Site) -> Service:
        sites.append(site)
        return Service()

    service = ProxyService(config, cast(IUpstreamReactor, clock), clock=clock,
                           listener=listener)
    upstream = MemoryAgent(Site(ReplayUpstream(canned([captured]), clock, fast=True)))
    for backend in service.app.runtime.upstreams.backends.values():
        if isinstance(backend, OpenAIBackend):
            backend.agent = cast(Any, upstream)
    client = MemoryAgent(sites[0])
    got = _run(Deferred.fromCoroutine(_send(client, captured)), clock, client, upstream)
    return normalised(expected_result(captured)), normalised(got)


def _run(d: Deferred[ClientResult], clock: Clock, *agents: MemoryAgent) -> ClientResult:
    """
    Move bytes and time until C{d} has its result.
    """
    results: list[ClientResult | Failure] = []
    d.addBoth(results.append)
    for _ in range(10000):
        if results:
            break
        moved = [agent.flush() for agent in agents]
        if not any(moved):
            calls = clock.getDelayedCalls()
            if not calls:
                break
            clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
    if not results:
        raise AssertionError("the replayed request never finished")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    got = results[0]
    assert isinstance(got, ClientResult)
    return got


async def _send(agent: MemoryAgent, captured: Captured) -> ClientResult:
    inbound = next(e for e in captured.entries if e["direction"] == INBOUND_REQUEST)
    meta = inbound["metadata"]
    headers = Headers()
    for name, value in (meta.get("headers") or {}).items():
        if name not in _DROPPED:
            headers.setRawHeaders(name, value if isinstance(value, list) else [value])
    body = payload_bytes(inbound.get("payload"))
    response: IResponse = await agent.request(
        meta.get("method", "POST").encode(), b"http://llmproxy.test" + meta["path"].encode(),
        headers, BytesProducer(body) if body else None)
    content = await readBody(response)
    types = response.headers.getRawHeaders(b"content-type")
    content_type = types[-1].decode("latin-1") if types else None
    return ClientResult(response.code, content_type, _body(content, content_type))


def _body(content: bytes, content_type: str | None) -> Any:
    if content_type and "json" in content_type:
        try:
            return json.loads(content)
        except ValueError:
            pass
    return content.decode("utf-8", "replace")


__all__ = ["REPLAY_URL", "ClientResult", "config_data", "expected_result", "normalised",
           "replay_captured"]
