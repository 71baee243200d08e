# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics (C{metrics: {enabled, listen, max_models}}): one
L{Metrics} per service, with its own L{CollectorRegistry} (never the
process-wide default), fed by the exchange's events
(L{llmproxy.metrics.observer}) and read from the live runtime when scraped
(L{llmproxy.metrics.collector}), plus the process's RSS and open file
descriptors.

C{/metrics} is served on the main listener behind the proxy key
(L{llmproxy.frontends.app.ProxyApp}), or, when C{metrics.listen} names an
endpoint, there alone and without one (L{metrics_site}).
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from llmproxy.exchange.events import ExchangeEvents
from llmproxy.exchange.runtime import Runtime
from llmproxy.state.base import StoreStatus
from llmproxy.metrics.collector import RuntimeCollector
from llmproxy.metrics.observer import EventMetrics


class Metrics:
    """
    The metrics of one running proxy.  Reload events come with the
    exchange's: the reloader publishes them on the application's events
    (L{llmproxy.reload}).
    """

    def __init__(
        self, runtime: Callable[[], Runtime], events: ExchangeEvents, max_models: int,
        dropped: Callable[[], int] | None = None,
        store: Callable[[], StoreStatus] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.events = EventMetrics(lambda: runtime().config, max_models)
        self.registry.register(self.events)
        self.registry.register(RuntimeCollector(runtime, lambda: events.open_streams, dropped,
                                                store))
        ProcessCollector(registry=self.registry)
        events.addObserver(self.events)

    def render(self) -> bytes:
        """
        The text exposition of every metric now.
        """
        return generate_latest(self.registry)


def answer(request: Any, metrics: Metrics) -> bytes:
    """
    The C{/metrics} answer to C{request}.
    """
    request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
    return metrics.render()


class MetricsPage(Resource):
    """
    C{/metrics}, alone, on a listener of its own.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found: metrics are at /metrics\n"
        return answer(request, self.metrics)


def metrics_site(metrics: Metrics) -> Site:
    """
    The site of C{metrics.listen}: C{/metrics} without a proxy key.
    """
    site = Site(MetricsPage(metrics))
    site.noisy = False
    return site


__all__ = ["Metrics", "MetricsPage", "answer", "metrics_site"]
