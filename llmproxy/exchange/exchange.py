# -*- test-case-name: tests.test_failover -*-
"""
One client request's trip upstream: the attempts of its route (backend ×
key, in the failover policy's order), waits for cooling keys, keepalives
while a streaming client waits, and the relay of the answer.

Nothing is retried once a byte of the answer's body reached the client.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from llmproxy.backends.base import Backend
from llmproxy.dialects import CHAT
from llmproxy.backends.health import CircuitBreaker
from llmproxy.backends.body import collect_body
from llmproxy.exchange.relay import StreamRelay
from llmproxy.config import ApiKey, Config
from llmproxy.errors import InvalidRequest, ProxyError, UpstreamError
from llmproxy.exchange import prepare
from llmproxy.exchange.attempts import AttemptQueue, Slot
from llmproxy.exchange.runtime import Upstreams
from llmproxy.exchange.outcome import Outcome, Verdict, classify_exception, classify_status, is_timeout
from llmproxy.routing.resolve import Route, Target
from llmproxy.sse import KEEPALIVE
from llmproxy.translate import transforms
from llmproxy.translate.transforms import Transform

#: Upstream response headers the client sees.
PASS_HEADERS = (b"x-request-id", b"openai-processing-ms", b"openai-version",
                b"retry-after", b"retry-after-ms")
_RATELIMIT = b"x-ratelimit-"
MAX_ERROR_BODY = 1024 * 1024
#: Text that looks like an API key (OpenAI echoes masked keys in 401s).
_KEY_SHAPED = re.compile(rb"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


@dataclass
class _Tried:
    label: str
    outcome: str


@dataclass
class _Failure:
    """
    The most telling failure so far.
    """

    error: ProxyError
    upstream: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
    outcome: Outcome = Outcome.RETRY_NEXT
    retry_after: float | None = None


def _lower_headers(response: IResponse) -> dict[str, str]:
    return {
        k.decode("latin-1").lower(): v[-1].decode("latin-1")
        for k, v in response.headers.getAllRawHeaders()
    }


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
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ProxyError(message or f"upstream status {status}", type=kind).to_json()


class Exchange:
    """
    Serve one request through its route.
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        config: Config,
        upstreams: Upstreams,
        clock: IReactorTime,
        frontend: str,
        body: Mapping[str, Any],
        raw: bytes,
        history: tuple[Mapping[str, Any], ...] | None = (),
        on_response: Callable[[bytes], None] | None = None,
    ) -> None:
        self.request = request
        self.config = config
        self.up = upstreams
        self.clock = clock
        self.frontend = frontend
        self.body = body
        self.raw = raw
        self.history = history
        self.on_response = on_response
        self.stream = body.get("stream") is True
        self.started = clock.seconds()
        self.committed = False
        self.tried: list[_Tried] = []
        self.gone = False
        self._keepalive: IDelayedCall | None = None
        self._relay_wrote = False
        self._queue: AttemptQueue | None = None
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self.gone = True

    # the loop

    async def run(self, route: Route) -> bytes | None:
        """
        Serve the request; returns the body to write for non-streamed
        answers (L{None} when everything was written already).
        """
        route = self._with_keys(route)
        if self.stream and self.config.failure.keepalive_after > 0:
            self._keepalive = self.clock.callLater(self.config.failure.keepalive_after,
                                                   self._commit_stream)
        try:
            return await self._attempts(route)
        finally:
            self._stop_keepalive()

    async def _attempts(self, route: Route) -> bytes | None:
        fcfg = self.config.failure
        attempts = AttemptQueue(route, self.up, self.clock, fcfg.default_cooldown)
        self._queue = attempts
        failure: _Failure | None = None
        while not attempts.empty() and len(self.tried) < fcfg.max_attempts:
            elapsed = self.clock.seconds() - self.started
            if elapsed >= fcfg.total_timeout_budget:
                break
            slot = attempts.next()
            if slot is None:
                wait = attempts.wait()
                if wait is None or wait > fcfg.max_wait or elapsed + wait > fcfg.total_timeout_budget:
                    failure = self._cooling_failure(attempts, wait)
                    break
                await deferLater(self.clock, wait)
                attempts.wake()
                continue
            result = await self._attempt(slot)
            if not isinstance(result, _Failure):
                return result
            failure = result
            attempts.failed(slot, result.outcome, result.retry_after)
        raise self._final_error(failure)

    def _with_keys(self, route: Route) -> Route:
        """
        The route without the elements whose backend needs a key it does
        not have; if that is every element, the error names what to set.
        """
        keyed = [t for t in route.targets
                 if self.up.backends[t.backend].config.keys
                 or not self.up.backends[t.backend].config.key_env]
        if keyed:
            return route if len(keyed) == len(route.targets) else replace(route, targets=tuple(keyed))
        first = route.targets[0]
        config = self.up.backends[first.backend].config
        raise ProxyError(
            f"No API key for backend {first.backend!r}: set {config.key_env}",
            status=500, type="server_error", code="missing_api_key",
        )

    def _cooling_failure(self, attempts: AttemptQueue, wait: float | None) -> _Failure:
        """
        Every remaining attempt has to wait too long: say why, truthfully.
        """
        backends = sorted(attempts.backends)
        if attempts.quota_exhausted():
            return _Failure(self._quota_error(attempts))
        if attempts.all_invalid():
            names = ", ".join(self.up.backends[b].config.key_env or b for b in backends)
            return _Failure(ProxyError(
                "Every API key of " + ", ".join(backends) + " was rejected by the upstream "
                f"(401/403); fix the backend's keys ({names})",
                status=401, type="invalid_request_error", code="invalid_api_key",
            ))
        retry = max(1, int(wait + 0.999)) if wait is not None else None
        return _Failure(ProxyError(
            "Every API key is rate limited"
            + (f"; the first is free again in {wait:.1f} s" if wait is not None else ""),
            status=429, type="requests", code="rate_limit_exceeded",
            headers={"retry-after": str(retry)} if retry else {},
        ))

    def _quota_error(self, attempts: AttemptQueue) -> ProxyError:
        soonest = attempts.soonest_key()
        tried = ", ".join(f"{t.label} → {t.outcome}" for t in self.tried)
        return ProxyError(
            "Every API key of " + ", ".join(sorted(attempts.backends))
            + " has exhausted its quota" + (f" (tried: {tried})" if tried else ""),
            status=503, type="server_error", code="quota_exceeded",
            headers={"retry-after": str(max(1, int(soonest + 0.999)))} if soonest else {},
        )

    def _final_error(self, failure: _Failure | None) -> ProxyError:
        if failure is None:
            return ProxyError("No upstream could be tried for this request",
                              status=503, type="server_error", code="temporarily_unavailable")
        tried = ", ".join(f"{t.label} → {t.outcome}" for t in self.tried)
        if failure.outcome is Outcome.QUOTA and self._queue is not None \
                and self._queue.quota_exhausted():
            return self._quota_error(self._queue)
        if failure.upstream is not None:
            status, body, headers = failure.upstream
            error = _error_from_upstream(status, body)
            if len(self.tried) > 1:
                error.message = f"{error.message} (tried: {tried})"
            error.headers = {k.decode(): v.decode() for k, v in headers}
            return error
        error = failure.error
        if len(self.tried) > 1:
            error.message = f"{error.message} (tried: {tried})"
        return error

    # keepalive

    def _commit_stream(self) -> None:
        """
        A streaming client has waited C{keepalive_after} seconds with
        nothing to show: start the 200 event stream and keep it alive with
        comments until the answer's first event.  From now on, errors are
        in-band.
        """
        self.committed = True
        self._set_stream_headers()
        self._tick_keepalive()

    def _tick_keepalive(self) -> None:
        self._keepalive = None
        if self.gone or self._relay_wrote:
            return
        self.request.write(KEEPALIVE)
        self._keepalive = self.clock.callLater(self.config.failure.keepalive_interval,
                                               self._tick_keepalive)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    # one attempt

    def _label(self, target: Target, key: ApiKey | None) -> str:
        return f"{target.backend}:{target.model}" + (f" [{key.name}]" if key else "")

    async def _attempt(self, slot: Slot) -> bytes | None | _Failure:
        """
        One attempt: send, classify, and relay a success.  Returns the body
        to write (non-streamed), L{None} (streamed, done), or a L{_Failure}
        to fail over from.
        """
        target, key = slot.target, slot.key
        backend = self.up.backends[target.backend]
        breaker = self.up.breakers[target.backend]
        label = self._label(target, key)
        payload, dropped = self._prepare(target, backend)
        transform = self._transform(target, backend) if self.stream else None
        try:
            response = await backend.send(payload, key, self.stream, self._time_left(backend))
        except CancelledError:
            raise
        except Exception as e:
            if self.gone:
                raise CancelledError()
            return self._network_failure(e, label, breaker)
        if response.code // 100 != 2:
            return await self._upstream_failure(target, key, response, label)
        self._set_route_headers(target, key, response, dropped)
        try:
            if transform is not None:
                result, ok = None, await self._relay(target, backend, response, transform)
            else:
                result, ok = await self._collect(target, backend, response), True
        except CancelledError:
            raise
        except ProxyError as e:
            # Nothing reached the client: the next attempt may still serve it.
            breaker.record_failure()
            self.tried.append(_Tried(label, type(e).__name__))
            return _Failure(e)
        if not ok:
            breaker.record_failure()
            return result
        breaker.record_success()
        if key is not None:
            self.up.pools[target.backend].mark_ok(key)
        return result

    def _time_left(self, backend: Backend) -> float:
        """
        The first-byte timeout of this attempt: the backend's, within what
        is left of the request's total budget.
        """
        left = self.config.failure.total_timeout_budget - (self.clock.seconds() - self.started)
        return max(0.001, min(backend.config.timeout, left))

    def _prepare(self, target: Target, backend: Backend) -> tuple[bytes, tuple[str, ...]]:
        reasoning = backend.config.reasoning_models
        try:
            if self.frontend == CHAT:
                return prepare.prepare_chat(target, self.raw, backend.dialect, reasoning)
            return prepare.prepare_responses(target, self.raw, backend.dialect, reasoning,
                                              self.history)
        except (TypeError, AttributeError, KeyError, ValueError) as e:
            # Translation validates what it understands; a shape it does not
            # expect is still the client's error, never a 500.
            raise InvalidRequest(
                f"The request cannot be translated for backend {target.backend!r}: a field "
                f"has an unexpected shape ({type(e).__name__}: {e})",
                code="invalid_request_shape",
            )

    def _network_failure(self, e: Exception, label: str, breaker: CircuitBreaker) -> _Failure:
        verdict = classify_exception(e)
        if verdict.outcome is Outcome.FATAL:
            raise e
        breaker.record_failure()
        timeout = is_timeout(e)
        self.tried.append(_Tried(label, "timeout" if timeout else "unreachable"))
        self.log.warn("{label}: upstream {what}: {error}", label=label,
                      what="timeout" if timeout else "unreachable", error=type(e).__name__)
        if timeout:
            return _Failure(UpstreamError(f"Upstream {label} timed out", status=504,
                                          code="upstream_timeout"))
        return _Failure(UpstreamError(f"Upstream {label} is unreachable", status=502,
                                      code="upstream_unreachable"))

    async def _upstream_failure(
        self, target: Target, key: ApiKey | None, response: IResponse, label: str
    ) -> bytes | None | _Failure:
        try:
            body = await collect_body(response, self.clock,
                                      self.up.backends[target.backend].config.idle_timeout,
                                      MAX_ERROR_BODY)
        except CancelledError:
            raise
        except ProxyError as e:
            body = ProxyError(e.message).to_json()
        headers = _lower_headers(response)
        verdict = classify_status(response.code, body, headers, self.clock.seconds())
        # Classified as received; what may reach the client is redacted.
        body = self._redact(response.code, body)
        self._record(verdict, target, key)
        self.tried.append(_Tried(label, str(response.code)))
        kept = _kept_headers(response)
        if verdict.outcome is Outcome.CLIENT_ERROR or verdict.outcome is Outcome.OK:
            out = rewrap_error(response.code, body)
            if self.committed:
                self._late_error(_error_from_upstream(response.code, out))
                return None
            self._set_route_headers(target, key, response, ())
            self.request.setResponseCode(response.code)
            self.request.setHeader(b"content-type", b"application/json")
            return out
        self.log.info("{label}: upstream {status}, trying the next attempt", label=label,
                      status=response.code)
        return _Failure(_error_from_upstream(response.code, body), (response.code, body, kept),
                        verdict.outcome, verdict.retry_after)

    def _redact(self, status: int, body: bytes) -> bytes:
        """
        Keep key values out of error bodies relayed to the client: any
        configured key, and (on 401/403) anything shaped like an API key,
        masked or not.
        """
        for pool in self.up.pools.values():
            for key in pool.keys:
                if key.value and key.value.encode() in body:
                    body = body.replace(key.value.encode(), b"[REDACTED]")
        if status in (401, 403):
            body = _KEY_SHAPED.sub(b"[REDACTED]", body)
        return body

    def _record(self, verdict: Verdict, target: Target, key: ApiKey | None) -> None:
        pool = self.up.pools[target.backend]
        breaker = self.up.breakers[target.backend]
        outcome = verdict.outcome
        if outcome is Outcome.RETRY_NEXT:
            breaker.record_failure()
            return
        # The backend answered: whatever is wrong is the key's or the client's.
        breaker.record_success()
        if key is None:
            return
        if outcome is Outcome.RATE_LIMITED:
            pool.mark_rate_limited(key, verdict.retry_after)
        elif outcome is Outcome.NEXT_KEY:
            pool.mark_invalid(key)
        elif outcome is Outcome.QUOTA:
            pool.mark_quota(key)

    # answers

    def _set_route_headers(
        self, target: Target, key: ApiKey | None, response: IResponse, dropped: tuple[str, ...]
    ) -> None:
        if self.committed:
            return
        request = self.request
        for name, value in _kept_headers(response):
            request.setHeader(name, value)
        request.setHeader(b"x-llmproxy-route", f"{target.backend}:{target.model}".encode())
        if key is not None:
            request.setHeader(b"x-llmproxy-key", key.name.encode())
        request.setHeader(b"x-llmproxy-attempts", str(len(self.tried) + 1).encode())
        if dropped:
            request.setHeader(b"x-llmproxy-dropped-params", ",".join(dropped).encode())

    def _set_stream_headers(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")

    async def _collect(self, target: Target, backend: Backend, response: IResponse) -> bytes:
        body = await collect_body(response, self.clock, backend.config.idle_timeout,
                                  self.config.max_body_bytes * 2)
        try:
            out = prepare.convert_body(self.frontend, backend.dialect, body,
                                        response_id=_response_id(), request=self.body)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamError(
                f"Upstream {target.backend}:{target.model} answered with a body that is "
                "not a valid response", code="upstream_invalid_response",
            )
        self.request.setResponseCode(response.code)
        self.request.setHeader(b"content-type", b"application/json")
        if self.on_response is not None:
            self.on_response(out)
        return out

    def _transform(self, target: Target, backend: Backend) -> Transform:
        if self.frontend == backend.dialect:
            return transforms.passthrough(self.frontend)
        now = int(self.clock.seconds())
        if self.frontend == CHAT:
            include = bool((self.body.get("stream_options") or {}).get("include_usage"))
            return transforms.ResponsesToChat(target.model, include, "chatcmpl-" + _token(), now)
        return transforms.ChatToResponses(_response_id(), now, self.body)

    async def _relay(
        self, target: Target, backend: Backend, response: IResponse, transform: Transform
    ) -> bool:
        """
        Relay a streamed answer.  Returns whether it ended well; a failure
        after the first event is written in-band (and returns False), one
        before it raises so the next attempt can serve the client.
        """
        if not self.committed:
            self._set_stream_headers()
        relay = StreamRelay(self.request, transform, self.clock, backend.config.idle_timeout,
                            on_first_write=self._first_write)
        response.deliverBody(relay)
        try:
            await relay.finished
        except CancelledError:
            raise
        except ProxyError as e:
            if not relay.wrote:
                raise
            self.log.warn("{route}: stream failed after it started: {error}",
                          route=f"{target.backend}:{target.model}", error=e.message)
            if not self.gone:
                self.request.write(transform.error(e))
            return False
        final = transform.final()
        if self.on_response is not None and final is not None:
            self.on_response(json.dumps(final).encode())
        return True

    def _first_write(self) -> None:
        self._relay_wrote = True
        self._stop_keepalive()

    def _late_error(self, error: ProxyError) -> None:
        if not self.gone:
            self.request.write(transforms.in_band_error(self.frontend, error))

    def write_late_error(self, error: ProxyError) -> bool:
        """
        If the stream was committed, write C{error} in-band and return
        True; the caller then just finishes the request.
        """
        if not self.committed:
            return False
        self._stop_keepalive()
        self._late_error(error)
        return True


def _kept_headers(response: IResponse) -> list[tuple[bytes, bytes]]:
    kept = []
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in PASS_HEADERS or lower.startswith(_RATELIMIT):
            kept.append((lower, values[-1]))
    return kept


def _error_from_upstream(status: int, body: bytes) -> ProxyError:
    try:
        data = json.loads(rewrap_error(status, body))["error"]
    except (ValueError, KeyError, TypeError):
        data = {}
    return ProxyError(
        str(data.get("message") or f"upstream status {status}"),
        status=status, type=str(data.get("type") or "server_error"),
        code=data.get("code") if isinstance(data.get("code"), str) else None,
        param=data.get("param") if isinstance(data.get("param"), str) else None,
    )


def _token() -> str:
    return secrets.token_hex(12)


def _response_id() -> str:
    return "resp_" + _token()


__all__ = ["Exchange", "rewrap_error"]
