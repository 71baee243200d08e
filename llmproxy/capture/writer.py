# -*- test-case-name: tests.test_capture_writer -*-
"""
The capture writer: records are numbered and buffered on the reactor
thread and written by one writer thread, so the reactor never waits for
the disk.

The buffer goes to the thread at L{FLUSH_BYTES}, L{FLUSH_ENTRIES} or
L{FLUSH_SECONDS} (a timer on the injected clock), whichever comes first,
and when the service stops.  What waits for the disk is bounded
(C{buffer_bytes}): past it, records are dropped and counted, and the next
record that fits is preceded by a C{dropped} entry saying how many.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from llmproxy.capture.entries import DROPPED, Record

FLUSH_BYTES = 64 * 1024
FLUSH_ENTRIES = 100
FLUSH_SECONDS = 1.0


class Sink(Protocol):
    """
    Where the writer thread puts the lines (L{CaptureFile}).
    """

    def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class CaptureWriter(Service):
    """
    The buffer, its thread and its bound.

    @ivar dropped_total: records dropped since the start.
    @ivar written: records the thread has written.
    @param render: a record as its line (run on the writer thread).
    @param join_timeout: how long stopping waits for the thread.
    """

    log = Logger()

    def __init__(
        self, sink: Sink, clock: IReactorTime, render: Callable[[Record], bytes],
        buffer_bytes: int = 16 << 20, join_timeout: float = 10.0,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.render = render
        self.buffer_bytes = buffer_bytes
        self.join_timeout = join_timeout
        self.dropped_total = 0
        self.written = 0
        self._seq = 0
        self._dropped = 0
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._waiting = 0  # bytes handed to the thread, not yet written
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[Record] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._timer: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self.sink.open()  # a path that cannot be written fails the start
        self._start_thread()

    def stopService(self) -> None:
        super().stopService()
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.join_timeout)
            self._thread = None

    def record(self, record: Record) -> None:
        """
        Number and buffer C{record}, or drop it when the buffer is full.
        Reactor thread only.
        """
        size = record.size()
        with self._lock:
            full = self._waiting + self._pending_bytes + size > self.buffer_bytes
        if full:
            self._dropped += 1
            self.dropped_total += 1
            return
        if self._dropped:
            note = Record(DROPPED, record.at, "llmproxy", "capture",
                          metadata={"dropped": self._dropped})
            self._dropped = 0
            self._add(note, note.size())
        self._add(record, size)

    def _add(self, record: Record, size: int) -> None:
        self._seq += 1
        record.seq = self._seq
        self._pending.append(record)
        self._pending_bytes += size
        if self._pending_bytes >= FLUSH_BYTES or len(self._pending) >= FLUSH_ENTRIES:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(FLUSH_SECONDS, self._timed)

    def _timed(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """
        Hand what is buffered to the writer thread.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        with self._lock:
            self._waiting += size
        self._start_thread()
        self._queue.put(batch)

    def drain(self) -> None:
        """
        Flush, and wait until the thread wrote everything (for tests and
        tools; never on a live reactor).
        """
        self.flush()
        self._queue.join()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmproxy-capture",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    self.sink.close()
                    return
                self._write(batch)
            finally:
                self._queue.task_done()

    def _write(self, batch: list[Record]) -> None:
        try:
            self.sink.write(b"".join(self.render(r) for r in batch))
            self.written += len(batch)
        except Exception as e:
            self.log.error("capture: could not write {n} entries: {error}",
                           n=len(batch), error=f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._waiting -= sum(r.size() for r in batch)


__all__ = ["FLUSH_BYTES", "FLUSH_ENTRIES", "FLUSH_SECONDS", "CaptureWriter", "Sink"]
