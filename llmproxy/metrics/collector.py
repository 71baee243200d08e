# -*- test-case-name: tests.test_metrics -*-
"""
What is read from the live runtime when Prometheus scrapes, never on the
hot path: key states and cooldowns, circuit breakers, whether the state
store answers, the capture writer's drops and the streams open now.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmproxy.backends.health import CLOSED, HALF_OPEN, OPEN
from llmproxy.exchange.runtime import Runtime
from llmproxy.state.base import StoreStatus

#: The states a key may be in (L{llmproxy.backends.keypool.KeyPool.status}).
KEY_STATES = ("ok", "rate_limited", "invalid", "quota")
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)


class RuntimeCollector(Collector):
    """
    Read at scrape time: C{runtime()} is the live runtime, C{open_streams()}
    the event streams open, C{dropped()} the capture writer's drop count
    (L{None} without capture), C{store()} the state store's status.
    """

    def __init__(self, runtime: Callable[[], Runtime], open_streams: Callable[[], int],
                 dropped: Callable[[], int] | None = None,
                 store: Callable[[], StoreStatus] | None = None) -> None:
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
        if self.store is not None:
            yield _store(self.store())
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


def _store(status: StoreStatus) -> Metric:
    """
    C{llmproxy_store_up{kind}}: 1 while the state store answers.
    """
    gauge = GaugeMetricFamily("llmproxy_store_up", "Whether the state store answers",
                              labels=("kind",))
    gauge.add_metric((status.kind,), 1.0 if status.up else 0.0)
    return gauge


__all__ = ["BREAKER_STATES", "KEY_STATES", "RuntimeCollector"]
