"""
The phases of an adversarial run: start the upstream and llmproxy, check
a control request, then bad requests, upstream faults, stalled readers and
a burst of connects; stop everything and read the proxy's log.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.adversary import ANSWER_WITHIN, BUDGET, IDLE_TIMEOUT, STALL
from bench.adversary.cases import ACCEPT, CHAT, Case, all_cases, chat_body, request
from bench.adversary.client import Outcome, exchange, stalled_reader
from bench.adversary.faults import FAULTS, Fault, backend_name
from bench.adversary.proxy import env, start_proxy, tracebacks
from bench.adversary.upstream import FaultUpstream
from bench.adversary.verdicts import Verdict, judge_acceptance, judge_fault, judge_rejection
from bench.procs import ProcessSet, raise_fd_limit

PHASES = ("bad", "faults", "stall", "burst")
#: A connect slower than this waited for a SYN retransmission (>= 1 s).
SLOW_CONNECT = 0.9


@dataclass(frozen=True)
class Settings:
    """
    What to run.

    @ivar concurrency: bad requests in flight at once (heavy ones run alone).
    @ivar fault_concurrency: fault requests in flight at once.
    """

    phases: tuple[str, ...] = PHASES
    verbose: bool = False
    keep_logs: bool = False
    concurrency: int = 8
    fault_concurrency: int = 36
    stalled_clients: int = 6
    burst: int = 1000


@dataclass(frozen=True)
class CaseResult:
    """
    The verdict on one request of the bad-request phase (or the control).
    """

    name: str
    group: str
    expect: str
    verdict: str
    detail: str
    elapsed_s: float


@dataclass(frozen=True)
class FaultResult:
    """
    The verdict on one client request against one injected fault.
    """

    fault: str
    about: str
    stream: bool
    verdict: str
    detail: str
    elapsed_s: float


@dataclass(frozen=True)
class StallResult:
    """
    Stalled readers: the circuit of their healthy backend afterwards, and
    whether a normal request still succeeds.
    """

    clients: int
    circuit: str
    consecutive_failures: int
    normal: str
    ok: bool


@dataclass(frozen=True)
class BurstResult:
    """
    A burst of connects, each one C{GET /healthz}.

    @ivar slow_connects: connects that took longer than L{SLOW_CONNECT}:
        the kernel dropped their first SYN (a full listen queue) and they
        waited for a retransmission.
    """

    connects: int
    served: int
    seconds: float
    slow_connects: int
    failures: dict[str, int]


@dataclass
class Results:
    """
    Everything a run found.
    """

    settings: dict[str, Any]
    control: list[CaseResult] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    faults: list[FaultResult] = field(default_factory=list)
    upstream_hits: dict[str, int] = field(default_factory=dict)
    stall: StallResult | None = None
    burst: BurstResult | None = None
    tracebacks: int = 0
    traceback_kinds: dict[str, int] = field(default_factory=dict)
    proxy_alive: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        """
        A JSON-ready dict of everything.
        """
        return asdict(self)


def say(message: str) -> None:
    """
    Progress, on stderr.
    """
    print(message, file=sys.stderr, flush=True)


def run(settings: Settings) -> Results:
    """
    One whole run (bounded: about a minute, well under two).
    """
    raise_fd_limit()
    return asyncio.run(_run(settings))


async def _run(settings: Settings) -> Results:
    began = time.perf_counter()
    results = Results(settings=asdict(settings))
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-adversary-"))
    upstream = FaultUpstream()
    await upstream.start()
    procs = ProcessSet(workdir, env=env())
    server = None
    try:
        say(f"upstream on 127.0.0.1:{upstream.port}; starting llmproxy ...")
        server = await asyncio.to_thread(start_proxy, procs, workdir, upstream.port)
        port = server.port
        results.control = await control(port)
        if not all(r.verdict == "PASS" for r in results.control):
            results.errors.append("the control requests failed: the run proves nothing")
        else:
            if "bad" in settings.phases:
                results.cases = await bad_requests(port, settings)
            if "faults" in settings.phases:
                results.faults = await faults(port, settings)
            if "stall" in settings.phases:
                results.stall = await stalled_readers(port, settings.stalled_clients)
            if "burst" in settings.phases:
                results.burst = await burst(port, settings.burst)
        results.proxy_alive = server.alive()
    except RuntimeError as e:
        results.errors.append(str(e))
    finally:
        procs.stop_all()
        await upstream.close()
        results.upstream_hits = dict(upstream.hits)
        if server is not None:
            count, kinds = tracebacks(server.log.read_text(errors="replace"))
            results.tracebacks, results.traceback_kinds = count, dict(kinds)
        if settings.keep_logs:
            results.log_dir = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        results.seconds = time.perf_counter() - began
    return results


def _case_result(case: Case, verdict: Verdict, outcome: Outcome, note: str = "") -> CaseResult:
    return CaseResult(case.name, case.group, case.expect, verdict.verdict, verdict.detail + note,
                      round(outcome.elapsed, 4))


async def _judge(port: int, case: Case, limit: float = ANSWER_WITHIN) -> tuple[Verdict, Outcome]:
    outcome = await exchange(port, case.data, limit, case.upload)
    if case.expect == ACCEPT:
        return judge_acceptance(outcome, limit), outcome
    return judge_rejection(outcome, limit, case.also), outcome


async def control(port: int) -> list[CaseResult]:
    """
    A plain and a streaming chat request to the healthy backend: both must
    succeed, or nothing else means anything.
    """
    out = []
    for name, body in [("control: chat", chat_body()), ("control: stream",
                                                        chat_body(stream=True))]:
        case = Case(name, "control", request("POST", CHAT, body), ACCEPT)
        verdict, outcome = await _judge(port, case, 5.0)
        out.append(_case_result(case, verdict, outcome))
    return out


async def settle(port: int, limit: float = 15.0) -> float:
    """
    Wait until the proxy answers C{GET /healthz} again; the seconds it took.
    """
    began = time.perf_counter()
    probe = request("GET", "/healthz", auth=False)
    while time.perf_counter() - began < limit:
        outcome = await exchange(port, probe, 1.0)
        if outcome.response is not None and outcome.response.status == 200:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


async def bad_requests(port: int, settings: Settings) -> list[CaseResult]:
    """
    Every case of L{all_cases}: the light ones a few at a time, then the
    heavy ones alone, each followed by a wait until the proxy answers.
    """
    cases = all_cases()
    say(f"bad requests: {len(cases)} cases ...")
    gate = asyncio.Semaphore(settings.concurrency)

    async def light(case: Case) -> CaseResult:
        async with gate:
            verdict, outcome = await _judge(port, case)
        if settings.verbose:
            say(f"  {verdict.verdict} {case.name}: {verdict.detail}")
        return _case_result(case, verdict, outcome)

    results = list(await asyncio.gather(*(light(c) for c in cases if not c.exclusive)))
    for case in (c for c in cases if c.exclusive):
        verdict, outcome = await _judge(port, case)
        blocked = await settle(port)
        note = f" (then /healthz took {blocked:.2f} s)" if blocked > 0.5 else ""
        if settings.verbose:
            say(f"  {verdict.verdict} {case.name}: {verdict.detail}{note}")
        results.append(_case_result(case, verdict, outcome, note))
    return results


def fault_request(fault: Fault, stream: bool) -> bytes:
    """
    The client request that meets C{fault}.
    """
    fields: dict[str, Any] = {"model": f"{backend_name(fault)}:fault-{fault.name}"}
    if stream:
        fields["stream"] = True
    return request("POST", CHAT, chat_body(**fields))


async def faults(port: int, settings: Settings) -> list[FaultResult]:
    """
    Every fault, with a non-streaming and a streaming request.
    """
    say(f"upstream faults: {len(FAULTS)} faults x 2 requests ...")
    gate = asyncio.Semaphore(settings.fault_concurrency)

    async def one(fault: Fault, stream: bool) -> FaultResult:
        async with gate:
            outcome = await exchange(port, fault_request(fault, stream), BUDGET + 1.0)
        verdict = judge_fault(outcome, stream, BUDGET)
        if settings.verbose:
            say(f"  {verdict.verdict} {fault.name} ({'stream' if stream else 'plain'}): "
                f"{verdict.detail}")
        return FaultResult(fault.name, fault.about, stream, verdict.verdict, verdict.detail,
                           round(outcome.elapsed, 3))

    return list(await asyncio.gather(*(one(f, s) for f in FAULTS for s in (False, True))))


async def stalled_readers(port: int, clients: int) -> StallResult:
    """
    C{clients} streaming clients that never read, on a healthy stream that
    sends a lot; after twice the idle timeout, the backend's circuit must
    still be closed and a normal request must succeed.
    """
    say(f"stalled readers: {clients} clients, {2 * IDLE_TIMEOUT:g} s ...")
    stream = request("POST", CHAT, chat_body(model=f"{STALL}:lots", stream=True))
    readers = [await stalled_reader(port, stream) for _ in range(clients)]
    try:
        await asyncio.sleep(2 * IDLE_TIMEOUT + 0.5)
        status = await exchange(port, request("GET", "/v1/llmproxy/status"), 5.0)
        circuit, failures = _circuit(status)
        normal = judge_acceptance(await exchange(
            port, request("POST", CHAT, chat_body(model=f"{STALL}:m")), 5.0), 5.0)
    finally:
        for reader in readers:
            if reader.transport is not None:
                reader.transport.abort()
    return StallResult(clients, circuit, failures, normal.detail,
                       circuit == "closed" and normal.ok)


def _circuit(outcome: Outcome) -> tuple[str, int]:
    response = outcome.response
    if response is None or response.status != 200:
        return "unknown (status not readable)", -1
    try:
        # One breaker per failing model; none listed means all closed.
        circuits = json.loads(response.body)["backends"][STALL]["circuits"]
        worst = max(circuits.values(), key=lambda c: int(c["consecutive_failures"]),
                    default={"state": "closed", "consecutive_failures": 0})
        return str(worst["state"]), int(worst["consecutive_failures"])
    except (ValueError, KeyError, TypeError):
        return "unknown (status not understood)", -1


async def burst(port: int, connects: int) -> BurstResult:
    """
    C{connects} connections opened at once, each sending C{GET /healthz}.
    """
    say(f"burst: {connects} connects ...")
    probe = request("GET", "/healthz", auth=False)
    began = time.perf_counter()
    outcomes = await asyncio.gather(*(exchange(port, probe, 15.0) for _ in range(connects)))
    seconds = time.perf_counter() - began
    failures: Counter[str] = Counter()
    served = 0
    for outcome in outcomes:
        response = outcome.response
        if response is not None and response.status == 200 and response.complete:
            served += 1
        elif outcome.error:
            failures[outcome.error.split(":", 2)[1].strip() if ":" in outcome.error
                     else outcome.error] += 1
        else:
            failures["reset" if outcome.reset else "closed" if outcome.closed else
                     "timed out" if outcome.timed_out else
                     f"status {response.status if response else '?'}"] += 1
    slow = sum(1 for o in outcomes if o.connect_s > SLOW_CONNECT)
    return BurstResult(connects, served, round(seconds, 3), slow, dict(failures))


__all__ = ["BurstResult", "CaseResult", "FaultResult", "PHASES", "Results", "Settings",
           "StallResult", "burst", "bad_requests", "control", "fault_request", "faults", "run",
           "say", "stalled_readers"]
