# -*- test-case-name: tests.test_failure -*-
"""
Tests for L{llmproxy.exchange.outcome}.
"""

from __future__ import annotations

import json
import socket
import ssl
from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from llmproxy.backends.base import FirstByteTimeout
from llmproxy.exchange.outcome import (
    Outcome,
    Verdict,
    classify_exception,
    classify_status,
    is_timeout,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def _error(code: str | None = None, type: str | None = None) -> bytes:
    """
    An OpenAI-shaped error body.
    """
    return json.dumps(
        {"error": {"message": "x", "type": type, "param": None, "code": code}}
    ).encode("utf-8")


class ParseRetryAfterTests(SynchronousTestCase):
    """
    Tests for L{parse_retry_after}.
    """

    def test_absent(self) -> None:
        """
        Without retry headers there is no information.
        """
        self.assertIsNone(parse_retry_after({}, NOW))

    def test_seconds(self) -> None:
        """
        C{retry-after} is read as (possibly fractional) seconds.
        """
        self.assertEqual(parse_retry_after({"retry-after": "7"}, NOW), 7.0)
        self.assertEqual(parse_retry_after({"retry-after": " 1.5 "}, NOW), 1.5)

    def test_milliseconds_win(self) -> None:
        """
        C{retry-after-ms} takes precedence over C{retry-after}.
        """
        headers = {"retry-after-ms": "250", "retry-after": "9"}
        self.assertEqual(parse_retry_after(headers, NOW), 0.25)

    def test_bad_milliseconds_fall_back(self) -> None:
        """
        An unusable C{retry-after-ms} does not hide a good C{retry-after}.
        """
        headers = {"retry-after-ms": "soon", "retry-after": "3"}
        self.assertEqual(parse_retry_after(headers, NOW), 3.0)
        headers = {"retry-after-ms": "-5", "retry-after": "3"}
        self.assertEqual(parse_retry_after(headers, NOW), 3.0)

    def test_zero_stays_zero(self) -> None:
        """
        A retry-after of 0 is information (retry at once), not L{None}.
        """
        self.assertEqual(parse_retry_after({"retry-after": "0"}, NOW), 0.0)
        self.assertEqual(parse_retry_after({"retry-after-ms": "0"}, NOW), 0.0)

    def test_negative_and_garbage(self) -> None:
        """
        Negative numbers, NaN, infinity and garbage mean no information.
        """
        for value in ["-1", "nan", "inf", "soon", "", "1e999"]:
            self.assertIsNone(
                parse_retry_after({"retry-after": value}, NOW), repr(value)
            )

    def test_http_date(self) -> None:
        """
        An HTTP date is converted to the delay from C{now}.
        """
        header = formatdate(NOW + 30, usegmt=True)
        self.assertEqual(parse_retry_after({"retry-after": header}, NOW), 30.0)

    def test_past_http_date(self) -> None:
        """
        A date already passed means "retry now".
        """
        header = formatdate(NOW - 30, usegmt=True)
        self.assertEqual(parse_retry_after({"retry-after": header}, NOW), 0.0)

    def test_odd_header_shapes(self) -> None:
        """
        Mixed-case names and bytes or list values are tolerated.
        """
        self.assertEqual(parse_retry_after({"Retry-After": "4"}, NOW), 4.0)
        self.assertEqual(parse_retry_after({"retry-after": b"4"}, NOW), 4.0)  # type: ignore[dict-item]
        self.assertEqual(parse_retry_after({"retry-after": ["4"]}, NOW), 4.0)  # type: ignore[dict-item]

    @given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
    def test_seconds_roundtrip(self, seconds: float) -> None:
        """
        Any non-negative number of seconds is returned unchanged.
        """
        result = parse_retry_after({"retry-after": repr(seconds)}, NOW)
        self.assertEqual(result, seconds)

    @given(st.dictionaries(st.text(max_size=20), st.text(max_size=40)))
    def test_never_raises(self, headers: dict[str, str]) -> None:
        """
        Arbitrary headers never make parsing raise, and a result is never
        negative.
        """
        result = parse_retry_after(headers, NOW)
        self.assertTrue(result is None or result >= 0)

    @given(st.text(max_size=40), st.text(max_size=40))
    def test_retry_headers_never_raise(self, millis: str, seconds: str) -> None:
        """
        Arbitrary retry header values never make parsing raise.
        """
        result = parse_retry_after(
            {"retry-after-ms": millis, "retry-after": seconds}, NOW
        )
        self.assertTrue(result is None or result >= 0)


class ClassifyStatusTests(SynchronousTestCase):
    """
    Tests for L{classify_status}.
    """

    def outcome(
        self, status: int, body: bytes | None = None, **kwargs: object
    ) -> Outcome:
        """
        Classify C{status} with C{body} and no headers.
        """
        return classify_status(status, body, {}, NOW, **kwargs).outcome  # type: ignore[arg-type]

    def test_success(self) -> None:
        """
        2xx is OK and carries no retry hint.
        """
        verdict = classify_status(200, b"{}", {"retry-after": "3"}, NOW)
        self.assertEqual(verdict, Verdict(Outcome.OK, None))

    def test_failover_statuses(self) -> None:
        """
        408 and 5xx move to the next attempt.
        """
        for status in (408, 500, 502, 503, 504):
            self.assertEqual(self.outcome(status), Outcome.RETRY_NEXT, status)

    def test_auth(self) -> None:
        """
        401 and 403 move to the next key.
        """
        self.assertEqual(self.outcome(401), Outcome.NEXT_KEY)
        self.assertEqual(self.outcome(403, _error("invalid_api_key")), Outcome.NEXT_KEY)

    def test_rate_limited(self) -> None:
        """
        A plain 429 is a rate limit and carries the retry hint.
        """
        verdict = classify_status(
            429, _error("rate_limit_exceeded"), {"retry-after-ms": "1500"}, NOW
        )
        self.assertEqual(verdict, Verdict(Outcome.RATE_LIMITED, 1.5))

    def test_quota(self) -> None:
        """
        A 429 with code or type C{insufficient_quota} is quota exhaustion.
        """
        self.assertEqual(self.outcome(429, _error("insufficient_quota")), Outcome.QUOTA)
        self.assertEqual(
            self.outcome(429, _error(None, "insufficient_quota")), Outcome.QUOTA
        )
        self.assertEqual(
            self.outcome(429, b'{"code": "insufficient_quota"}'), Outcome.QUOTA
        )

    def test_model_not_found(self) -> None:
        """
        404 fails over only with code C{model_not_found}.
        """
        self.assertEqual(
            self.outcome(404, _error("model_not_found")), Outcome.RETRY_NEXT
        )
        self.assertEqual(self.outcome(404, _error("not_found")), Outcome.CLIENT_ERROR)
        self.assertEqual(self.outcome(404), Outcome.CLIENT_ERROR)

    def test_client_errors(self) -> None:
        """
        Other 4xx go back to the client; a context overflow moves to the
        next route element (tests.test_retries).
        """
        body = _error("invalid_value")
        for status in (400, 409, 413, 422):
            self.assertEqual(self.outcome(status, body), Outcome.CLIENT_ERROR)

    def test_extra_failover(self) -> None:
        """
        Configured extra statuses become failover-eligible.
        """
        self.assertEqual(self.outcome(409, extra_failover={409}), Outcome.RETRY_NEXT)
        self.assertEqual(self.outcome(422, extra_failover={409}), Outcome.CLIENT_ERROR)

    def test_retry_after_on_503(self) -> None:
        """
        The retry hint of a failover-eligible status is reported.
        """
        verdict = classify_status(503, None, {"retry-after": "2"}, NOW)
        self.assertEqual(verdict, Verdict(Outcome.RETRY_NEXT, 2.0))

    def test_garbage_bodies(self) -> None:
        """
        Bodies that are not the expected JSON never raise.
        """
        bodies = [
            b"<html>bad gateway</html>",
            b"\xff\xfe",
            b"[1, 2]",
            b'{"error": "insufficient_quota"}',
            b'{"error": {"code": ["insufficient_quota"]}}',
            b"[" * 100_000,
            b"",
        ]
        for body in bodies:
            self.assertEqual(self.outcome(429, body), Outcome.RATE_LIMITED, body[:20])

    @given(st.integers(min_value=0, max_value=999), st.binary(max_size=200))
    def test_never_raises(self, status: int, body: bytes) -> None:
        """
        Any status and body yield a verdict; 2xx is always OK.
        """
        verdict = classify_status(status, body, {}, NOW)
        self.assertIsInstance(verdict.outcome, Outcome)
        if 200 <= status < 300:
            self.assertEqual(verdict.outcome, Outcome.OK)
        if status >= 500:
            self.assertEqual(verdict.outcome, Outcome.RETRY_NEXT)


class ClassifyExceptionTests(SynchronousTestCase):
    """
    Tests for L{classify_exception} and L{is_timeout}.
    """

    def test_network_errors(self) -> None:
        """
        Connection, DNS and TLS failures are failover-eligible but not
        timeouts.
        """
        errors: list[BaseException] = [
            ierror.ConnectionRefusedError(),
            ierror.DNSLookupError("nope"),
            ierror.ConnectionLost(),
            ierror.SSLError(),
            ssl.SSLError(),
            socket.gaierror(),
            ConnectionResetError(),
            ResponseFailed([Failure(ierror.ConnectionLost())]),
            RequestTransmissionFailed([Failure(ierror.ConnectionLost())]),
        ]
        for exc in errors:
            self.assertEqual(
                classify_exception(exc), Verdict(Outcome.RETRY_NEXT, None), exc
            )
            self.assertFalse(is_timeout(exc), exc)

    def test_timeouts(self) -> None:
        """
        Timeouts of every flavour are failover-eligible and timeouts.
        """
        errors: list[BaseException] = [
            defer.TimeoutError(),
            ierror.TimeoutError(),
            ierror.TCPTimedOutError(),
            FirstByteTimeout(),
            TimeoutError(),
            defer.CancelledError(),
            ResponseNeverReceived([Failure(defer.CancelledError())]),
        ]
        for exc in errors:
            self.assertEqual(classify_exception(exc).outcome, Outcome.RETRY_NEXT, exc)
            self.assertTrue(is_timeout(exc), exc)

    def test_failure_accepted(self) -> None:
        """
        A L{Failure} is classified by the exception it wraps.
        """
        self.assertEqual(
            classify_exception(Failure(FirstByteTimeout())).outcome,
            Outcome.RETRY_NEXT,
        )
        self.assertTrue(is_timeout(Failure(FirstByteTimeout())))
        self.assertEqual(
            classify_exception(Failure(KeyError("x"))).outcome, Outcome.FATAL
        )

    def test_unknown_is_fatal(self) -> None:
        """
        Anything else is an internal error and is not retried.
        """
        for exc in (ValueError("bug"), KeyError("k"), ZeroDivisionError()):
            self.assertEqual(classify_exception(exc), Verdict(Outcome.FATAL, None))
            self.assertFalse(is_timeout(exc))
