# -*- test-case-name: tests.test_startup -*-
"""
Failing to start: one line and exit status 1, never a traceback, never a
process that keeps running while it serves nothing.

L{StartupError} is a L{SystemExit}: raised while twistd parses the
options or builds the service, it passes through twistd (whose C{app.run}
catches only L{UsageError}, and would print the whole usage text before
it) and Python prints its message alone and exits 1.  It is an
L{Exception} too, for when L{ListenService} raises it while twistd starts
the application: twistd then removes its pidfile and, when daemonizing,
reports it to the waiting parent process (which otherwise waits forever).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure


class StartupError(SystemExit, Exception):
    """
    llmproxy cannot start; the message says why and names the setting,
    file or address at fault.
    """

    def __init__(self, message: str, logged: bool = False) -> None:
        """
        @param logged: the message is in the log already (twistd's logging
            has begun, and holds standard error): exit 1 without printing
            it again.
        """
        super().__init__(1 if logged else f"llmproxy: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


def cannot_listen(where: str, error: BaseException) -> str:
    """
    One line for a failure to listen on C{where}: the system's reason
    (C{address already in use}) rather than Twisted's wrapping of it.
    """
    if isinstance(error, CannotListenError) and isinstance(error.socketError, BaseException):
        error = error.socketError
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror[:1].lower() + error.strerror[1:]
    else:
        reason = " ".join(str(error).split()) or type(error).__name__
    return f"cannot listen on {where}: {reason}"


class ListenService(Service):
    """
    Listen on C{endpoint} with C{factory}, in C{privilegedStartService}
    (before twistd sheds privileges), as L{StreamServerEndpointService}
    does; but a failure to listen stops llmproxy instead of being logged
    while the process lives on.

    Listening on C{tcp:} or C{unix:} fails at once, while twistd starts the
    application: that raises L{StartupError}.  An endpoint whose listen
    fails later, once the reactor runs, is logged as one critical line and
    the reactor is stopped.

    @ivar port: the listening port, once listening.
    """

    log = Logger()

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, where: str,
        reactor: IReactorCore | None,
    ) -> None:
        """
        @param where: the endpoint as configured, for the error line.
        @param reactor: stopped on a late failure (if there is one).
        """
        self.endpoint = endpoint
        self.factory = factory
        self.where = where
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort | None] | None = None
        self._starting = False
        self._refused: str | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._starting = True
        try:
            listening = self.endpoint.listen(self.factory)
            self._listening = listening.addCallbacks(self._listened, self._failed)
        finally:
            self._starting = False
        if self._refused is not None:
            self.log.critical("llmproxy: {problem}", problem=self._refused)
            raise StartupError(self._refused, logged=True)

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return None
        message = cannot_listen(self.where, failure.value or Exception())
        if self._starting:
            self._refused = message
            return None
        self.log.critical("llmproxy: {problem}", problem=message)
        if self.reactor is not None and self.reactor.running:
            self.reactor.stop()
        return None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        listening.cancel()
        return listening.addCallback(self._stop_port)

    def _stop_port(self, port: IListeningPort | None) -> Deferred[None] | None:
        self.port = None
        if port is None:
            return None
        # IListeningPort allows None; a TCP or UNIX port returns a Deferred.
        return port.stopListening()
