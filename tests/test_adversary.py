# -*- test-case-name: tests.test_adversary -*-
"""
Tests for the pure parts of L{bench.adversary}: parsing what came back,
the verdicts, the generated cases and faults, the proxy's config and the
report.  None of them starts llmproxy (the whole run is far too slow for
the suite); one starts the in-process fault upstream for a few exchanges.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bench.adversary import BUDGET, IDLE_TIMEOUT, TIMEOUT
from bench.adversary.cases import ACCEPT, ALSO, GROUPS, REJECT, all_cases
from bench.adversary.client import Outcome, exchange
from bench.adversary.faults import FAULTS, Ctx, Send, backend_name, fault_named
from bench.adversary.proxy import config_text, tracebacks
from bench.adversary.report import exit_status, markdown, targets
from bench.adversary.runner import BurstResult, CaseResult, FaultResult, Results, StallResult
from bench.adversary.upstream import FaultUpstream
from bench.adversary.verdicts import (
    FAIL, HANG, LEAK, PASS, judge_acceptance, judge_fault, judge_rejection,
)
from bench.adversary.wire import (
    dechunk, is_openai_error, parse_response, sse_events, summarize_stream,
)
from llmproxy.backends import REGISTRY
from llmproxy.config import Overrides, build_config

ERROR = json.dumps({"error": {"message": "bad", "type": "invalid_request_error",
                              "param": None, "code": None}}).encode()
COMPLETION = b'{"id": "x", "object": "chat.completion", "choices": []}'


def _http(status: int, body: bytes, content_type: str = "application/json",
          reason: str = "X") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _sse(*events: bytes) -> bytes:
    body = b"".join(events)
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n")


def _outcome(data: bytes = b"", closed: bool = False, reset: bool = False,
             timed_out: bool = False, elapsed: float = 0.01, error: str | None = None) -> Outcome:
    return Outcome(data, closed, reset, timed_out, elapsed, 0.001, error,
                   parse_response(data, closed) if data else None)


class WireTests(SynchronousTestCase):
    def test_incomplete_head(self) -> None:
        """
        Part of a head is not a response yet; cut by the close, it is an
        error.
        """
        self.assertIsNone(parse_response(b"HTTP/1.1 200 OK\r\nContent-", False))
        cut = parse_response(b"HTTP/1.1 200 OK\r\nContent-", True)
        assert cut is not None
        self.assertEqual(cut.status, 0)
        self.assertIsNotNone(cut.error)

    def test_content_length(self) -> None:
        """
        A Content-Length body is complete once that many bytes arrived.
        """
        whole = _http(400, ERROR)
        partial = parse_response(whole[:-3], False)
        assert partial is not None
        self.assertFalse(partial.complete)
        done = parse_response(whole, False)
        assert done is not None
        self.assertEqual((done.status, done.body, done.complete), (400, ERROR, True))

    def test_chunked_and_interim(self) -> None:
        """
        1xx heads are skipped; a chunked body is decoded to its last chunk.
        """
        data = b"HTTP/1.1 100 Continue\r\n\r\n" + _sse(b"data: a\n\n")
        response = parse_response(data, False)
        assert response is not None
        self.assertEqual((response.status, response.body, response.complete),
                         (200, b"data: a\n\n", True))

    def test_close_delimited(self) -> None:
        """
        Without a length, the body ends with the close.
        """
        data = b"HTTP/1.0 200 OK\r\n\r\nabc"
        open_, closed = parse_response(data, False), parse_response(data, True)
        assert open_ is not None and closed is not None
        self.assertEqual((open_.complete, closed.complete, closed.body), (False, True, b"abc"))

    def test_not_http(self) -> None:
        """
        Bytes that are not a status line are an error at once.
        """
        response = parse_response(b"SSH-2.0-x\r\n", False)
        assert response is not None
        self.assertIsNotNone(response.error)

    def test_bad_chunk(self) -> None:
        """
        A chunk size that is not hex is reported.
        """
        self.assertEqual(dechunk(b"zz\r\nhello\r\n")[2], "bad chunk size b'zz'")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def test_never_raises(self, data: bytes, closed: bool) -> None:
        """
        Whatever a server sends is parsed or reported, never raised.
        """
        for prefix in (b"", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"):
            parse_response(prefix + data, closed)
        summarize_stream(data)

    def test_sse_events(self) -> None:
        """
        Events are split on blank lines, whatever the line ends; comments
        and an unterminated event are left out.
        """
        events = sse_events(b": hi\r\n\r\nevent: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\n\ndata: d")
        self.assertEqual([(e.name, e.data) for e in events], [("e", "a\nb"), ("", "c")])

    def test_openai_error(self) -> None:
        """
        Only C{{"error": {"message": str, "type": str}}} is an OpenAI error.
        """
        self.assertTrue(is_openai_error(ERROR))
        for body in [b"", b"{}", b'{"error": "x"}', b'{"error": {"message": "m"}}', COMPLETION,
                     b"<html>"]:
            self.assertFalse(is_openai_error(body), body)


class RejectionTests(SynchronousTestCase):
    def test_openai_shaped_4xx(self) -> None:
        """
        An OpenAI-shaped 400 (or 401, 404, 413...) in time passes.
        """
        for status in (400, 401, 404, 405, 413, 431):
            self.assertEqual(judge_rejection(_outcome(_http(status, ERROR))).verdict, PASS)

    def test_clean_close(self) -> None:
        """
        A close with no byte of an answer passes, a reset too.
        """
        self.assertEqual(judge_rejection(_outcome(closed=True)).verdict, PASS)
        self.assertEqual(judge_rejection(_outcome(closed=True, reset=True)).verdict, PASS)

    def test_failures(self) -> None:
        """
        A bare 400, a non-JSON 4xx, a 5xx (even OpenAI-shaped), a 2xx, no
        answer, a partial answer, an answer too late: all fail.
        """
        for outcome in [
            _outcome(b"HTTP/1.1 400 Bad Request\r\n\r\n", closed=True),
            _outcome(_http(400, b"", "text/html")),
            _outcome(_http(404, b"<html>not found</html>", "text/html")),
            _outcome(_http(500, ERROR)),
            _outcome(_http(200, COMPLETION)),
            _outcome(timed_out=True, elapsed=1.0),
            _outcome(b"HTTP/1.1 40", closed=True),
            _outcome(_http(400, ERROR)[:-5], timed_out=True, elapsed=1.0),
            _outcome(_http(400, ERROR), elapsed=1.5),
            _outcome(error="connect: ConnectionRefusedError"),
        ]:
            self.assertEqual(judge_rejection(outcome).verdict, FAIL, outcome)

    def test_also_accepted(self) -> None:
        """
        A 5xx passes only where the case names it (501, 505), and only
        OpenAI-shaped.
        """
        self.assertEqual(judge_rejection(_outcome(_http(505, ERROR)), also=(505,)).verdict, PASS)
        self.assertEqual(judge_rejection(_outcome(_http(505, ERROR))).verdict, FAIL)
        self.assertEqual(judge_rejection(_outcome(_http(505, b"")), also=(505,)).verdict, FAIL)

    def test_acceptance(self) -> None:
        """
        A valid request passes with a complete 2xx only.
        """
        self.assertEqual(judge_acceptance(_outcome(_http(200, COMPLETION))).verdict, PASS)
        self.assertEqual(judge_acceptance(_outcome(_sse(b"data: [DONE]\n\n"))).verdict, PASS)
        self.assertEqual(judge_acceptance(_outcome(_http(400, ERROR))).verdict, FAIL)
        self.assertEqual(judge_acceptance(_outcome(closed=True)).verdict, FAIL)


class FaultVerdictTests(SynchronousTestCase):
    def judge(self, outcome: Outcome, stream: bool) -> str:
        return judge_fault(outcome, stream, BUDGET).verdict

    def test_success_leaks(self) -> None:
        """
        A 2xx that is not an error reaches the client as success: a
        completion or garbage; for a stream, [DONE] without an error, an
        empty stream, or a JSON body.
        """
        self.assertEqual(self.judge(_outcome(_http(200, COMPLETION)), False), LEAK)
        self.assertEqual(self.judge(_outcome(_http(200, b"\x1f\x8b garbage")), False), LEAK)
        self.assertEqual(self.judge(_outcome(_http(204, b"")), False), LEAK)
        self.assertEqual(self.judge(_outcome(_sse(b"data: {}\n\n", b"data: [DONE]\n\n")), True),
                         LEAK)
        self.assertEqual(self.judge(_outcome(_sse()), True), LEAK)
        self.assertEqual(self.judge(_outcome(_http(200, COMPLETION)), True), LEAK)

    def test_errors_pass(self) -> None:
        """
        An error status, an error body, an in-band error event, a broken
        2xx the client notices: all pass.
        """
        self.assertEqual(self.judge(_outcome(_http(502, ERROR)), False), PASS)
        self.assertEqual(self.judge(_outcome(_http(502, b"<html>")), True), PASS)
        self.assertEqual(self.judge(_outcome(_http(200, ERROR)), False), PASS)
        event = b"data: " + ERROR + b"\n\n"
        self.assertEqual(self.judge(_outcome(_sse(b"data: {}\n\n", event, b"data: [DONE]\n\n")),
                                    True), PASS)
        self.assertEqual(self.judge(_outcome(_sse(b'event: error\ndata: {"x": 1}\n\n')), True),
                         PASS)
        cut = _http(200, COMPLETION)[:-10]
        self.assertEqual(self.judge(_outcome(cut, closed=True), False), PASS)
        self.assertEqual(self.judge(_outcome(closed=True, reset=True), False), PASS)

    def test_hang(self) -> None:
        """
        Not finished in the budget plus a second is a hang, whatever came.
        """
        keepalives = _sse(b": keepalive\n\n")[:-5]
        self.assertEqual(self.judge(_outcome(keepalives, timed_out=True, elapsed=BUDGET + 1),
                                    True), HANG)
        self.assertEqual(self.judge(_outcome(timed_out=True, elapsed=BUDGET + 1), False), HANG)


class CaseTests(SynchronousTestCase):
    def test_counts_and_names(self) -> None:
        """
        At least 150 distinct bad requests across every class, names
        unique, and a handful of valid requests that must succeed.
        """
        cases = all_cases()
        names = [c.name for c in cases]
        self.assertEqual(len(names), len(set(names)))
        rejects = [c for c in cases if c.expect == REJECT]
        self.assertGreaterEqual(len(rejects), 150)
        self.assertEqual(len({c.data + c.upload for c in rejects}), len(rejects))
        groups = {c.group for c in rejects}
        self.assertTrue(set(GROUPS) <= groups)
        self.assertIn("body-limit", groups)
        self.assertGreaterEqual(sum(1 for c in cases if c.expect == ACCEPT), 10)

    def test_also_names_real_cases(self) -> None:
        """
        Every case granted another status exists (a renamed case would
        silently lose it).
        """
        names = {c.name for c in all_cases()}
        self.assertEqual(set(ALSO) - names, set())
        self.assertEqual(next(c for c in all_cases() if c.name == "version: HTTP/2.0").also,
                         (505,))

    def test_valid_requests_are_valid(self) -> None:
        """
        Each request that must succeed is well-formed HTTP/1.x with CRLF
        line ends, its body the declared length and (when any) a JSON
        object.
        """
        for case in all_cases():
            if case.expect != ACCEPT:
                continue
            head, _, body = case.data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            self.assertRegex(lines[0], rb"^(GET|POST) /[\w/.]* HTTP/1\.[01]$")
            fields = dict(line.split(b": ", 1) for line in lines[1:])
            self.assertEqual(int(fields.get(b"Content-Length", b"0")), len(body), case.name)
            if body:
                self.assertIsInstance(json.loads(body), dict)

    def test_null_stream_must_succeed(self) -> None:
        """
        C{"stream": null} is among the requests that must succeed.
        """
        nulls = [c for c in all_cases() if c.expect == ACCEPT and b'"stream": null' in c.data]
        self.assertGreaterEqual(len(nulls), 2)


class FaultTests(SynchronousTestCase):
    def test_counts_and_names(self) -> None:
        """
        At least 30 faults, names unique, each one a valid backend name
        (no C{.}: that would pin a key instance).
        """
        names = [f.name for f in FAULTS]
        self.assertGreaterEqual(len(names), 30)
        self.assertEqual(len(names), len(set(names)))
        for fault in FAULTS:
            self.assertRegex(backend_name(fault), r"^[A-Za-z0-9_-]+$")
            self.assertIs(fault_named(fault.name), fault)
        self.assertIsNone(fault_named("ok"))

    def test_scripts(self) -> None:
        """
        Every fault has a script for both kinds of request.
        """
        for fault in FAULTS:
            for stream in (False, True):
                steps = fault.script(Ctx(stream, 1234))
                self.assertTrue(steps, fault.name)

    def test_redirect_points_at_a_healthy_path(self) -> None:
        """
        The redirect faults send the proxy to a path that would succeed.
        """
        fault = fault_named("302-redirect")
        assert fault is not None
        step = fault.script(Ctx(False, 1234))[0]
        assert isinstance(step, Send)
        self.assertIn(b"Location: http://127.0.0.1:1234/ok/v1/chat/completions", step.data)


class UpstreamTests(SynchronousTestCase):
    def test_healthy_and_faulty(self) -> None:
        """
        The upstream answers C{/ok} healthily and a fault path with its
        script, and counts the fault's hits.
        """
        async def go() -> tuple[Outcome, Outcome, Outcome, int]:
            upstream = FaultUpstream()
            port = await upstream.start()
            try:
                def post(path: str, stream: bool) -> bytes:
                    body = json.dumps({"model": "m", "stream": stream}).encode()
                    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n").encode() + body

                ok = await exchange(port, post("/ok/v1/chat/completions", True), 2.0)
                html = await exchange(port, post("/html-502/v1/chat/completions", False), 2.0)
                reset = await exchange(port, post("/reset-before-headers/v1/x", False), 2.0)
                return ok, html, reset, upstream.hits["html-502"]
            finally:
                await upstream.close()

        ok, html, reset, hits = asyncio.run(go())
        self.assertEqual(judge_acceptance(ok, 2.0).verdict, PASS)
        assert ok.response is not None
        self.assertTrue(summarize_stream(ok.response.body).done)
        assert html.response is not None
        self.assertEqual(html.response.status, 502)
        self.assertEqual(hits, 1)
        self.assertTrue(reset.closed)
        self.assertEqual(reset.data, b"")


class ProxyConfigTests(SynchronousTestCase):
    def test_llmproxy_accepts_the_config(self) -> None:
        """
        llmproxy's own loader takes the config, with the budget and
        timeouts the verdicts assume and one backend per fault.
        """
        data: dict[str, Any] = yaml.safe_load(config_text(8000, 9000))
        config = build_config(data, Overrides(), {}, source="adversary.yaml",
                              kinds=REGISTRY.kinds)
        self.assertTrue(config.auth_enabled)
        self.assertEqual(config.failure.total_timeout_budget, BUDGET)
        for fault in FAULTS:
            backend = config.backends[backend_name(fault)]
            self.assertEqual(backend.base_url, f"http://127.0.0.1:9000/{fault.name}/v1")
            self.assertEqual((backend.timeout, backend.idle_timeout), (TIMEOUT, IDLE_TIMEOUT))

    def test_tracebacks(self) -> None:
        """
        Tracebacks in a Twisted log are counted by exception type.
        """
        log = (
            "2026-01-01T00:00:00+0000 [app#critical] internal error\n"
            "\tTraceback (most recent call last):\n"
            '\t  File "x.py", line 1, in f\n'
            "\t    raise RequestRedirect()\n"
            "\twerkzeug.routing.exceptions.RequestRedirect: 308 Permanent Redirect: x\n"
            "\t\n"
            "Traceback (most recent call last):\n"
            '  File "y.py", line 2, in g\n'
            "ValueError: no\n"
            "2026-01-01T00:00:01+0000 [-] fine\n"
        )
        count, kinds = tracebacks(log)
        self.assertEqual(count, 2)
        self.assertEqual(dict(kinds), {"werkzeug.routing.exceptions.RequestRedirect": 1,
                                       "ValueError": 1})


class ReportTests(SynchronousTestCase):
    def results(self, **changes: Any) -> Results:
        results = Results(settings={}, proxy_alive=True)
        results.cases = [CaseResult("a", "g", REJECT, PASS, "400 OpenAI error", 0.01),
                         CaseResult("b", "must-succeed", ACCEPT, PASS, "200", 0.01)]
        results.faults = [FaultResult("f", "about", s, PASS, "502", 0.1) for s in (False, True)]
        results.stall = StallResult(6, "closed", 0, "200 in 3 ms", True)
        results.burst = BurstResult(1000, 1000, 0.5, 0, {})
        for name, value in changes.items():
            setattr(results, name, value)
        return results

    def test_all_targets_hold(self) -> None:
        """
        When every target holds, the exit status is 0.
        """
        results = self.results()
        self.assertTrue(all(t.ok for t in targets(results)))
        self.assertEqual(exit_status(results), 0)
        self.assertIn("1/1 (100.0%)", markdown(results))

    def test_one_miss_fails(self) -> None:
        """
        One failing case, one leak, one traceback, one unserved connect,
        an opened circuit: each alone makes the exit status 1.
        """
        misses: list[dict[str, Any]] = [
            {"cases": [CaseResult("a", "g", REJECT, FAIL, "400 without a body", 0.01)]},
            {"faults": [FaultResult("f", "about", True, LEAK, "200 [DONE]", 0.1)]},
            {"faults": [FaultResult("f", "about", False, HANG, "nothing", 5.0)]},
            {"tracebacks": 1},
            {"burst": BurstResult(1000, 999, 0.5, 0, {"reset": 1})},
            {"burst": BurstResult(1000, 1000, 2.5, 13, {})},
            {"stall": StallResult(6, "open", 6, "200 in 3 ms", False)},
            {"proxy_alive": False},
        ]
        for changes in misses:
            results = self.results(**changes)
            self.assertEqual(exit_status(results), 1, changes)
            self.assertIn("**FAIL**", markdown(results))

    def test_run_failure(self) -> None:
        """
        A run that could not happen exits 2, and says why.
        """
        results = self.results(errors=["the control requests failed"])
        self.assertEqual(exit_status(results), 2)
        self.assertIn("RUN FAILED", markdown(results))

    def test_failing_cases_listed(self) -> None:
        """
        The summary lists each failing case with what came back.
        """
        results = self.results(
            cases=[CaseResult("framing: CL 2**70", "framing", REJECT, FAIL, "no answer in 1 s",
                              1.0)])
        self.assertTrue(re.search(r"FAIL `framing: CL 2\*\*70`: no answer in 1 s",
                                  markdown(results)))
