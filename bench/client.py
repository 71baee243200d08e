"""
Precise single-connection timers, run in the harness process (which is
otherwise idle meanwhile): c=1 request latency over one keep-alive
connection, and per-event timing of streams (time to first token, gaps
between chunks).  Blocking sockets and C{perf_counter_ns}: nothing else
runs in this process while they measure.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from bench.httpwire import ResponseReader, chat_request

_RECV = 65536


class Connection:
    """
    One keep-alive HTTP/1.1 connection to 127.0.0.1:port; reconnects when
    the server closes.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        return sock

    def close(self) -> None:
        """
        Close the socket, if open.
        """
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes, reader: ResponseReader) -> int:
        """
        Send C{request} and read one whole response into C{reader};
        returns the status.
        """
        sock = self.sock or self._connect()
        reader.reset()
        sock.sendall(request)
        recv = sock.recv
        while True:
            data = recv(_RECV)
            if not data:
                self.close()
                if reader.connection_closed():
                    return reader.status
                raise ConnectionError("server closed mid-response")
            if reader.feed(data):
                break
        if not reader.keep_alive:
            self.close()
        return reader.status


def probe_chat(port: int, body: bytes, timeout: float = 2.0) -> int:
    """
    One chat request on a fresh connection: its status, or 0 when the
    server does not answer (not listening yet, reset, timeout).
    """
    conn = Connection(port, timeout)
    try:
        return conn.exchange(chat_request(port, body, stream=False), ResponseReader())
    except OSError:
        return 0
    finally:
        conn.close()


@dataclass
class LatencyResult:
    """
    The outcome of a c=1 latency run.
    """

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        """
        Requests per second over the run.
        """
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


def latency_run(port: int, body: bytes, duration: float, max_requests: int = 50_000,
                warmup: int = 50) -> LatencyResult:
    """
    Sequential non-streaming requests on one keep-alive connection for
    C{duration} seconds (at most C{max_requests}), after C{warmup} untimed
    ones.
    """
    request = chat_request(port, body, stream=False)
    conn = Connection(port)
    reader = ResponseReader()
    result = LatencyResult()
    try:
        for _ in range(warmup):
            conn.exchange(request, reader)
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(duration * 1e9)
        now = start
        while now < deadline and len(result.latencies_ms) < max_requests:
            try:
                status = conn.exchange(request, reader)
            except OSError:
                conn.close()
                result.errors += 1
                now = clock()
                continue
            end = clock()
            if status == 200:
                result.latencies_ms.append((end - now) / 1e6)
            else:
                result.errors += 1
            now = end
        result.seconds = (now - start) / 1e9
    finally:
        conn.close()
    return result


@dataclass
class StreamTiming:
    """
    Per-stream timings of a sequential streaming run.
    """

    ttft_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    events_expected: int = 0
    events_received: int = 0
    errors: int = 0


def stream_run(port: int, body: bytes, streams: int, events_per_stream: int,
               duration_cap: float = 60.0, warmup: int = 2) -> StreamTiming:
    """
    C{streams} sequential streaming requests on one keep-alive connection;
    timestamps every complete C{data:} event.  TTFT is from the request
    being sent to the first event; gaps are between consecutive events.
    """
    request = chat_request(port, body, stream=True)
    conn = Connection(port)
    timing = StreamTiming()
    clock = time.perf_counter_ns
    stamps: list[int] = []
    reader = ResponseReader(count_events=True)
    reader.on_event = lambda: stamps.append(clock())
    deadline = time.perf_counter() + duration_cap
    try:
        for _ in range(warmup):
            conn.exchange(request, reader)
        for _ in range(streams):
            if time.perf_counter() > deadline:
                break
            stamps.clear()
            timing.events_expected += events_per_stream
            start = clock()
            try:
                status = conn.exchange(request, reader)
            except OSError:
                conn.close()
                timing.errors += 1
                continue
            end = clock()
            timing.events_received += len(stamps)
            if status != 200 or not stamps:
                timing.errors += 1
                continue
            timing.ttft_ms.append((stamps[0] - start) / 1e6)
            timing.gaps_ms += [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])]
            timing.total_ms.append((end - start) / 1e6)
    finally:
        conn.close()
    return timing


__all__ = ["Connection", "LatencyResult", "StreamTiming", "latency_run", "probe_chat",
           "stream_run"]
