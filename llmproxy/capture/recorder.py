# -*- test-case-name: tests.test_capture_proxy -*-
"""
What ties a request's entries together: each captured request gets a
L{RequestCapture} (its id, session, secrets and attempt count), held in
the context variable L{CURRENT} while the request is processed.  The
exchange's coroutine copies the context when it starts, so the backends
it calls (L{llmproxy.capture.backend}) and its attempt events find their
request there, without a change to the exchange.

The filters: C{sessions} decides at the request's arrival;
C{backends} and C{models} at each attempt.  With either of the latter set,
a request's client-side entries are held until one of its attempts is
captured, and dropped with the request otherwise.
"""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar
from typing import Any, Callable, Iterable

from twisted.logger import ILogObserver
from zope.interface import implementer

from llmproxy.capture.entries import ATTEMPT, Record
from llmproxy.capture.redact import Redactor
from llmproxy.capture.writer import CaptureWriter
from llmproxy.config import Config
from llmproxy.config.capture import CaptureConfig

#: The capture of the request being processed, if it is captured.
CURRENT: ContextVar[RequestCapture | None] = ContextVar("llmproxy_capture", default=None)


def config_secrets(config: Config) -> frozenset[str]:
    """
    Every secret a configuration holds: proxy keys and backend key values.
    """
    keys = {k.value for b in config.backends.values() for k in b.keys}
    return frozenset(keys | set(config.proxy_keys))


class RequestCapture:
    """
    One captured request.

    @ivar admitted: whether its entries are written (else held, see the
        module's filters).
    """

    def __init__(
        self, recorder: Recorder, request_id: str, session_id: str | None, model: str | None,
        redactor: Redactor, admitted: bool,
    ) -> None:
        self.recorder = recorder
        self.request_id = request_id
        self.session_id = session_id
        self.model = model
        self.redactor = redactor
        self.admitted = admitted
        self.attempts = 0
        self._held: list[Record] = []

    def emit(self, record: Record) -> None:
        """
        Write C{record} as this request's, or hold it until admitted.
        """
        record.request_id = self.request_id
        record.session_id = self.session_id
        record.redactor = self.redactor
        if self.admitted:
            self.recorder.writer.record(record)
        else:
            self._held.append(record)

    def admit(self) -> None:
        """
        Write this request's entries from now on, the held ones first.
        """
        if self.admitted:
            return
        self.admitted = True
        held, self._held = self._held, []
        for record in held:
            self.recorder.writer.record(record)


@implementer(ILogObserver)
class Recorder:
    """
    The filters, the request ids, the secrets and the writer.

    @param current: the configuration requests run on now (its secrets are
        redacted).
    """

    def __init__(
        self, config: CaptureConfig, writer: CaptureWriter, current: Callable[[], Config],
    ) -> None:
        self.config = config
        self.writer = writer
        self.current = current
        self.clock = writer.clock
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self._redactor: tuple[Config | None, Redactor] = (None, Redactor(()))

    def redactor(self, bearers: Iterable[str] = ()) -> Redactor:
        """
        The redactor of the current configuration's secrets (made once per
        configuration), with C{bearers} too when they are not among them.
        """
        config = self.current()
        if self._redactor[0] is not config:
            self._redactor = (config, Redactor(config_secrets(config)))
        redactor = self._redactor[1]
        extra = set(bearers).difference(redactor.secrets)
        return Redactor(redactor.secrets + tuple(extra)) if extra else redactor

    def begin(
        self, session_id: str | None, model: str | None, bearers: Iterable[str]
    ) -> RequestCapture | None:
        """
        The capture of a request that arrived, or L{None} when the
        filters leave it out.
        """
        c = self.config
        if c.sessions and session_id not in c.sessions:
            return None
        admitted = not (c.backends or c.models) or (not c.backends and model in c.models)
        return RequestCapture(self, f"{self._prefix}-{next(self._ids)}", session_id, model,
                              self.redactor(bearers), admitted)

    def wants(self, capture: RequestCapture, backend: str, model: str | None) -> bool:
        """
        Whether an attempt to C{backend} for C{model} is captured.
        """
        c = self.config
        if c.backends and backend not in c.backends:
            return False
        return not c.models or model in c.models or capture.model in c.models

    def __call__(self, event: dict[str, Any]) -> None:
        """
        An exchange event (an L{ILogObserver}): an attempt's outcome
        becomes an C{attempt} entry of its request.
        """
        capture = CURRENT.get()
        if capture is None or "outcome" not in event or not capture.admitted:
            return
        if not self.wants(capture, event["backend"], event["model"]):
            return
        capture.emit(Record(
            ATTEMPT, self.clock.seconds(), "upstream", "proxy", backend=event["backend"],
            model=event["model"], key_name=event["key"], attempt=event["attempt"],
            status=event["status"], metadata={
                k: event[k] for k in ("outcome", "error", "time_to_headers",
                                      "time_to_first_event", "duration")
            },
        ))


__all__ = ["CURRENT", "Recorder", "RequestCapture", "config_secrets"]
