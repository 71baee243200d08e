# -*- test-case-name: tests.test_startup -*-
"""
Failing to start (issue #10, items 15 and 16): one line, exit status 1,
no traceback, no process left running while it serves nothing.
L{llmproxy.startup} in-process, then real C{python -m llmproxy} and
C{twistd} processes.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from llmproxy.config import TCPAddress
from llmproxy.startup import ListenService, StartupError, cannot_listen
from llmproxy.workers import ReusePortService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_USE = CannotListenError("127.0.0.1", 8123, OSError(errno.EADDRINUSE, "Address already in use"))


@implementer(IStreamServerEndpoint)
class _Endpoint:
    """
    An endpoint whose C{listen} returns the Deferred it is given.
    """

    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.result


@implementer(IListeningPort)
class _Port:
    stopped = False

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class ListenServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.reactor = MemoryReactor()

    def service(self, result: Deferred[Any]) -> ListenService:
        return ListenService(_Endpoint(result), Site(Resource()), "tcp:8123", self.reactor)

    def critical(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.critical]

    def test_refused_at_once(self) -> None:
        """
        A listen that fails at once (tcp:, unix:) raises L{StartupError}
        from C{privilegedStartService} (twistd calls it before its reactor
        runs), after logging the one line: the process exits 1.
        """
        service = self.service(fail(IN_USE))
        with self.assertRaises(StartupError) as caught:
            service.privilegedStartService()
        self.assertEqual(caught.exception.message,
                         "cannot listen on tcp:8123: address already in use")
        self.assertEqual(caught.exception.code, 1)
        self.assertIsInstance(caught.exception, Exception)
        self.assertEqual(self.critical(),
                         ["llmproxy: cannot listen on tcp:8123: address already in use"])

    def test_start_listens(self) -> None:
        port = _Port()
        service = self.service(succeed(port))
        service.startService()
        self.assertIs(service.port, port)
        self.successResultOf(service.stopService())
        self.assertTrue(port.stopped)
        self.assertIsNone(service.port)

    def test_refused_later(self) -> None:
        """
        A listen that fails once the reactor runs logs the one line and
        stops the reactor.
        """
        pending: Deferred[Any] = Deferred()
        service = self.service(pending)
        service.startService()
        self.reactor.running = True
        pending.errback(IN_USE)
        self.assertEqual(self.critical(),
                         ["llmproxy: cannot listen on tcp:8123: address already in use"])
        self.assertTrue(self.reactor.hasStopped)

    def test_stop_while_listening(self) -> None:
        """
        Stopping before the listen is done cancels it, quietly.
        """
        pending: Deferred[Any] = Deferred()
        service = self.service(pending)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.critical(), [])
        self.assertFalse(self.reactor.hasStopped)

    def test_message(self) -> None:
        self.assertEqual(cannot_listen("unix:/x", CannotListenError(None, "/x", ValueError(
            "AF_UNIX path too long"))), "cannot listen on unix:/x: AF_UNIX path too long")
        self.assertEqual(cannot_listen("x", OverflowError("bind(): port must be 0-65535.\n")),
                         "cannot listen on x: bind(): port must be 0-65535.")


class ReusePortTests(SynchronousTestCase):
    def test_port_in_use(self) -> None:
        """
        C{--workers}' listener fails the same way.
        """
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        service = ReusePortService(MemoryReactor(), TCPAddress("127.0.0.1", port),
                                   Site(Resource()))
        with self.assertRaises(StartupError) as caught:
            service.startService()
        self.assertEqual(caught.exception.message,
                         f"cannot listen on 127.0.0.1:{port}: address already in use")


def _env() -> dict[str, str]:
    """
    The test's environment without anything llmproxy reads.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "LLMPROXY_", "APP_", "LLM_", "CONFIG_FILE",
                                "STATIC_ROUTE", "MODEL_ALIASES"))}
    env["PYTHONPATH"] = ROOT
    return env


class ProcessTests(SynchronousTestCase):
    """
    The real thing: C{python -m llmproxy} (and C{twistd}, which it runs).
    """

    def run_llmproxy(self, *argv: str, command: list[str] | None = None
                     ) -> tuple[int, str, str, float]:
        cwd = self.mktemp()
        os.makedirs(cwd)
        started = time.monotonic()
        done = subprocess.run(
            (command or [sys.executable, "-m", "llmproxy"]) + list(argv),
            capture_output=True, text=True, env=_env(), cwd=cwd, timeout=30,
        )
        self.cwd = cwd
        return done.returncode, done.stdout, done.stderr, time.monotonic() - started

    def held_port(self) -> int:
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen()
        return int(held.getsockname()[1])

    def assertListenRefused(self, out: str, port: int) -> None:
        lines = [line for line in out.splitlines() if "cannot listen" in line]
        self.assertEqual(len(lines), 1, out)
        self.assertTrue(lines[0].endswith(
            f"llmproxy: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"),
            out)
        self.assertNotIn("Traceback", out)
        self.assertNotIn("llmproxy on tcp:", out)

    def test_port_in_use(self) -> None:
        """
        A port in use: exit status 1 within seconds, one line naming the
        address, no traceback.
        """
        port = self.held_port()
        code, out, err, took = self.run_llmproxy("--port", str(port))
        self.assertEqual(code, 1, out + err)
        self.assertLess(took, 15)
        self.assertListenRefused(out + err, port)

    def test_twistd_port_in_use(self) -> None:
        """
        The same through C{twistd -n}, which also removes its pidfile; and
        daemonizing, the waiting parent reports it (rather than waiting
        forever for a child that exited without a word).
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise self.skipTest("no twistd script next to the interpreter")
        port = self.held_port()
        code, out, err, _ = self.run_llmproxy("-n", "llmproxy", "--port", str(port),
                                              command=[twistd])
        self.assertEqual(code, 1, out + err)
        self.assertListenRefused(out + err, port)
        self.assertFalse(os.path.exists(os.path.join(self.cwd, "twistd.pid")))
        code, out, err, took = self.run_llmproxy(
            "--logfile=llmproxy.log", "llmproxy", "--port", str(port), command=[twistd])
        self.assertEqual(code, 1, out + err)
        self.assertLess(took, 15)
        self.assertIn("StartupError: cannot listen on", err)
        with open(os.path.join(self.cwd, "llmproxy.log")) as log:
            self.assertListenRefused(log.read(), port)

    def assertOneLine(self, argv: list[str], expected: str) -> None:
        code, out, err, took = self.run_llmproxy(*argv)
        self.assertEqual((code, out, err), (1, "", expected + "\n"))
        self.assertLess(took, 15)

    def test_config_errors(self) -> None:
        """
        A config error is the error alone on standard error (not after the
        usage text), with a suggestion for a near-miss key, and exit
        status 1.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("proxy_key: [k]\n")
        self.assertOneLine(["--config", path],
                           f"llmproxy: {path}: proxy_key: unknown key; did you mean 'proxy_keys'?")
        with open(path, "w") as f:
            f.write("backends:\n  x:\n    base_url: ${OPENAI_URL}\n    api_key: sk-1\n")
        self.assertOneLine(["--config", path],
                           f"llmproxy: {path}: backends.x.base_url: ${{OPENAI_URL}} is not set")
        self.assertOneLine(["--port", "99999"],
                           "llmproxy: --port: 99999 is not a port number (0-65535)")
        self.assertOneLine(["--workers", "0"], "llmproxy: --workers: must be at least 1, not 0")

    def test_help(self) -> None:
        """
        C{--help} still prints the usage, and succeeds.
        """
        code, out, err, _ = self.run_llmproxy("--help")
        self.assertEqual(code, 0, err)
        self.assertIn("--proxy-key", out)
