# -*- test-case-name: tests.test_stream_timeouts -*-
"""
The time limits of one streamed attempt, from C{failure_handling} and the
backend's overrides:

 - C{first_token_timeout}: from the attempt's send to the first event of
   its answer (L{llmproxy.translate.content}); for a model the backend's
   C{reasoning_models} pattern (or the default one) matches,
   C{reasoning_first_token_timeout} instead; 0 turns it off.  It caps the
   wait for the response's headers too: no answer can start before them.
 - C{stream_idle_timeout}: the longest gap between events once the answer
   started, never more than the backend's C{idle_timeout} (0: that one).
 - The backend's C{idle_timeout} keeps bounding the gaps before the
   answer starts, and a client that does not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmproxy.adapt.reasoning import is_reasoning_model
from llmproxy.config.model import BackendConfig, FailureConfig


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """
    @ivar first_token: seconds from the send to the answer's first event
        (0: no limit).
    @ivar stream_idle: the longest gap between events inside the answer.
    """

    first_token: float
    stream_idle: float


def stream_limits(failure: FailureConfig, backend: BackendConfig, model: str) -> StreamLimits:
    """
    The limits of a stream from C{backend}'s C{model}.
    """
    if is_reasoning_model(model, backend.reasoning_models):
        first = _pick(backend.reasoning_first_token_timeout,
                      failure.reasoning_first_token_timeout)
    else:
        first = _pick(backend.first_token_timeout, failure.first_token_timeout)
    idle = _pick(backend.stream_idle_timeout, failure.stream_idle_timeout)
    if idle <= 0 or (0 < backend.idle_timeout < idle):
        idle = backend.idle_timeout
    return StreamLimits(first, idle)


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override


def header_wait(limits: StreamLimits, timeout: float) -> float:
    """
    The wait for a stream's headers: the backend's C{timeout}, within the
    first-token limit.
    """
    return min(timeout, limits.first_token) if limits.first_token > 0 else timeout


__all__ = ["StreamLimits", "header_wait", "stream_limits"]
