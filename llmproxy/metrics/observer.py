# -*- test-case-name: tests.test_metrics -*-
"""
The metrics the exchange's events feed: an observer of the attempt and
reply events (L{llmproxy.exchange.events}) and of the reload events
(namespace L{RELOAD_NAMESPACE}), counting into its own
L{CollectorRegistry}.

Labels stay bounded: backends and key names come from the configuration;
a model the configuration does not name gets a label of its own only while
fewer than C{max_models} such models have one, and is C{other} after.  Each
label set's child is kept in a dict, so an event costs a few dict look-ups
and the increments.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from prometheus_client import CollectorRegistry, Counter, Histogram
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


class _Family:
    """
    A metric and its children by label values, kept.
    """

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[Hashable, Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


@implementer(ILogObserver)
class EventMetrics:
    """
    Counters and histograms fed by events; C{config} says which
    configuration names the models (the live one, read per event).
    """

    def __init__(self, registry: CollectorRegistry, config: Callable[[], Config],
                 max_models: int) -> None:
        self.config = config
        self.models = ModelLabels(max_models)
        self._last_reload: LogEvent | None = None

        def family(kind: Any, name: str, text: str, labels: tuple[str, ...],
                   **kw: Any) -> _Family:
            return _Family(kind(name, text, labels, registry=registry, **kw))

        self.requests = family(Counter, "llmproxy_requests", "Replies sent, by route and status",
                               ("frontend", *_KEYED, "status_class", "outcome"))
        self.duration = family(Histogram, "llmproxy_request_duration_seconds",
                               "From a request's arrival to its reply's end",
                               ("frontend", "streamed"), buckets=_LONG)
        self.attempts = family(Counter, "llmproxy_attempts", "Upstream attempts, by outcome",
                               (*_KEYED, "outcome", "status_class"))
        self.failovers = family(Counter, "llmproxy_failovers",
                                "Attempts on another target or key after a failed one",
                                _TARGET)
        self.retries = family(Counter, "llmproxy_retries",
                              "Attempts on the same target and key again", _TARGET)
        self.continuations = family(Counter, "llmproxy_continuations",
                                    "Streams broken mid-answer continued on this target",
                                    _TARGET)
        self.headers = family(Histogram, "llmproxy_upstream_headers_seconds",
                              "From sending an attempt to its answer's headers", _TARGET,
                              buckets=_FAST)
        self.first = family(Histogram, "llmproxy_time_to_first_token_seconds",
                            "From sending an attempt to its first event written", _TARGET,
                            buckets=_FAST)
        self.stream = family(Histogram, "llmproxy_stream_duration_seconds",
                             "From sending a streamed attempt to its end", _TARGET,
                             buckets=_LONG)
        self.gap = family(Histogram, "llmproxy_stream_event_gap_seconds",
                          "A stream's mean gap between upstream events", _TARGET,
                          buckets=_GAP)
        self.tokens = family(Counter, "llmproxy_tokens",
                             "Tokens the upstreams reported, by type", (*_KEYED, "type"))
        self.estimated = family(Counter, "llmproxy_estimated_tokens",
                                "Output tokens estimated for streams cut before their usage",
                                _KEYED)
        self.reloads = family(Counter, "llmproxy_reloads", "Configuration reloads",
                              ("outcome",))

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace")
        if namespace == REPLY_NAMESPACE:
            self._reply(event)
        elif namespace == ATTEMPT_NAMESPACE:
            self._attempt(event)
        elif namespace == RELOAD_NAMESPACE:
            self.reload(event)

    def reload(self, event: LogEvent) -> None:
        """
        Count a reload event (once, should it reach us twice).
        """
        if event.get("log_namespace") != RELOAD_NAMESPACE or event is self._last_reload:
            return
        self._last_reload = event
        self.reloads("ok" if event.get("ok") else "failed").inc()

    def _reply(self, event: LogEvent) -> None:
        frontend = event.get("frontend") or "other"
        model = self.models.label(event.get("model"), self.config())
        self.requests(frontend, event.get("backend") or "", model, event.get("key") or "",
                      _status_class(event["status"]),
                      "completed" if event["completed"] else "client_left").inc()
        self.duration(frontend, "yes" if event["streamed"] else "no").observe(event["duration"])
        continued = event.get("continued")
        if continued:
            backend, _, cmodel = continued.partition(":")
            self.continuations(backend, self.models.label(cmodel, self.config())).inc()

    def _attempt(self, event: LogEvent) -> None:
        backend, key = event["backend"], event["key"] or ""
        model = self.models.label(event["model"], self.config())
        self.attempts(backend, model, key, event["outcome"],
                      _status_class(event["status"])).inc()
        if event["retry"]:
            self.retries(backend, model).inc()
        elif event["attempt"] > 1:
            self.failovers(backend, model).inc()
        if event["time_to_headers"] is not None:
            self.headers(backend, model).observe(event["time_to_headers"])
        first = event["time_to_first_event"]
        if first is not None:
            self.first(backend, model).observe(first)
            self._stream(event, backend, model, first)
        usage = event.get("usage")
        if usage is not None:
            self._usage(usage, backend, model, key)

    def _stream(self, event: LogEvent, backend: str, model: str, first: float) -> None:
        duration = event["duration"]
        self.stream(backend, model).observe(duration)
        count = event.get("events")
        if count and count > 1:
            self.gap(backend, model).observe(max(0.0, duration - first) / (count - 1))

    def _usage(self, usage: dict[str, Any], backend: str, model: str, key: str) -> None:
        if usage.get("estimated"):
            self.estimated(backend, model, key).inc(usage_counts(usage)["completion"])
            return
        counts = usage_counts(usage)
        for kind in TOKEN_TYPES:
            if counts[kind]:
                self.tokens(backend, model, key, kind).inc(counts[kind])


__all__ = ["OTHER", "RELOAD_NAMESPACE", "TOKEN_TYPES", "EventMetrics", "ModelLabels"]
