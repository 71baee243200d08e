# -*- test-case-name: tests.test_metrics -*-
"""
What is read from the live runtime when Prometheus scrapes, never on the
hot path: key states and cooldowns, circuit breakers, the shared state
store (read defensively: its status is whatever C{status()} it has), the
capture writer's drops and the streams open now.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError

from llmproxy.backends.health import CLOSED, HALF_OPEN, OPEN
from llmproxy.exchange.runtime import Runtime

#: The states a key may be in (L{llmproxy.backends.keypool.KeyPool.status}).
KEY_STATES = ("ok", "rate_limited", "invalid", "quota")
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)
#: The keys of a store status that may say whether it is up.
_UP = ("up", "ok", "available", "healthy", "connected")


class RuntimeCollector(Collector):
    """
    Read at scrape time: C{runtime()} is the live runtime, C{open_streams()}
    the event streams open, C{dropped()} the capture writer's drop count
    (L{None} without capture).
    """

    def __init__(self, runtime: Callable[[], Runtime], open_streams: Callable[[], int],
                 dropped: Callable[[], int] | None = None,
                 store: Callable[[], Any] | None = None) -> None:
        self.runtime = runtime
        self.open_streams = open_streams
        self.dropped = dropped
        self.store = store

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime()
        yield GaugeMetricFamily("llmproxy_active_streams", "Event streams being relayed now",
                                value=self.open_streams())
        yield from _keys(runtime)
        yield _breakers(runtime)
        store = _store(runtime, self.store)
        if store is not None:
            yield store
        if self.dropped is not None:
            yield CounterMetricFamily("llmproxy_capture_dropped",
                                      "Capture records dropped (buffer full)",
                                      value=self.dropped())


def _keys(runtime: Runtime) -> Iterator[Metric]:
    state = GaugeMetricFamily("llmproxy_key_state", "1 for each key's current state",
                              labels=("backend", "key", "state"))
    cooldown = GaugeMetricFamily("llmproxy_key_cooldown_seconds",
                                 "Seconds until a cooling key is tried again",
                                 labels=("backend", "key"))
    for backend, pool in runtime.upstreams.pools.items():
        for key in pool.status():
            for name in KEY_STATES:
                state.add_metric((backend, key["name"], name),
                                 1.0 if key["state"] == name else 0.0)
            cooldown.add_metric((backend, key["name"]), float(key["cooldown_left"]))
    yield state
    yield cooldown


def _breakers(runtime: Runtime) -> Metric:
    """
    The breakers of the models that failed lately (the others are closed).
    """
    gauge = GaugeMetricFamily("llmproxy_breaker_state",
                              "1 for each failing model's breaker state",
                              labels=("backend", "model", "state"))
    for backend, breakers in runtime.upstreams.breakers.items():
        for model, status in breakers.status().items():
            for name in BREAKER_STATES:
                gauge.add_metric((backend, model, name), 1.0 if status["state"] == name else 0.0)
    return gauge


def _store(runtime: Runtime, store: Callable[[], Any] | None) -> Metric | None:
    """
    C{llmproxy_store_up{kind}} from the state store's status, when there
    is a store with one.
    """
    found = store() if store is not None else \
        getattr(runtime, "state", None) or getattr(runtime, "store", None)
    status_of = getattr(found, "status", None)
    if not callable(status_of):
        return None
    try:
        status = status_of()
    except CancelledError:
        raise
    except Exception:  # a store's trouble never breaks a scrape
        return None
    if not isinstance(status, Mapping):
        return None
    kind = next((str(status[k]) for k in ("kind", "type", "backend", "store")
                 if isinstance(status.get(k), str)), "unknown")
    up = next((bool(status[k]) for k in _UP if isinstance(status.get(k), bool)), None)
    if up is None:
        text = status.get("state") or status.get("status")
        up = text in ("ok", "up", "connected", "available") if isinstance(text, str) else True
    gauge = GaugeMetricFamily("llmproxy_store_up", "Whether the state store answers",
                              labels=("kind",))
    gauge.add_metric((kind,), 1.0 if up else 0.0)
    return gauge


__all__ = ["BREAKER_STATES", "KEY_STATES", "RuntimeCollector"]
