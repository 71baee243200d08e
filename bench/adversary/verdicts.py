"""
The verdicts, as pure functions of what a client saw (an L{Outcome}).

  - A bad request PASSes when, within its deadline, the client got a 4xx
    whose body is an OpenAI-shaped JSON error, or a clean close (the
    connection ended with no byte of a partial answer).
  - A valid request PASSes when it got a complete 2xx.
  - An upstream fault is a HANG when the client's request did not finish
    within the proxy's total budget plus a second, a LEAK when the client
    sees it as a success (a 2xx that is not an error object; a 2xx stream
    without an in-band error event), else it PASSes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.adversary.client import Outcome
from bench.adversary.wire import Response, is_openai_error, snippet, summarize_stream

PASS = "PASS"
FAIL = "FAIL"
HANG = "HANG"
LEAK = "LEAK"


@dataclass(frozen=True)
class Verdict:
    """
    A verdict and what came back, in a few words.
    """

    verdict: str
    detail: str

    @property
    def ok(self) -> bool:
        """
        Whether the verdict is L{PASS}.
        """
        return self.verdict == PASS


def describe(response: Response) -> str:
    """
    A response in a few words: status, type, body start.
    """
    if response.error:
        return f"{response.error}: {snippet(response.body or b'')}"
    kind = response.header("content-type") or "no content-type"
    body = snippet(response.body, 60) if response.body else "no body"
    cut = "" if response.complete else " (incomplete)"
    return f"{response.status} {kind}{cut}: {body}"


def judge_rejection(outcome: Outcome, limit: float = 1.0, also: tuple[int, ...] = ()
                    ) -> Verdict:
    """
    The verdict on a bad request (see the module docstring); C{also} are
    statuses besides 4xx that are a right answer to it.
    """
    if outcome.error:
        return Verdict(FAIL, outcome.error)
    response = outcome.response
    if response is None:
        if outcome.data:
            return Verdict(FAIL, f"partial head, then {_end(outcome)}: {snippet(outcome.data)}")
        if outcome.closed and outcome.elapsed <= limit:
            return Verdict(PASS, "reset with no answer" if outcome.reset else "clean close")
        return Verdict(FAIL, f"no answer in {limit:g} s")
    if response.error:
        return Verdict(FAIL, describe(response))
    if not response.complete:
        return Verdict(FAIL, f"response not complete in {limit:g} s ({_end(outcome)}): "
                       + describe(response))
    if outcome.elapsed > limit:
        return Verdict(FAIL, f"answered after {outcome.elapsed:.2f} s: {describe(response)}")
    if 400 <= response.status < 500 or response.status in also:
        if is_openai_error(response.body):
            return Verdict(PASS, f"{response.status} OpenAI error")
        return Verdict(FAIL, f"{response.status} without an OpenAI error body: "
                       + describe(response))
    return Verdict(FAIL, describe(response))


def judge_acceptance(outcome: Outcome, limit: float = 1.0) -> Verdict:
    """
    The verdict on a valid request: a complete 2xx in time.
    """
    if outcome.error:
        return Verdict(FAIL, outcome.error)
    response = outcome.response
    if response is None:
        return Verdict(FAIL, f"no answer in {limit:g} s" if not outcome.data
                       else f"partial head: {snippet(outcome.data)}")
    if response.error or not response.complete:
        return Verdict(FAIL, describe(response))
    if 200 <= response.status < 300:
        return Verdict(PASS, f"{response.status} in {outcome.elapsed * 1000:.0f} ms")
    return Verdict(FAIL, describe(response))


def judge_fault(outcome: Outcome, stream: bool, budget: float) -> Verdict:
    """
    The verdict on one client request against an injected upstream fault;
    C{budget} is the proxy's total time budget.
    """
    limit = budget + 1.0
    response = outcome.response
    seen = describe(response) if response is not None else (
        snippet(outcome.data) if outcome.data else "nothing")
    if outcome.error:
        return Verdict(PASS, outcome.error)
    if outcome.timed_out or outcome.elapsed > limit:
        return Verdict(HANG, f"not finished after {limit:g} s: {seen}")
    if response is None or response.error:
        return Verdict(PASS, f"{_end(outcome)} after {seen}")
    if not 200 <= response.status < 300:
        shaped = "OpenAI error" if is_openai_error(response.body) else "not an OpenAI error body"
        return Verdict(PASS, f"{response.status}, {shaped}")
    if not response.complete:
        return Verdict(PASS, f"2xx aborted mid-body ({_end(outcome)}): {seen}")
    if not stream:
        if is_openai_error(response.body):
            return Verdict(PASS, f"{response.status} with an OpenAI error body")
        return Verdict(LEAK, seen)
    summary = summarize_stream(response.body)
    if summary.error:
        return Verdict(PASS, f"{response.status} stream with an in-band error")
    if is_openai_error(response.body):
        return Verdict(PASS, f"{response.status} with an OpenAI error body")
    shape = ("empty stream" if not summary.events else
             f"{summary.content_events} events, {'[DONE]' if summary.done else 'no [DONE]'}, "
             "no error")
    return Verdict(LEAK, f"{response.status} {shape}: {snippet(response.body, 60)}")


def _end(outcome: Outcome) -> str:
    if outcome.reset:
        return "reset"
    if outcome.closed:
        return "closed"
    return "timed out" if outcome.timed_out else "open"


__all__ = ["FAIL", "HANG", "LEAK", "PASS", "Verdict", "describe", "judge_acceptance",
           "judge_fault", "judge_rejection"]
