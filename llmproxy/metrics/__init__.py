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
from twisted.application.service import Service
from twisted.logger import ILogObserver, LogEvent, LogPublisher, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from llmproxy.exchange.events import ExchangeEvents
from llmproxy.exchange.runtime import Runtime
from llmproxy.state.base import StoreStatus
from llmproxy.metrics.collector import RuntimeCollector
from llmproxy.metrics.observer import RELOAD_NAMESPACE, EventMetrics


class Metrics(Service):
    """
    The metrics of one running proxy.  As a service it also listens for
    reload events on C{log} (the process's main log), between start and
    stop.
    """

    def __init__(
        self, runtime: Callable[[], Runtime], events: ExchangeEvents, max_models: int,
        dropped: Callable[[], int] | None = None, log: LogPublisher = globalLogPublisher,
        store: Callable[[], StoreStatus] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.events = EventMetrics(lambda: runtime().config, max_models)
        self.registry.register(self.events)
        self.registry.register(RuntimeCollector(runtime, lambda: events.open_streams, dropped,
                                                store))
        ProcessCollector(registry=self.registry)
        self._log = log
        self._reloads = _Reloads(self.events)
        events.addObserver(self.events)

    def startService(self) -> None:
        super().startService()
        self._log.addObserver(self._reloads)

    def stopService(self) -> None:
        self._log.removeObserver(self._reloads)
        super().stopService()

    def render(self) -> bytes:
        """
        The text exposition of every metric now.
        """
        return generate_latest(self.registry)


@implementer(ILogObserver)
class _Reloads:
    """
    The main log's reload events, for L{EventMetrics.reload}.
    """

    def __init__(self, metrics: EventMetrics) -> None:
        self.metrics = metrics

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == RELOAD_NAMESPACE:
            self.metrics.reload(event)


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
