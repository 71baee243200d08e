"""
The fault-injecting upstream: an asyncio TCP server on 127.0.0.1 that
reads HTTP/1.1 requests itself and answers each with the script of the
fault named by the first path segment (C{/<fault>/v1/chat/completions});
C{/ok/...} answers healthily (model C{lots}: a long, fast stream; a field
of the wrong type: OpenAI's 400, L{bench.adversary.typecheck}), and every
C{.../models} lists one model.

Every connection it serves is tracked and cut at L{FaultUpstream.close}
and after L{LIFETIME} seconds, so nothing it starts outlives the run.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import Counter
from dataclasses import dataclass

from bench.adversary.faults import (
    Close, Ctx, Drip, Repeat, Reset, Send, Sleep, Stall, Step, fault_named, healthy, lots,
    response,
)
from bench.adversary.typecheck import rejection

#: The longest any upstream connection lives.
LIFETIME = 30.0
#: How many 1 KiB events the C{lots} model streams.
LOTS = 40_000
_MAX_HEAD = 65536


@dataclass(frozen=True)
class Request:
    """
    One request the upstream read.
    """

    method: str
    path: str
    body: bytes

    @property
    def fault(self) -> str:
        """
        The first path segment: a fault name, or C{ok}.
        """
        return self.path.lstrip("/").split("/", 1)[0]

    @property
    def payload(self) -> dict[str, object]:
        """
        The JSON body (empty when it is not a JSON object).
        """
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class FaultUpstream:
    """
    The server; L{hits} counts the requests each fault received.
    """

    def __init__(self) -> None:
        self.port = 0
        self.hits: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> int:
        """
        Listen on a free port; returns it.
        """
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """
        Stop listening and cut every connection.
        """
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in a task of its own: cancelling the task asyncio
        # made for the connection trips a bug of Python 3.11's streams.
        work = asyncio.ensure_future(asyncio.wait_for(self._serve(reader, writer), LIFETIME))
        self._tasks.add(work)
        try:
            await asyncio.wait([work])
        finally:
            self._tasks.discard(work)
            writer.transport.abort()
        if not work.cancelled():
            # Resets, timeouts and bad requests end a connection; that is all.
            work.exception()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if len(head) > _MAX_HEAD:
                return
            method, path, length = _parse_head(head)
            fault = fault_named(path.lstrip("/").split("/", 1)[0])
            if fault is not None and fault.early:
                self.hits[fault.name] += 1
                await play(fault.script(Ctx(False, self.port)), reader, writer)
                return
            request = Request(method, path, await reader.readexactly(length) if length else b"")
            stream = request.payload.get("stream") is True
            if path.endswith("/models"):
                steps: list[Step] = [Send(response(200, json.dumps(
                    {"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()))]
            elif fault is not None:
                self.hits[fault.name] += 1
                steps = fault.script(Ctx(stream, self.port))
            elif stream and request.payload.get("model") == "lots":
                steps = lots(LOTS)
            else:
                steps = [Send(rejection(request.payload) or healthy(Ctx(stream, self.port)))]
            if not await play(steps, reader, writer):
                return


def _parse_head(head: bytes) -> tuple[str, str, int]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, path, length


async def play(steps: list[Step], reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> bool:
    """
    Perform C{steps}; whether the connection may serve another request.
    """
    for step in steps:
        if isinstance(step, Send):
            writer.write(step.data)
            await writer.drain()
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Drip):
            for i in range(len(step.data)):
                if writer.is_closing():
                    return False
                writer.write(step.data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(step.interval)
        elif isinstance(step, Repeat):
            for _ in range(step.count):
                if writer.is_closing() or reader.at_eof():
                    return False
                writer.write(step.data)
                await writer.drain()
                if step.interval:
                    await asyncio.sleep(step.interval)
        elif isinstance(step, Close):
            writer.close()
            return False
        elif isinstance(step, Reset):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif isinstance(step, Stall):
            while await reader.read(65536):
                pass
            return False
    return True


__all__ = ["FaultUpstream", "LIFETIME", "LOTS", "Request", "play"]
