# -*- test-case-name: tests.test_failover -*-
"""
What the client of one exchange sees: the route headers, the event stream's
headers and its keepalive comments while the client waits, upstream errors
rewrapped in OpenAI's shape with key values redacted, and the final error
(as a status, or in-band once the stream was committed).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey
from llmproxy.errors import ProxyError, UpstreamError
from llmproxy.exchange.attempts import AttemptQueue
from llmproxy.exchange.events import ReplyNote
from llmproxy.exchange.outcome import Outcome
from llmproxy.exchange.runtime import Upstreams
from llmproxy.exchange.transform import response_id
from llmproxy.routing.resolve import Target
from llmproxy.sse import KEEPALIVE
from llmproxy.translate import transforms
from llmproxy.translate.transforms import Transform

#: Upstream response headers the client sees.
PASS_HEADERS = (b"x-request-id", b"openai-processing-ms", b"openai-version",
                b"retry-after", b"retry-after-ms")
_RATELIMIT = b"x-ratelimit-"
#: What an attempt says of itself (L{ClientReply.route_headers}); the
#: request's own headers (its conversation, phase, tuning) are not the
#: attempt's and survive a failover.
ROUTE_HEADERS = (b"x-llmproxy-route", b"x-llmproxy-key", b"x-llmproxy-attempts",
                 b"x-llmproxy-dropped-params")
#: The most of an upstream error body that is read.
MAX_ERROR_BODY = 1024 * 1024
#: Text that looks like an API key (OpenAI echoes masked keys in 401s).
_KEY_SHAPED = re.compile(rb"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


@dataclass
class Tried:
    """
    A failed attempt, as the final error lists it.
    """

    label: str
    outcome: str


@dataclass
class Failed:
    """
    The most telling failure so far.

    @ivar upstream: the upstream's status, (redacted) body and kept headers,
        when it answered.
    @ivar transient: a 5xx or a broken connection, worth retrying on the
        same target (L{llmproxy.exchange.retries}).
    """

    error: ProxyError
    upstream: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
    outcome: Outcome = Outcome.RETRY_NEXT
    retry_after: float | None = None
    transient: bool = False


def label(target: Target, key: ApiKey | None) -> str:
    """
    How an attempt is named in logs and errors (key names only).
    """
    return f"{target.backend}:{target.model}" + (f" [{key.name}]" if key else "")


class ClientReply:
    """
    The client's side of one exchange.

    @ivar committed: whether the 200 event stream started before an answer
        did (keepalive); errors are in-band from then on.
    @ivar gone: whether the request finished or its client left.
    @ivar wrote: whether an event of the answer reached the client.
    """

    def __init__(
        self, request: Request, frontend: str, clock: IReactorTime, note: ReplyNote
    ) -> None:
        self.request = request
        self.frontend = frontend
        self.clock = clock
        self.note = note
        self.committed = False
        self.gone = False
        self.wrote = False
        self._interval = 0.0
        self._keepalive: IDelayedCall | None = None
        #: Called when the reply's event stream starts (metrics' open streams).
        self.opened: Callable[[], None] | None = None
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self.gone = True

    # keepalive

    def keep_alive(self, after: float, interval: float) -> None:
        """
        Commit the stream if nothing was sent within C{after} seconds, then
        send a comment every C{interval} seconds until the first event.
        """
        self._interval = interval
        self._keepalive = self.clock.callLater(after, self._commit_stream)

    def _commit_stream(self) -> None:
        """
        A streaming client has waited with nothing to show: start the 200
        event stream and keep it alive with comments until the answer's
        first event.  From now on, errors are in-band.
        """
        self.committed = True
        self.stream_headers()
        self._tick_keepalive()

    def _tick_keepalive(self) -> None:
        self._keepalive = None
        if self.gone or self.wrote:
            return
        self.request.write(KEEPALIVE)
        self._keepalive = self.clock.callLater(self._interval, self._tick_keepalive)

    def stop_keepalive(self) -> None:
        """
        No more keepalive comments.
        """
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def first_event(self) -> None:
        """
        The answer's first event reached the client.
        """
        self.wrote = True
        self.stop_keepalive()

    # headers

    def route_headers(
        self, target: Target, key: ApiKey | None, response: IResponse,
        dropped: tuple[str, ...], attempts: int,
    ) -> None:
        """
        Say which route element (and key) answered, with the upstream
        headers the client may see; nothing once the stream was committed.
        """
        note = self.note
        note.route = f"{target.backend}:{target.model}"
        note.key = key.name if key is not None else None
        if self.committed:
            return
        request = self.request
        for name, value in kept_headers(response):
            request.setHeader(name, value)
        request.setHeader(b"x-llmproxy-route", note.route.encode())
        if key is not None:
            request.setHeader(b"x-llmproxy-key", key.name.encode())
        request.setHeader(b"x-llmproxy-attempts", str(attempts).encode())
        if dropped:
            request.setHeader(b"x-llmproxy-dropped-params", ",".join(dropped).encode())

    def forget_route(self) -> None:
        """
        A failed attempt's route headers (and the upstream headers it kept)
        say nothing of the request's answer: remove them.
        """
        if self.committed:
            return
        headers = self.request.responseHeaders
        for name, _ in list(headers.getAllRawHeaders()):
            lower = name.lower()
            if lower in ROUTE_HEADERS or lower in PASS_HEADERS or lower.startswith(_RATELIMIT):
                headers.removeHeader(name)

    def stream_headers(self) -> None:
        """
        Start a 200 event stream.
        """
        if not self.note.streamed and self.opened is not None:
            self.opened()
        self.note.streamed = True
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")

    def json_headers(self, status: int) -> None:
        """
        Start a whole JSON answer.
        """
        self.request.setResponseCode(status)
        self.request.setHeader(b"content-type", b"application/json")

    # errors

    def upstream_error(
        self, target: Target, key: ApiKey | None, response: IResponse, body: bytes,
        attempts: int,
    ) -> bytes | None:
        """
        Pass an upstream's error answer (redacted) to the client: the body
        to write, or L{None} when it went in-band.
        """
        out = rewrap_error(response.code, body)
        if self.committed:
            self.late_error(error_from_upstream(response.code, out))
            return None
        self.route_headers(target, key, response, (), attempts)
        self.json_headers(response.code)
        return out

    def stream_error(self, transform: Transform, error: ProxyError) -> None:
        """
        End a started stream with C{error}, in the stream's own dialect.
        """
        if not self.gone:
            self.request.write(transform.error(error))

    def late_error(self, error: ProxyError) -> None:
        if not self.gone:
            self.request.write(transforms.in_band_error(self.frontend, error, response_id()))

    def write_late_error(self, error: ProxyError) -> bool:
        """
        If the stream was committed, write C{error} in-band and return
        True; the caller then just finishes the request.
        """
        if not self.committed:
            return False
        self.stop_keepalive()
        self.late_error(error)
        return True


# upstream answers

def lower_headers(response: IResponse) -> dict[str, str]:
    """
    The response's headers by lower-case name (last value wins).
    """
    return {
        k.decode("latin-1").lower(): v[-1].decode("latin-1")
        for k, v in response.headers.getAllRawHeaders()
    }


def kept_headers(response: IResponse) -> list[tuple[bytes, bytes]]:
    """
    The upstream headers the client sees.
    """
    kept = []
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in PASS_HEADERS or lower.startswith(_RATELIMIT):
            kept.append((lower, values[-1]))
    return kept


def _is_openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


def rewrap_error(status: int, body: bytes) -> bytes:
    """
    Make an upstream error body OpenAI-shaped, keeping its message
    (C{{"detail": ...}} bodies and plain text are rewrapped).
    """
    if _is_openai_error(body):
        return body
    message: Any = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            message = data.get("detail") or data.get("message") or data.get("error") or message
    except ValueError:
        pass
    if not isinstance(message, str):
        message = json.dumps(message)
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return ProxyError(message or f"upstream status {status}", type=kind).to_json()


def error_from_upstream(status: int, body: bytes) -> ProxyError:
    """
    The L{ProxyError} an upstream's error answer amounts to; a status that
    is no error status (a redirect, or beyond 599) reaches the client as
    502.
    """
    try:
        data = json.loads(rewrap_error(status, body))["error"]
    except (ValueError, KeyError, TypeError):
        data = {}
    return ProxyError(
        str(data.get("message") or f"upstream status {status}"),
        status=status if 400 <= status <= 599 else 502,
        type=str(data.get("type") or "server_error"),
        code=data.get("code") if isinstance(data.get("code"), str) else None,
        param=data.get("param") if isinstance(data.get("param"), str) else None,
    )


def redact(status: int, body: bytes, pools: Mapping[str, KeyPool]) -> bytes:
    """
    Keep key values out of error bodies relayed to the client: any
    configured key, and (on 401/403) anything shaped like an API key,
    masked or not.
    """
    for pool in pools.values():
        for key in pool.keys:
            if key.value and key.value.encode() in body:
                body = body.replace(key.value.encode(), b"[REDACTED]")
    if status in (401, 403):
        body = _KEY_SHAPED.sub(b"[REDACTED]", body)
    return body


# llmproxy's own errors

def network_error(name: str, timeout: bool) -> UpstreamError:
    """
    The error of an attempt that got no answer.
    """
    if timeout:
        return UpstreamError(f"Upstream {name} timed out", status=504, code="upstream_timeout")
    return UpstreamError(f"Upstream {name} is unreachable", status=502,
                         code="upstream_unreachable")


def _tried(tried: list[Tried]) -> str:
    return ", ".join(f"{t.label} → {t.outcome}" for t in tried)


def cooling_failure(
    queue: AttemptQueue, wait: float | None, tried: list[Tried], upstreams: Upstreams
) -> Failed:
    """
    Every remaining attempt has to wait too long: say why, truthfully.
    """
    backends = sorted(queue.backends)
    if queue.quota_exhausted():
        return Failed(quota_error(queue, tried))
    if queue.all_invalid():
        names = ", ".join(upstreams.backends[b].config.key_env or b for b in backends)
        return Failed(ProxyError(
            "Every API key of " + ", ".join(backends) + " was rejected by the upstream "
            f"(401/403); fix the backend's keys ({names})",
            status=401, type="invalid_request_error", code="invalid_api_key",
        ))
    retry = max(1, int(wait + 0.999)) if wait is not None else None
    return Failed(ProxyError(
        "Every API key is rate limited"
        + (f"; the first is free again in {wait:.1f} s" if wait is not None else ""),
        status=429, type="requests", code="rate_limit_exceeded",
        headers={"retry-after": str(retry)} if retry else {},
    ))


def quota_error(queue: AttemptQueue, tried: list[Tried]) -> ProxyError:
    """
    Every key of the route's backends is out of quota.
    """
    soonest = queue.soonest_key()
    listed = _tried(tried)
    return ProxyError(
        "Every API key of " + ", ".join(sorted(queue.backends))
        + " has exhausted its quota" + (f" (tried: {listed})" if listed else ""),
        status=503, type="server_error", code="quota_exceeded",
        headers={"retry-after": str(max(1, int(soonest + 0.999)))} if soonest else {},
    )


def final_error(failure: Failed | None, tried: list[Tried], queue: AttemptQueue) -> ProxyError:
    """
    The error a request that no attempt served ends with.
    """
    if failure is None:
        return ProxyError("No upstream could be tried for this request",
                          status=503, type="server_error", code="temporarily_unavailable")
    if failure.outcome is Outcome.QUOTA and queue.quota_exhausted():
        return quota_error(queue, tried)
    if failure.upstream is not None:
        status, body, headers = failure.upstream
        error = error_from_upstream(status, body)
        if len(tried) > 1:
            error.message = f"{error.message} (tried: {_tried(tried)})"
        error.headers = {k.decode(): v.decode() for k, v in headers}
        return error
    error = failure.error
    if len(tried) > 1:
        error.message = f"{error.message} (tried: {_tried(tried)})"
    return error


__all__ = [
    "ClientReply", "Failed", "Tried", "cooling_failure", "error_from_upstream", "final_error",
    "label", "network_error", "quota_error", "redact", "rewrap_error",
]
