"""
The built-in load generator (used when wrk is not installed, and always for
the 1,000-stream test).  It runs as its own process so it does not share
an interpreter with the harness or the server; on a 2-core machine it
still competes with them for CPU.

Two modes, each printing one JSON object on stdout:
  - C{throughput}: C{--conns} keep-alive connections, each sending the next
    request as soon as the previous response completed, for C{--duration}
    seconds.
  - C{streams}: open C{--conns} connections first (in batches), then send
    one streaming request on each at once and count the SSE events every
    stream delivers against the number expected.

C{python -m bench.loadgen --mode throughput --port P --conns 64 --duration 5 [--stream]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from bench.httpwire import ProtocolError, ResponseReader, chat_request
from bench.payloads import request_body
from bench.stats import percentile


class _Run:
    """
    Shared state of one throughput run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, request: bytes,
                 stream: bool, deadline: float) -> None:
        self.loop = loop
        self.port = port
        self.request = request
        self.stream = stream
        self.deadline = deadline
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.reconnects = 0
        self.events = 0
        self.closed = loop.create_future()
        self.open = 0

    @property
    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Looper(self), "127.0.0.1", self.port)
        except OSError:
            self.errors += 1
            if self.running:
                await asyncio.sleep(0.01)
                self.loop.create_task(self.connect())
            else:
                self._settle()

    def _settle(self) -> None:
        if self.open == 0 and not self.closed.done():
            self.closed.set_result(None)


class _Looper(asyncio.Protocol):
    """
    One keep-alive connection sending requests back to back.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.reader = ResponseReader(count_events=run.stream)
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.run.open += 1
        self._send()

    def _send(self) -> None:
        self.reader.reset()
        self.busy = True
        self.sent = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        try:
            done = self.reader.feed(data)
        except (ProtocolError, ValueError):
            self.run.errors += 1
            self.busy = False
            assert self.transport is not None
            self.transport.abort()
            return
        if done:
            self._complete()

    def _complete(self) -> None:
        run = self.run
        self.busy = False
        if self.reader.status == 200:
            run.latencies_ns.append(time.perf_counter_ns() - self.sent)
            run.events += self.reader.events
        else:
            run.errors += 1
        assert self.transport is not None
        if run.running and self.reader.keep_alive:
            self._send()
        else:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.busy and self.reader.connection_closed():
            self._complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        run.open -= 1
        if self.busy:
            run.errors += 1
        if run.running:
            run.reconnects += 1
            run.loop.create_task(run.connect())
        else:
            run._settle()


async def throughput(port: int, conns: int, duration: float, stream: bool) -> dict[str, Any]:
    """
    Keep C{conns} connections busy for C{duration} seconds.
    """
    loop = asyncio.get_running_loop()
    request = chat_request(port, request_body(stream), stream)
    start = time.monotonic()
    run = _Run(loop, port, request, stream, start + duration)
    await asyncio.gather(*(run.connect() for _ in range(conns)))
    try:
        await asyncio.wait_for(run.closed, timeout=duration + 30)
    except asyncio.TimeoutError:
        pass
    seconds = min(time.monotonic() - start, duration) or duration
    lat = sorted(x / 1e6 for x in run.latencies_ns)
    return {
        "tool": "python-asyncio",
        "requests": len(lat),
        "errors": run.errors,
        "reconnects": run.reconnects,
        "seconds": seconds,
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50, presorted=True),
        "p99_ms": percentile(lat, 99, presorted=True),
        "events": run.events,
    }


# the many-streams mode


class _Streamer(asyncio.Protocol):
    """
    One connection carrying one streaming request.
    """

    def __init__(self, soak: _Soak) -> None:
        self.soak = soak
        self.reader = ResponseReader(count_events=True)
        self.transport: asyncio.Transport | None = None
        self.receiving = False
        self.finished = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        if not self.receiving:
            self.receiving = True
            self.soak.receiving += 1
            self.soak.peak = max(self.soak.peak, self.soak.receiving)
        try:
            done = self.reader.feed(data)
        except (ProtocolError, ValueError):
            self._finish(ok=False)
            return
        if done:
            self._finish(ok=self.reader.status == 200)

    def eof_received(self) -> bool | None:
        if not self.finished and self.reader.connection_closed():
            self._finish(ok=self.reader.status == 200)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._finish(ok=False)

    def _finish(self, ok: bool) -> None:
        self.finished = True
        soak = self.soak
        if self.receiving:
            soak.receiving -= 1
        soak.events += self.reader.events
        if ok:
            soak.completed += 1
        else:
            soak.errors += 1
        soak.pending -= 1
        if soak.pending == 0 and not soak.all_done.done():
            soak.all_done.set_result(None)
        if self.transport is not None:
            self.transport.close()


class _Soak:
    """
    Shared state of the many-streams run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.receiving = 0
        self.peak = 0
        self.events = 0
        self.completed = 0
        self.errors = 0
        self.pending = 0
        self.all_done = loop.create_future()


async def _open(port: int, count: int, soak: _Soak, batch: int) -> tuple[list[_Streamer], int]:
    streamers: list[_Streamer] = []
    failed = 0
    for first in range(0, count, batch):
        size = min(batch, count - first)
        results = await asyncio.gather(*(
            soak.loop.create_connection(lambda: _Streamer(soak), "127.0.0.1", port)
            for _ in range(size)
        ), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                failed += 1
            else:
                streamers.append(result[1])
    return streamers, failed


async def streams(port: int, conns: int, events_per_stream: int, timeout: float,
                  batch: int = 50) -> dict[str, Any]:
    """
    Open C{conns} connections, then start one stream on each at once.
    """
    loop = asyncio.get_running_loop()
    soak = _Soak(loop)
    opened_at = time.monotonic()
    streamers, connect_failed = await _open(port, conns, soak, batch)
    open_seconds = time.monotonic() - opened_at
    request = chat_request(port, request_body(True), stream=True)
    soak.pending = len(streamers)
    start = time.monotonic()
    for streamer in streamers:
        assert streamer.transport is not None
        streamer.transport.write(request)
    if streamers:
        try:
            await asyncio.wait_for(asyncio.shield(soak.all_done), timeout=timeout)
        except asyncio.TimeoutError:
            pass
    seconds = time.monotonic() - start
    unfinished = sum(1 for s in streamers if not s.finished)
    events = soak.events + sum(s.reader.events for s in streamers if not s.finished)
    for streamer in streamers:
        if streamer.transport is not None:
            streamer.transport.abort()
    expected = conns * events_per_stream
    return {
        "tool": "python-asyncio",
        "streams": conns,
        "connect_failed": connect_failed,
        "open_seconds": open_seconds,
        "completed": soak.completed,
        "errors": soak.errors,
        "unfinished": unfinished,
        "peak_receiving": soak.peak,
        "events_expected": expected,
        "events_received": events,
        "frames_lost": expected - events,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    """
    Run one load and print its JSON result.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--mode", choices=("throughput", "streams"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--events-per-stream", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    from bench.procs import raise_fd_limit

    raise_fd_limit()
    if args.mode == "throughput":
        result = asyncio.run(throughput(args.port, args.conns, args.duration, args.stream))
    else:
        result = asyncio.run(streams(args.port, args.conns, args.events_per_stream,
                                     args.timeout))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
