"""
C{GET /v1/models} (issue #10, item 5): backends are asked concurrently,
the listing is bounded by one deadline, and a backend's failure is
remembered, so a dead upstream costs the next listings nothing.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends.openai import MODELS_DEADLINE, MODELS_RETRY
from llmproxy.frontends.models import LISTING_DEADLINE, ModelListing
from llmproxy.testing import Stall
from tests.harness import Proxy, client, start


def two_backends(upstream: str, timeout: float = 600) -> dict[str, Any]:
    """
    Backends C{a} (the default) and C{b}, both at the fake, each with a
    configured model to fall back on.
    """
    def backend(model: str) -> dict[str, Any]:
        return {"type": "openai", "base_url": upstream, "api_key": "sk-x",
                "models": [model], "timeout": timeout}

    return {"default_backend": "a", "backends": {"a": backend("a-model"),
                                                 "b": backend("b-model")}}


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await deferLater(reactor, 0.01)


async def listing(case: TestCase, proxy: Proxy) -> Deferred[Any]:
    """
    Start a listing request and let it reach the upstream.
    """
    d = Deferred.fromCoroutine(_get(case, proxy))
    await turns()
    return d


async def _get(case: TestCase, proxy: Proxy) -> set[str]:
    response = await client(case).get(proxy.url + "/v1/models")
    assert response.code == 200, response.code
    return {m["id"] for m in json.loads(await treq.content(response))["data"]}


async def settled(d: Deferred[Any]) -> bool:
    for _ in range(20):
        if d.called:
            return True
        await turns(1)
    return False


CONFIGURED = {"a-model", "a:a-model", "b:b-model"}


class ListingTests(TestCase):
    async def test_backends_are_asked_at_once(self) -> None:
        """
        Two silent backends cost one wait, not one each: the listing is
        done when the first backend's own deadline is, with the configured
        models of both.
        """
        clock = Clock()
        proxy = await start(self, lambda u: two_backends(u, timeout=3), clock=clock)
        proxy.fake.models_reply = Stall()
        d = await listing(self, proxy)
        self.assertEqual(len(proxy.fake.requests), 2, "both asked before any answer")
        clock.advance(3.1)
        self.assertTrue(await settled(d), "one deadline for both backends")
        self.assertEqual(await d, CONFIGURED)

    async def test_one_deadline_bounds_the_listing(self) -> None:
        """
        However long a backend may take, the listing waits
        L{LISTING_DEADLINE} at most.
        """
        clock = Clock()
        proxy = await start(self, two_backends, clock=clock)
        proxy.fake.models_reply = Stall()
        d = await listing(self, proxy)
        clock.advance(LISTING_DEADLINE - 0.1)
        self.assertFalse(await settled(d))
        clock.advance(0.2)
        self.assertTrue(await settled(d))
        self.assertEqual(await d, CONFIGURED)

    async def test_a_dead_backend_costs_nothing_next_time(self) -> None:
        """
        After a backend failed to list its models, listings use its
        configured models at once, without asking it, until
        L{MODELS_RETRY} has passed; a request still in flight is shared,
        not repeated.
        """
        clock = Clock()
        proxy = await start(self, two_backends, clock=clock)
        proxy.fake.models_reply = Stall()
        d = await listing(self, proxy)
        clock.advance(LISTING_DEADLINE + 0.1)
        self.assertEqual(await d, CONFIGURED)

        d = await listing(self, proxy)  # the first requests are still out
        self.assertEqual(len(proxy.fake.requests), 2, "the requests in flight are shared")
        clock.advance(MODELS_DEADLINE - LISTING_DEADLINE)
        self.assertTrue(await settled(d))
        self.assertEqual(await d, CONFIGURED)

        d = await listing(self, proxy)
        self.assertTrue(await settled(d), "answered at once")
        self.assertEqual(await d, CONFIGURED)
        self.assertEqual(len(proxy.fake.requests), 2, "the failed backends are not asked")

        proxy.fake.models_reply = None
        clock.advance(MODELS_RETRY + 1)
        d = await listing(self, proxy)
        self.assertTrue(await settled(d))
        self.assertIn("a:gpt-4o", await d)
        self.assertEqual(len(proxy.fake.requests), 4, "asked again after the retry delay")


class _Backend:
    def __init__(self, name: str, answer: Deferred[list[str]]) -> None:
        from llmproxy.config import BackendConfig

        self.config = BackendConfig(name=name, type="x", models=(f"{name}-configured",))
        self.answer = answer

    async def models(self) -> list[str]:
        return await self.answer


class GatherTests(SynchronousTestCase):
    def test_cancel_stops_waiting_for_every_backend(self) -> None:
        """
        A client that leaves cancels the listing: every backend's wait is
        cancelled, and so is the deadline.
        """
        clock = Clock()
        slow: Deferred[list[str]] = Deferred()
        listing = ModelListing(clock).gather(
            {"x": _Backend("x", slow), "y": _Backend("y", succeed(["y1"]))})  # type: ignore[dict-item]
        listing.cancel()
        self.failureResultOf(listing, CancelledError)
        self.assertTrue(slow.called, "the slow backend's wait is cancelled")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failure_keeps_configured_models(self) -> None:
        clock = Clock()
        broken: Deferred[list[str]] = Deferred()
        listing = ModelListing(clock).gather({"x": _Backend("x", broken)})  # type: ignore[dict-item]
        broken.errback(ValueError("no"))
        self.assertEqual(self.successResultOf(listing), {"x": ["x-configured"]})
        self.assertEqual(len(self.flushLoggedErrors()), 0)
