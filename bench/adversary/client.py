"""
The adversary's raw client: one connection to 127.0.0.1, the bytes of a
request written as they are (optionally followed by an endless upload),
everything the server sends kept until the response is complete, the
server closes, or a deadline passes.

A plain L{asyncio.Protocol} rather than streams: a reset must not lose the
bytes that arrived before it (a C{StreamReader} raises instead of
returning what it buffered), and writing goes on while reading.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from bench.adversary.wire import Response, parse_response


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False
        self.reset = False
        self.changed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.closed = True
        self.changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reset = self.reset or isinstance(exc, ConnectionResetError)
        self.changed.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


@dataclass(frozen=True)
class Outcome:
    """
    What one exchange saw.

    @ivar data: every byte received.
    @ivar closed: the server closed (or reset) the connection.
    @ivar reset: the close was a reset.
    @ivar timed_out: the deadline passed first.
    @ivar elapsed: seconds from the first byte sent to the end (complete
        response, close, or deadline).
    @ivar connect_s: seconds the connect took.
    @ivar error: the connect failed (then nothing else happened).
    @ivar response: L{data} parsed, or L{None} when nothing or only part
        of a head arrived.
    """

    data: bytes
    closed: bool
    reset: bool
    timed_out: bool
    elapsed: float
    connect_s: float
    error: str | None
    response: Response | None


async def exchange(port: int, request: bytes, deadline: float, upload: bytes = b"",
                   whole: bool = True) -> Outcome:
    """
    Send C{request} on a new connection to 127.0.0.1:C{port} and collect
    the answer for at most C{deadline} seconds.

    @param upload: when not empty, written again and again after the
        request (as fast as the server reads) until the exchange ends.
    @param whole: wait for the whole response body; when False, stop at
        the first complete head (for streams the caller does not need).
    """
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Conn, "127.0.0.1", port), deadline)
    except (OSError, asyncio.TimeoutError) as e:
        elapsed = time.perf_counter() - began
        return Outcome(b"", False, False, isinstance(e, asyncio.TimeoutError), elapsed,
                       elapsed, f"connect: {type(e).__name__}: {e}", None)
    connected = time.perf_counter()
    assert conn.transport is not None
    transport = conn.transport
    writer = asyncio.ensure_future(_write(conn, transport, request, upload))
    end = connected + deadline
    timed_out = False
    response: Response | None = None
    try:
        while True:
            response = parse_response(bytes(conn.buf), conn.closed) if conn.buf else None
            if conn.closed or (response is not None and (
                    response.error or response.complete or (not whole and response.status))):
                break
            left = end - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            conn.changed.clear()
            try:
                await asyncio.wait_for(conn.changed.wait(), left)
            except asyncio.TimeoutError:
                timed_out = True
                break
    finally:
        writer.cancel()
        if not transport.is_closing():  # asyncio fails to abort a closed transport
            transport.abort()
    finished = time.perf_counter()
    data = bytes(conn.buf)
    if data and response is None:
        response = parse_response(data, conn.closed)
    return Outcome(data, conn.closed, conn.reset, timed_out, finished - connected,
                   connected - began, None, response)


async def _write(conn: _Conn, transport: asyncio.Transport, request: bytes,
                 upload: bytes) -> None:
    transport.write(request)
    while upload and not conn.closed:
        await conn.writable.wait()
        if conn.closed or transport.is_closing():
            return
        transport.write(upload)


class StalledReader(asyncio.Protocol):
    """
    A client that sent its request and never reads again: reading is
    paused at once, so the kernel's (small) receive buffer fills up and
    the server's writes back up.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)
        transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def stalled_reader(port: int, request: bytes, rcvbuf: int = 4096) -> StalledReader:
    """
    Connect with a small C{SO_RCVBUF}, send C{request}, and never read.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    _, protocol = await loop.create_connection(lambda: StalledReader(request), sock=sock)
    return protocol


__all__ = ["Outcome", "StalledReader", "exchange", "stalled_reader"]
