# -*- test-case-name: tests.test_outcome -*-
"""
Classify the outcome of one upstream attempt.

Given an upstream status, body and headers (or the exception an attempt
failed with), decide what the exchange does next; no I/O.

 - L{Outcome.OK}: the upstream answered successfully.
 - L{Outcome.RETRY_NEXT}: a failover-eligible failure (network errors,
   timeouts, 1xx and 3xx as answers, 408, 5xx and beyond, 404
   C{model_not_found}); move to the next attempt.
 - L{Outcome.NEXT_ELEMENT}: a 4xx whose error code says the request does not
   fit this model (C{context_length_exceeded}, or a configured
   C{extra_failover_codes} entry); move to the next route element, never
   resending to this backend and model.
 - L{Outcome.NEXT_KEY}: 401/403; the key is bad, move to the next key.
 - L{Outcome.RATE_LIMITED}: 429; cool the key down and move on.
 - L{Outcome.QUOTA}: 429 C{insufficient_quota}; the key is exhausted.
 - L{Outcome.CLIENT_ERROR}: the client's fault; return the answer as is.
 - L{Outcome.FATAL}: an unexpected internal error; not retried, reported
   as 500 by the caller.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import socket
import ssl
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Collection, Mapping, cast

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
)

from llmproxy.backends.base import FirstByteTimeout

_OpenSSLError: type[Exception]
try:
    from OpenSSL.SSL import Error as _PyOpenSSLError
except ImportError:  # pragma: no cover - pyOpenSSL is optional
    _OpenSSLError = ssl.SSLError
else:
    _OpenSSLError = _PyOpenSSLError


class Outcome(enum.Enum):
    """
    What the router should do after one attempt.
    """

    OK = "ok"
    RETRY_NEXT = "retry_next"
    NEXT_ELEMENT = "next_element"
    NEXT_KEY = "next_key"
    RATE_LIMITED = "rate_limited"
    QUOTA = "quota"
    CLIENT_ERROR = "client_error"
    FATAL = "fatal"


@dataclass(frozen=True)
class Verdict:
    """
    The classification of one attempt.

    @ivar outcome: what to do next.
    @ivar retry_after: seconds the upstream asked us to wait, from its
        headers; L{None} when it gave no (usable) information.
    @ivar exact: C{retry_after} is when the key's own usage limit resets
        (C{usage_limit_reached}), to be kept as it is, however long.
    """

    outcome: Outcome
    retry_after: float | None = None
    exact: bool = False


#: Exceptions meaning "the upstream could not be reached or broke off".
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.ConnectionClosed,
    ierror.ConnectingCancelledError,
    ResponseFailed,
    RequestTransmissionFailed,
    RequestNotSent,
    ConnectionError,
    socket.gaierror,
    ssl.SSLError,
    _OpenSSLError,
)

#: Exceptions meaning "the upstream took too long".
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    defer.TimeoutError,
    ierror.TimeoutError,
    ierror.TCPTimedOutError,
    ierror.ConnectingCancelledError,
    defer.CancelledError,
    FirstByteTimeout,
    TimeoutError,
)

#: Body size beyond which we do not try to parse an error body as JSON.
_MAX_ERROR_BODY = 1024 * 1024

#: Error codes (or types) that make a 404 failover-eligible.
_MODEL_NOT_FOUND = "model_not_found"

#: Error code (or type) of a 4xx that moves on to the next route element.
CONTEXT_LENGTH = "context_length_exceeded"

#: Error code (or type) that turns a 429 into quota exhaustion.
_INSUFFICIENT_QUOTA = "insufficient_quota"

#: Error code (or type) of a 429 whose retry hint is the reset of the
#: key's own usage window (a ChatGPT subscription's), not a short pause.
_USAGE_LIMIT_REACHED = "usage_limit_reached"


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    """
    Look up a header, tolerating odd casing and bytes or list values.

    @param headers: response headers, normally with lower-case names.
    @param name: the lower-case header name.
    @return: the first value as text, or L{None} if absent.
    """
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if isinstance(key, bytes):
                key = key.decode("latin-1")
            if isinstance(key, str) and key.lower() == name:
                value = candidate
                break
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value if isinstance(value, str) else None


def _non_negative(text: str | None) -> float | None:
    """
    Parse a finite, non-negative decimal number.

    @param text: the raw header value.
    @return: the number, or L{None} for garbage, negatives, NaN and infinity.
    """
    if text is None:
        return None
    try:
        number = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


def _http_date_delay(text: str, now: float) -> float | None:
    """
    Parse an HTTP date and return the seconds from C{now} until it.

    A date in the past means "retry now", i.e. C{0.0}.

    @param text: the raw header value.
    @param now: the current unix time.
    @return: the delay, or L{None} if C{text} is not a date.
    """
    try:
        moment = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        delay = moment.timestamp() - now
    except (OverflowError, ValueError, OSError):
        return None
    return max(0.0, delay) if math.isfinite(delay) else None


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """
    Extract the upstream's retry hint, in seconds.

    C{retry-after-ms} (milliseconds, may be fractional) wins when usable;
    otherwise C{retry-after} is read as seconds or as an HTTP date relative
    to C{now}.  Negative values and garbage mean "no information".

    @param headers: response headers with lower-case names.
    @param now: the current unix time (from the injected clock).
    @return: seconds to wait (C{0.0} is kept), or L{None}.
    """
    millis = _non_negative(_header(headers, "retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    seconds = _non_negative(raw)
    if seconds is not None:
        return seconds
    return _http_date_delay(raw, now)


def _error_fields(body: bytes | str | None) -> tuple[str | None, str | None]:
    """
    Extract C{error.code} and C{error.type} from an upstream error body.

    Never raises: anything that is not the expected JSON shape gives
    C{(None, None)}.

    @param body: the raw response body, if any.
    @return: the lower-cased code and type.
    """
    if not body or len(body) > _MAX_ERROR_BODY:
        return None, None
    try:
        document = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    error = document.get("error", document)
    if not isinstance(error, dict):
        return None, None
    return _as_text(error.get("code")), _as_text(error.get("type"))


def _as_text(value: object) -> str | None:
    """
    Normalise a JSON scalar to lower-case text.

    @param value: a value decoded from JSON.
    @return: its lower-cased text, or L{None} for non-scalars.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return str(value).lower()
    return None


def _status_outcome(
    status: int, fields: tuple[str | None, str | None], extra: Collection[int],
    codes: Collection[str] = (),
) -> Outcome:
    """
    Map a status and the body's error code/type to an outcome.

    @param status: the upstream HTTP status.
    @param fields: the body's C{(code, type)}.
    @param extra: additional statuses to treat as failover-eligible.
    @param codes: additional (lower-case) error codes that make a 4xx move
        to the next route element, besides C{context_length_exceeded}.
    """
    if 200 <= status < 300:
        return Outcome.OK
    if status < 200 or 300 <= status < 400:
        # An interim status as the answer, or a redirect (never followed):
        # this upstream does not serve the request.
        return Outcome.RETRY_NEXT
    if status == 429:
        if _INSUFFICIENT_QUOTA in fields:
            return Outcome.QUOTA
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.NEXT_KEY
    if 400 <= status < 500 and (CONTEXT_LENGTH in fields
                                or any(f in codes for f in fields if f is not None)):
        return Outcome.NEXT_ELEMENT
    if status == 404 and _MODEL_NOT_FOUND in fields:
        return Outcome.RETRY_NEXT
    if status == 408 or status >= 500 or status < 100 or status in extra:
        return Outcome.RETRY_NEXT
    return Outcome.CLIENT_ERROR


def classify_status(
    status: int,
    body: bytes | None,
    headers: Mapping[str, str],
    now: float,
    *,
    extra_failover: Collection[int] = (),
    extra_codes: Collection[str] = (),
) -> Verdict:
    """
    Classify an upstream HTTP answer.

    @param status: the upstream HTTP status.
    @param body: the (error) body, possibly JSON with C{error.code} and
        C{error.type}; parsed defensively.
    @param headers: the response headers with lower-case names.
    @param now: the current unix time, for HTTP-date retry hints.
    @param extra_failover: 4xx statuses the configuration additionally
        makes failover-eligible (C{extra_failover_statuses}).
    @param extra_codes: lower-case error codes the configuration makes
        move a 4xx to the next route element (C{extra_failover_codes}).
    @return: the verdict; C{retry_after} is L{None} for L{Outcome.OK}.
    """
    fields = _error_fields(body)
    outcome = _status_outcome(status, fields, extra_failover, extra_codes)
    if outcome is Outcome.OK:
        return Verdict(outcome, None)
    exact = outcome is Outcome.RATE_LIMITED and _USAGE_LIMIT_REACHED in fields
    return Verdict(outcome, parse_retry_after(headers, now), exact)


def _unwrap(failure_or_exc: Failure | BaseException) -> BaseException:
    """
    Get the exception out of a L{Failure}.

    @param failure_or_exc: a L{Failure} or an exception.
    """
    if isinstance(failure_or_exc, Failure):
        # A constructed Failure always has a value; Twisted types it Optional.
        return cast(BaseException, failure_or_exc.value)
    return failure_or_exc


def _reasons(exc: BaseException) -> list[BaseException]:
    """
    The underlying exceptions of a Twisted web wrapper exception.

    @param exc: any exception.
    @return: the wrapped exceptions (empty if C{exc} wraps nothing).
    """
    reasons = getattr(exc, "reasons", None)
    if not isinstance(reasons, (list, tuple)):
        return []
    return [_unwrap(r) for r in reasons if isinstance(r, (Failure, BaseException))]


def is_timeout(exc: Failure | BaseException) -> bool:
    """
    Whether an attempt failed because the upstream was too slow.

    The caller answers 504 for timeouts and 502 for other network errors.
    Cancellation counts as a timeout, because that is how C{treq}'s
    C{timeout=} surfaces.

    @param exc: the exception or L{Failure}, possibly a Twisted web wrapper
        (L{ResponseFailed}, ...) whose reasons are inspected.
    """
    value = _unwrap(exc)
    if isinstance(value, _TIMEOUT_ERRORS):
        return True
    return any(isinstance(r, _TIMEOUT_ERRORS) for r in _reasons(value))


def classify_exception(failure_or_exc: Failure | BaseException) -> Verdict:
    """
    Classify an attempt that failed without an HTTP answer.

    Network and TLS errors and timeouts are failover-eligible; any other
    exception is an internal error (L{Outcome.FATAL}).  Never raises.

    @param failure_or_exc: the exception or a L{Failure} wrapping it.
    """
    value = _unwrap(failure_or_exc)
    if isinstance(value, _NETWORK_ERRORS) or is_timeout(value):
        return Verdict(Outcome.RETRY_NEXT, None)
    return Verdict(Outcome.FATAL, None)
