# -*- test-case-name: tests.test_state_redis -*-
"""
A real C{redis-server} for tests: started on a free port with a temporary
directory and no persistence, stopped (or killed, and started again on the
same port) on demand, so an outage is a real one.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: What the server prints once it accepts connections.
READY = b"Ready to accept connections"


def free_port() -> int:
    """
    A TCP port nothing listens on now (the server takes it a moment later).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(ProcessProtocol):
    """
    One run of the server: its output, whether it is ready, when it ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if READY in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "redis-server ended before it was ready: " + self.output.decode()[-2000:]))
        self.ended.callback(None)


class RedisServer:
    """
    A C{redis-server} this test owns.

    Typical use in a trial test::

        server = RedisServer(reactor, password="s3cret")
        await server.start()
        self.addCleanup(server.stop)

    @ivar port: the TCP port, kept across L{kill} and L{start}.
    """

    def __init__(
        self, reactor: Any, password: str | None = None, binary: str = "redis-server"
    ) -> None:
        self.reactor = reactor
        self.password = password
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="llmproxy-redis-")
        self._run: _Server | None = None
        self._process: Any = None

    @property
    def url(self) -> str:
        """
        The C{redis://} URL of this server, with its password if it has one.
        """
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.ended.called

    async def start(self, timeout: float = 10.0) -> None:
        """
        Start the server (again, on the same port) and wait until it accepts
        connections.
        """
        if self.running:
            return
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory, "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", ""]
        if self.password:
            argv += ["--requirepass", self.password]
        self._run = run = _Server()
        self._process = self.reactor.spawnProcess(
            run, self.binary, argv, env={}, path=self.directory)
        await run.ready.addTimeout(timeout, self.reactor)

    async def kill(self) -> None:
        """
        End the server at once (SIGKILL), as a crash or a lost host would.
        """
        await self._signal("KILL")

    async def stop(self) -> None:
        """
        End the server (SIGTERM) and remove its directory.
        """
        await self._signal("TERM")
        shutil.rmtree(self.directory, ignore_errors=True)

    async def _signal(self, name: str) -> None:
        run = self._run
        if run is None or run.ended.called:
            return
        self._process.signalProcess(name)
        await run.ended


__all__ = ["RedisServer", "free_port"]
