# -*- test-case-name: tests.test_metrics -*-
"""
The metrics the exchange's events feed: an observer of the attempt and
reply events (L{llmproxy.exchange.events}) and of the reload events
(namespace L{RELOAD_NAMESPACE}), and the collector that shows them.

Labels stay bounded: backends and key names come from the configuration;
a model the configuration does not name gets a label of its own only while
fewer than C{max_models} such models have one, and is C{other} after.

The counts are plain dicts keyed by label values, and a histogram's a list
of bucket counts: an event costs a few dict look-ups and additions, no
lock and no metric object (prometheus_client's children cost about three
times as much, for thread safety the reactor thread does not need).  They
become metric families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from llmproxy.config import Config
from llmproxy.exchange.events import ATTEMPT_NAMESPACE, REPLY_NAMESPACE
from llmproxy.translate.usage import usage_counts

#: The namespace of the hot-reload helper's events (keys C{ok}, C{error}).
RELOAD_NAMESPACE = "llmproxy.reload"
#: The label of the models past the cap.
OTHER = "other"
#: Token kinds, as the C{type} label says them.
TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")

_FAST = (.005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LONG = (.1, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_GAP = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5)

#: The frontend of a request the exchange never saw (refused, malformed).
_FRONTENDS = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}
_TARGET = ("backend", "model")
_KEYED = ("backend", "model", "key")


def _status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


class ModelLabels:
    """
    A model's label: its own if the configuration names it, or while fewer
    than C{cap} unnamed models have one; else L{OTHER}.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._config: Config | None = None
        self._named: frozenset[str] = frozenset()
        self._seen: set[str] = set()

    def label(self, model: str | None, config: Config) -> str:
        if model is None:
            return ""
        if config is not self._config:
            self._config = config
            self._named = frozenset(m for b in config.backends.values() for m in b.models)
        if model in self._named or model in self._seen:
            return model
        if len(self._seen) < self.cap:
            self._seen.add(model)
            return model
        return OTHER


Labels = tuple[str, ...]


class _Counter:
    """
    A counter's values by label values.
    """

    __slots__ = ("name", "text", "labels", "values")

    def __init__(self, name: str, text: str, labels: Labels) -> None:
        self.name, self.text, self.labels = name, text, labels
        self.values: dict[Labels, float] = {}

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.text, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class _Histogram:
    """
    A histogram's bucket counts (each bucket's own, the last for +Inf) and
    sum, by label values.
    """

    __slots__ = ("name", "text", "labels", "bounds", "series")

    def __init__(self, name: str, text: str, labels: Labels, bounds: tuple[float, ...]) -> None:
        self.name, self.text, self.labels, self.bounds = name, text, labels, bounds
        self.series: dict[Labels, list[float]] = {}

    def observe(self, key: Labels, value: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.text, labels=self.labels)
        names = [repr(b) for b in self.bounds] + ["+Inf"]
        for key, counts in self.series.items():
            total, buckets = 0.0, []
            for name, count in zip(names, counts):
                total += count
                buckets.append((name, total))
            family.add_metric(key, buckets, counts[-1])
        return family


@implementer(ILogObserver)
class EventMetrics(Collector):
    """
    Counters and histograms fed by events, and the collector showing
    them; C{config} says which configuration names the models (the live
    one, read per event).
    """

    def __init__(self, config: Callable[[], Config], max_models: int) -> None:
        self.config = config
        self.models = ModelLabels(max_models)
        self.requests = _Counter("llmproxy_requests", "Replies sent, by route and status",
                                 ("frontend", *_KEYED, "status_class", "outcome"))
        self.duration = _Histogram("llmproxy_request_duration_seconds",
                                   "From a request's arrival to its reply's end",
                                   ("frontend", "streamed"), _LONG)
        self.attempts = _Counter("llmproxy_attempts", "Upstream attempts, by outcome",
                                 (*_KEYED, "outcome", "status_class"))
        self.failovers = _Counter("llmproxy_failovers",
                                  "Attempts on another target or key after a failed one",
                                  _TARGET)
        self.retries = _Counter("llmproxy_retries", "Attempts on the same target and key again",
                                _TARGET)
        self.continuations = _Counter("llmproxy_continuations",
                                      "Streams broken mid-answer continued on this target",
                                      _TARGET)
        self.headers = _Histogram("llmproxy_upstream_headers_seconds",
                                  "From sending an attempt to its answer's headers", _TARGET,
                                  _FAST)
        self.first = _Histogram("llmproxy_time_to_first_token_seconds",
                                "From sending an attempt to its first event written", _TARGET,
                                _FAST)
        self.stream = _Histogram("llmproxy_stream_duration_seconds",
                                 "From sending a streamed attempt to its end", _TARGET, _LONG)
        self.gap = _Histogram("llmproxy_stream_event_gap_seconds",
                              "A stream's mean gap between upstream events", _TARGET, _GAP)
        self.tokens = _Counter("llmproxy_tokens", "Tokens the upstreams reported, by type",
                               (*_KEYED, "type"))
        self.estimated = _Counter("llmproxy_estimated_tokens",
                                  "Output tokens estimated for streams cut before their usage",
                                  _KEYED)
        self.reloads = _Counter("llmproxy_reloads", "Configuration reloads", ("outcome",))
        self._all = (self.requests, self.duration, self.attempts, self.failovers, self.retries,
                     self.continuations, self.headers, self.first, self.stream, self.gap,
                     self.tokens, self.estimated, self.reloads)

    def collect(self) -> Iterator[Metric]:
        for metric in self._all:
            yield metric.family()

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace")
        if namespace == REPLY_NAMESPACE:
            self._reply(event)
        elif namespace == ATTEMPT_NAMESPACE:
            self._attempt(event)
        elif namespace == RELOAD_NAMESPACE:
            self.reloads.inc(("ok" if event.get("ok") else "failed",))

    def _reply(self, event: LogEvent) -> None:
        frontend = event.get("frontend") or _FRONTENDS.get(event["path"], "other")
        model = self.models.label(event.get("model"), self.config())
        self.requests.inc((frontend, event.get("backend") or "", model, event.get("key") or "",
                           _status_class(event["status"]),
                           "completed" if event["completed"] else "client_left"))
        self.duration.observe((frontend, "yes" if event["streamed"] else "no"),
                              event["duration"])
        continued = event.get("continued")
        if continued:
            backend, _, cmodel = continued.partition(":")
            self.continuations.inc((backend, self.models.label(cmodel, self.config())))

    def _attempt(self, event: LogEvent) -> None:
        backend, key = event["backend"], event["key"] or ""
        model = self.models.label(event["model"], self.config())
        target = (backend, model)
        self.attempts.inc((backend, model, key, event["outcome"], _status_class(event["status"])))
        if event["retry"]:
            self.retries.inc(target)
        elif event["attempt"] > 1:
            self.failovers.inc(target)
        if event["time_to_headers"] is not None:
            self.headers.observe(target, event["time_to_headers"])
        first = event["time_to_first_event"]
        if first is not None:
            self.first.observe(target, first)
            self._stream(event, backend, model, first)
        usage = event.get("usage")
        if usage is not None:
            self._usage(usage, backend, model, key)

    def _stream(self, event: LogEvent, backend: str, model: str, first: float) -> None:
        duration = event["duration"]
        self.stream.observe((backend, model), duration)
        count = event.get("events")
        if count and count > 1:
            self.gap.observe((backend, model), max(0.0, duration - first) / (count - 1))

    def _usage(self, usage: dict[str, Any], backend: str, model: str, key: str) -> None:
        if usage.get("estimated"):
            self.estimated.inc((backend, model, key), usage_counts(usage)["completion"])
            return
        counts = usage_counts(usage)
        for kind in TOKEN_TYPES:
            if counts[kind]:
                self.tokens.inc((backend, model, key, kind), counts[kind])


__all__ = ["OTHER", "RELOAD_NAMESPACE", "TOKEN_TYPES", "EventMetrics", "ModelLabels"]
