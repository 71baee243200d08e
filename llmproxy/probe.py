# -*- test-case-name: tests.test_check -*-
"""
C{llmproxy check --probe}: ask each backend's C{/models} with each of its
keys, all at once, and say per key (by name, never by value) whether it
works: C{ok}, C{unauthorized} (401/403), C{quota} (429 or 402: rate limited
or out of credit), C{unreachable} (no answer within the timeout), or
C{status N} for anything else.

Only backends that speak to an HTTP upstream with API keys are asked
(types whose keys are accounts, and the mock, are not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from llmproxy.backends.base import IUpstreamReactor
from llmproxy.config import ApiKey, BackendConfig, BackendKind, Config

OK = "ok"
UNAUTHORIZED = "unauthorized"
QUOTA = "quota"
UNREACHABLE = "unreachable"
NO_KEY = "no key"


@dataclass(frozen=True)
class Probe:
    """
    One key's answer.  C{key} is the key's name; C{detail} says more for
    a person (the variable to set, the exception met).
    """

    backend: str
    key: str
    outcome: str
    detail: str = ""

    @property
    def line(self) -> str:
        more = f" ({self.detail})" if self.detail else ""
        return f"probe {self.backend} key {self.key}: {self.outcome}{more}"

    @property
    def failed(self) -> bool:
        return self.outcome not in (OK, NO_KEY)


def outcome_of(status: int) -> str:
    """
    What an upstream's status to C{GET /models} says of the key.
    """
    if 200 <= status < 300:
        return OK
    if status in (401, 403):
        return UNAUTHORIZED
    if status in (402, 429):
        return QUOTA
    return f"status {status}"


async def probe(
    config: Config, reactor: IUpstreamReactor, kinds: Sequence[BackendKind],
    timeout: float = 10.0,
) -> list[Probe]:
    """
    Every probe of C{config}'s backends, in backend and key order.
    """
    by_name = {kind.name: kind for kind in kinds}
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool, connectTimeout=timeout)
    asks: list[Deferred[Probe]] = []
    found: list[Probe] = []
    for name, backend in config.backends.items():
        kind = by_name.get(backend.type)
        if kind is None or not kind.uses_url or kind.keys is not None:
            continue
        if not backend.keys and backend.key_env:
            found.append(Probe(name, "-", NO_KEY, f"{backend.key_env} is not set"))
            continue
        for key in backend.keys or (None,):
            asks.append(Deferred.fromCoroutine(_ask(agent, reactor, backend, key, timeout)))
    try:
        return found + list(await gatherResults(asks))
    finally:
        await pool.closeCachedConnections()


async def _ask(
    agent: Agent, clock: IReactorTime, backend: BackendConfig, key: ApiKey | None,
    timeout: float,
) -> Probe:
    name = key.name if key is not None else "(none)"
    headers = Headers({b"accept": [b"application/json"]})
    if key is not None:
        headers.addRawHeader(b"authorization", f"Bearer {key.value}".encode("utf-8"))
    url = backend.base_url.rstrip("/") + "/models"
    try:
        asking = agent.request(b"GET", url.encode("utf-8"), headers)
        asking.addTimeout(timeout, clock)
        response = await asking
        reading = readBody(response)
        reading.addTimeout(timeout, clock)
        await reading
    except CancelledError:
        raise
    except Exception as e:
        detail = (f"no answer in {timeout:g} s" if isinstance(e, TimeoutError)
                  else type(e).__name__)
        return Probe(backend.name, name, UNREACHABLE, detail)
    return Probe(backend.name, name, outcome_of(response.code))


__all__ = ["NO_KEY", "OK", "Probe", "QUOTA", "UNAUTHORIZED", "UNREACHABLE", "outcome_of",
           "probe"]
