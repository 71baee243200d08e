# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: one twistd, N processes serving one TCP port.

Every process (the first one and N-1 children it spawns with the same
command line) listens on the port with C{SO_REUSEPORT}, so the kernel
spreads connections across them.  The children are started after the first
process has bound the port (so C{tcp:0} works too) and are stopped with it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Sequence, cast

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IReactorCore,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from llmproxy.config import TCPAddress
from llmproxy.startup import StartupError, cannot_listen


def reuseport_socket(address: TCPAddress) -> socket.socket:
    """
    A listening, non-blocking socket with C{SO_REUSEPORT} set.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
        sock.listen(address.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReusePortService(Service):
    """
    Serve C{site} on a C{SO_REUSEPORT} socket shared with sibling processes.

    @ivar port: the listening port, once started.
    """

    log = Logger()

    def __init__(self, reactor: IReactorSocket, address: TCPAddress, site: Site) -> None:
        self.reactor = reactor
        self.address = address
        self.site = site
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        try:
            sock = reuseport_socket(self.address)
        except OSError as e:
            message = cannot_listen(f"{self.address.host}:{self.address.port}", e)
            self.log.critical("llmproxy: {problem}", problem=message)
            raise StartupError(message, logged=True)
        try:
            # A Site is a ServerFactory; its protocol type (a proxyForInterface)
            # is opaque to mypy.
            factory = cast(ServerFactory, self.site)
            self.port = self.reactor.adoptStreamPort(sock.fileno(), self.address.family, factory)
        finally:
            sock.close()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        # IListeningPort allows None; a TCP port always returns a Deferred.
        return cast("Deferred[None]", port.stopListening())


class _Child(ProcessProtocol):
    def __init__(self, index: int, ended: Deferred[None]) -> None:
        self.index = index
        self.ended = ended

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class WorkerChildren(Service):
    """
    Spawn N-1 copies of this llmproxy, each told its worker index and the
    port to share; stop them (SIGTERM) when this process stops.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorProcess, count: int, argv: Sequence[str],
        listener: ReusePortService,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.listener = listener
        self.children: list[tuple[IProcessTransport, Deferred[None]]] = []

    def command(self, index: int, port: int) -> list[str]:
        """
        The child's command line: the parent's options plus its index and
        the bound port.
        """
        return [sys.executable, "-m", "llmproxy", *self.argv,
                "--worker-index", str(index), "--worker-port", str(port)]

    def startService(self) -> None:
        super().startService()
        listening = self.listener.port
        # A TCP port's host is an IPv4Address or IPv6Address.
        port = (cast("IPv4Address | IPv6Address", listening.getHost()).port if listening
                else self.listener.address.port)
        for index in range(1, self.count):
            ended: Deferred[None] = Deferred()
            process = self.reactor.spawnProcess(
                _Child(index, ended), sys.executable, self.command(index, port),
                env=dict(os.environ), childFDs={0: "w", 1: 1, 2: 2},
            )
            self.children.append((process, ended))
        self.log.info("started {n} worker processes on port {port}", n=self.count - 1, port=port)

    def relay(self, signum: int) -> None:
        """
        Send C{signum} to every worker still running (C{SIGHUP}: each
        reloads its configuration).
        """
        for process, ended in self.children:
            if not ended.called:
                try:
                    process.signalProcess(signum)
                except ProcessExitedAlready:
                    pass

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        from twisted.internet.defer import gatherResults

        waits = []
        for process, ended in self.children:
            if not ended.called:
                try:
                    process.signalProcess(signal.SIGTERM)
                except Exception:
                    pass
                waits.append(ended)
        self.children = []
        return gatherResults(waits)


class IWatchReactor(IReactorCore, IReactorTime):
    """
    What L{ParentWatch} needs: a timer to poll with, and C{stop}.
    """


class ParentWatch(Service):
    """
    In a spawned worker: stop when the process that spawned it is gone
    (even if it was killed without a chance to stop its children).
    """

    def __init__(self, reactor: IWatchReactor, interval: float = 1.0) -> None:
        self.reactor = reactor
        self.interval = interval
        self.parent_pid = os.getppid()
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _check(self) -> None:
        if os.getppid() != self.parent_pid:
            self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
