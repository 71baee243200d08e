# -*- test-case-name: tests.test_capture_proxy -*-
"""
Capture, put together for the service: the file, the writer, the
recorder, and where they hook in (the backend factory, the site's request
class, an observer of the exchange's events).
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from llmproxy import __version__
from llmproxy.backends.base import Backend
from llmproxy.capture.backend import CapturingBackend
from llmproxy.capture.entries import Record, digest, header, render
from llmproxy.capture.recorder import Recorder
from llmproxy.capture.request import request_factory
from llmproxy.capture.rotate import CaptureFile
from llmproxy.capture.writer import CaptureWriter, Sink
from llmproxy.config import BackendConfig, Config
from llmproxy.config.capture import CaptureConfig
from llmproxy.frontends import ProxyApp


class Capture:
    """
    Wire capture for one service.

    @param current: the configuration requests run on now.
    @param sink: where lines go (default: the configured file, rotated).
    """

    def __init__(
        self, config: CaptureConfig, clock: IReactorTime, first: Config,
        current: Callable[[], Config], sink: Sink | None = None,
    ) -> None:
        config_digest = digest(first)
        if sink is None:
            sink = CaptureFile(
                config.file, lambda: header(time.time(), __version__, config_digest),
                max_bytes=config.max_bytes, max_files=config.max_files,
                interval=config.rotate_interval_seconds, total_max_bytes=config.total_max_bytes,
                rotates=config.rotates)
        bodies = config.bodies == "full"

        def line(record: Record) -> bytes:
            return render(record, bodies)

        self.writer = CaptureWriter(sink, clock, line, config.buffer_bytes)
        self.recorder = Recorder(config, self.writer, current)

    def backends(
        self, make: Callable[[BackendConfig], Backend]
    ) -> Callable[[BackendConfig], Backend]:
        """
        C{make}, its backends wrapped in L{CapturingBackend}s.
        """
        recorder = self.recorder
        return lambda backend: CapturingBackend(make(backend), recorder)

    def attach(self, app: ProxyApp) -> None:
        """
        Capture C{app}'s client side and its attempts' outcomes.
        """
        app.request_factory = request_factory(self.recorder)
        app.events.addObserver(self.recorder)


__all__ = ["Capture"]
