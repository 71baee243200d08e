"""
--workers: the endpoint parsing, SO_REUSEPORT sharing, and a real
two-process run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from llmproxy.config import TCPAddress, parse_tcp
from llmproxy.workers import ReusePortService, WorkerChildren
from tests.harness import client


class ParseTests(SynchronousTestCase):
    def test_tcp_forms(self) -> None:
        self.assertEqual(parse_tcp("tcp:8000:interface=127.0.0.1"), TCPAddress("127.0.0.1", 8000))
        self.assertEqual(parse_tcp("tcp:0"), TCPAddress("0.0.0.0", 0))
        self.assertEqual(parse_tcp("tcp:9:backlog=5:interface=::1".replace("::1", "\\:\\:1")),
                         TCPAddress("::1", 9, 5))

    def test_other_endpoints_are_not_tcp(self) -> None:
        for text in ("unix:/tmp/s", "ssl:443:privateKey=k.pem", "systemd:domain=INET:index=0"):
            self.assertIsNone(parse_tcp(text))

    def test_child_command_carries_index_and_port(self) -> None:
        children = WorkerChildren(None, 3, ["--config", "c.yaml", "--workers", "3"], None)  # type: ignore[arg-type]
        command = children.command(2, 8123)
        self.assertEqual(command[:3], [sys.executable, "-m", "llmproxy"])
        self.assertEqual(command[3:], ["--config", "c.yaml", "--workers", "3",
                                       "--worker-index", "2", "--worker-port", "8123"])


class _Hello(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: object) -> bytes:
        return self.name


class ReusePortTests(TestCase):
    async def test_two_listeners_share_one_port(self) -> None:
        first = ReusePortService(reactor, TCPAddress("127.0.0.1", 0), Site(_Hello(b"one")))
        first.startService()
        self.addCleanup(first.stopService)
        assert first.port is not None
        port = first.port.getHost().port
        second = ReusePortService(reactor, TCPAddress("127.0.0.1", port), Site(_Hello(b"two")))
        second.startService()
        self.addCleanup(second.stopService)
        assert second.port is not None
        self.assertEqual(second.port.getHost().port, port)
        response = await client(self).get(f"http://127.0.0.1:{port}/")
        self.assertIn(await treq.content(response), (b"one", b"two"))


class ProcessTests(TestCase):
    timeout = 60

    async def test_two_processes_serve_and_stop_together(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))}
        env.pop("OPENAI_API_KEY", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "llmproxy", "--workers", "2", "--listen",
             "tcp:0:interface=127.0.0.1", "--default-backend", "mock"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        port = None
        lines = []
        deadline = time.monotonic() + 30
        os.set_blocking(process.stdout.fileno(), False)  # type: ignore[union-attr]
        buffer = b""
        while port is None and time.monotonic() < deadline:
            chunk = process.stdout.read() or b""  # type: ignore[union-attr]
            buffer += chunk
            match = re.search(rb"started 1 worker processes on port (\d+)", buffer)
            if match:
                port = int(match.group(1))
            await deferLater(reactor, 0.05)
        lines.append(buffer)
        self.assertIsNotNone(port, buffer.decode(errors="replace"))
        body = json.dumps({"model": "mock-echo", "messages": [{"role": "user", "content": "w"}]})
        for _ in range(100):
            buffer += process.stdout.read() or b""  # type: ignore[union-attr]
            if buffer.count(b"llmproxy on tcp:") >= 2:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(buffer.count(b"llmproxy on tcp:"), 2, buffer.decode(errors="replace"))
        for _ in range(4):
            response = await client(self).post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                               data=body.encode())
            self.assertEqual(response.code, 200)
            await treq.content(response)
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                break
            await deferLater(reactor, 0.05)
        # twistd shuts down cleanly, then re-raises SIGTERM so its exit
        # status says what stopped it.
        self.assertIn(process.poll(), (0, -signal.SIGTERM))
        self.assertIn(b"Server Shut Down.", buffer + (process.stdout.read() or b""))  # type: ignore[union-attr]
        for _ in range(100):
            children = subprocess.run(["pgrep", "-f", f"--worker-port {port}"],
                                      capture_output=True).stdout
            if not children:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(children, b"")


class IPv6Tests(SynchronousTestCase):
    def test_tcp6_without_interface_listens_on_all_ipv6(self) -> None:
        address = parse_tcp("tcp6:8000")
        assert address is not None
        self.assertEqual(address.host, "::")
        self.assertEqual(address.family, socket.AF_INET6)
