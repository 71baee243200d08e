"""
Hot reload (L{llmproxy.reload}): a valid file is swapped in with the
requests in flight untouched, an invalid one changes nothing and says why
in one line; the file watcher (on a L{Clock}), the C{SIGHUP} hook, the
relay to workers, and one real C{twistd -n llmproxy} taking a C{SIGHUP}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import Config, ConfigError, Overrides, TCPAddress, load_config
from llmproxy.reload import RELOAD_NAMESPACE, ConfigWatch, Reloader, SignalHook, config_digest
from llmproxy.service import ProxyService
from llmproxy.startup import ListenService
from llmproxy.tap import Options, makeService
from llmproxy.testing import (
    Stream, chat_chunks, chat_request, listen_fake, make_config, openai_config,
)
from llmproxy.workers import ReusePortService, WorkerChildren
from tests.harness import client, post

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path: str, data: Any) -> None:
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else yaml.safe_dump(data))


class ReloadTests(TestCase):
    """
    A running L{ProxyService} (on a real port) reloaded from its file.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.fake, port, self.upstream = await listen_fake(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.fake.wait_idle)
        self.path = os.path.abspath(self.mktemp())
        self.data = openai_config(self.upstream, listen="tcp:0:interface=127.0.0.1")
        write(self.path, self.data)
        self.service = ProxyService(self.load(), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.events: list[dict[str, Any]] = []
        self.logged: list[dict[str, Any]] = []
        self.service.app.events.addObserver(self.events.append)
        self.reloader = Reloader(self.service, self.load, self.path, reactor,
                                 observer=self.logged.append)

    def load(self) -> Config:
        return load_config(Overrides(config_file=self.path), environ={}, kinds=REGISTRY.kinds)

    @property
    def url(self) -> str:
        listener = self.service.endpoint_service
        port = getattr(listener, "port")
        assert port is not None
        return f"http://127.0.0.1:{port.getHost().port}"

    def reloads(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == RELOAD_NAMESPACE]

    async def test_invalid_file_keeps_the_running_config(self) -> None:
        running = self.service.config
        digest = self.reloader.state.digest
        write(self.path, {**self.data, "failure_handling": {"max_attempt": 2}})
        self.assertFalse(await self.reloader.reload())
        self.assertIs(self.service.config, running)
        [event] = self.reloads()
        self.assertEqual((event["ok"], event["digest"]), (False, digest))
        self.assertEqual(event["error"], f"{self.path}: failure_handling.max_attempt: unknown "
                                         "key; did you mean 'max_attempts'?")
        self.assertEqual([e["log_level"].name for e in self.logged], ["error"])
        code, _, body = await post(self, self.url + "/v1/chat/completions", chat_request())
        self.assertEqual(code, 200, body)
        status = json.loads(await treq.content(await client(self).get(
            self.url + "/v1/llmproxy/status")))
        self.assertEqual(status["config"]["last_error"], event["error"])
        self.assertEqual((status["config"]["reloads"], status["config"]["digest"]), (1, digest))
        self.assertEqual(status["config"]["path"], self.path)

    async def test_a_valid_file_is_swapped_in(self) -> None:
        write(self.path, {**self.data, "failure_handling": {"max_attempts": 2}})
        before = self.reloader.state.digest
        self.assertTrue(await self.reloader.reload())
        self.assertEqual(self.service.config.failure.max_attempts, 2)
        [event] = self.reloads()
        self.assertEqual((event["ok"], event["error"]), (True, None))
        self.assertEqual(event["digest"], config_digest(self.service.config))
        self.assertNotEqual(event["digest"], before)
        self.assertEqual([e["log_level"].name for e in self.logged], ["info"])
        self.assertEqual(self.reloader.state.status()["digest"], event["digest"])

    async def test_a_stream_in_flight_survives_a_reload_that_adds_a_key(self) -> None:
        """
        A stream running while a reload adds a backend (and its key) ends
        with the very bytes it would have had without the reload; the next
        request reaches the new backend with the new key.
        """
        pieces = [f"w{i} " for i in range(8)]
        self.fake.by_model["slow"] = [Stream(chat_chunks("slow", pieces), delay=0.05)]
        body = chat_request(model="openai:slow", stream=True)
        unreloaded = await post(self, self.url + "/v1/chat/completions", body)
        self.assertEqual(unreloaded[0], 200)
        streaming = Deferred.fromCoroutine(
            post(self, self.url + "/v1/chat/completions", body))
        while not self.fake.open:
            await deferLater(reactor, 0.01)
        self.data["backends"]["added"] = {"type": "openai", "base_url": self.upstream,
                                          "api_key": "sk-added-9"}
        write(self.path, self.data)
        self.assertTrue(await self.reloader.reload())
        self.assertTrue(self.fake.open, "the stream was still running")
        reloaded = await streaming
        self.assertEqual(reloaded[2], unreloaded[2])
        code, _, _ = await post(self, self.url + "/v1/chat/completions",
                                chat_request(model="added:gpt-4o"))
        self.assertEqual(code, 200)
        self.assertEqual(self.fake.requests[-1].headers["authorization"], "Bearer sk-added-9")

    async def test_the_listener_stays_when_listen_does_not_change(self) -> None:
        listener = self.service.endpoint_service
        url = self.url
        write(self.path, {**self.data, "failure_handling": {"max_attempts": 3}})
        self.assertTrue(await self.reloader.reload())
        self.assertIs(self.service.endpoint_service, listener)
        self.assertEqual(self.url, url)

    async def test_a_new_listen_is_bound_before_the_old_is_closed(self) -> None:
        old_url = self.url
        port = free_port()
        write(self.path, {**self.data, "listen": f"tcp:{port}:interface=127.0.0.1"})
        closed_before: list[bool] = []
        old = self.service.endpoint_service
        assert isinstance(old, ListenService) and old.port is not None
        stop = old.port.stopListening

        def stopping() -> Any:
            closed_before.append(_accepts(port))
            return stop()

        old.port.stopListening = stopping  # type: ignore[method-assign]
        self.assertTrue(await self.reloader.reload())
        self.assertEqual(closed_before, [True], "the new port listened first")
        self.assertEqual(self.url, f"http://127.0.0.1:{port}")
        code, _, _ = await post(self, self.url + "/v1/chat/completions", chat_request())
        self.assertEqual(code, 200)
        self.assertFalse(_accepts(int(old_url.rsplit(":", 1)[1])))
        self.assertIn(self.service.endpoint_service, list(self.service))

    async def test_a_listen_that_cannot_be_bound_fails_the_reload(self) -> None:
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        self.addCleanup(held.close)
        port = held.getsockname()[1]
        url = self.url
        write(self.path, {**self.data, "listen": f"tcp:{port}:interface=127.0.0.1"})
        self.assertFalse(await self.reloader.reload())
        [event] = self.reloads()
        self.assertEqual(event["error"], f"{self.path}: listen: cannot listen on "
                                         f"tcp:{port}:interface=127.0.0.1: address already in use")
        self.assertEqual(self.url, url)
        self.assertEqual(self.service.config.listen, "tcp:0:interface=127.0.0.1")

    async def test_the_responses_store_carries_over(self) -> None:
        first = await post(self, self.url + "/v1/responses",
                           {"model": "gpt-4o", "input": "remember me"})
        self.assertEqual(first[0], 200)
        write(self.path, {**self.data, "failure_handling": {"max_attempts": 2}})
        self.assertTrue(await self.reloader.reload())
        second = await post(self, self.url + "/v1/responses",
                            {"model": "gpt-4o", "input": "and now?",
                             "previous_response_id": json.loads(first[2])["id"]})
        self.assertEqual(second[0], 200, second[2])
        self.assertIn("remember me", json.dumps(self.fake.requests[-1].body))

    async def test_metrics_count_reloads(self) -> None:
        self.assertTrue(await self.reloader.reload())
        write(self.path, "failure_handling: {max_attempt: 3}\n")
        self.assertFalse(await self.reloader.reload())
        metrics = self.service.metrics
        assert metrics is not None
        text = metrics.render().decode()
        self.assertIn('llmproxy_reloads_total{outcome="ok"} 1.0', text)
        self.assertIn('llmproxy_reloads_total{outcome="failed"} 1.0', text)

    async def test_the_store_takes_its_new_bounds(self) -> None:
        store = self.service.app.store
        write(self.path, {**self.data, "responses_store": {"max_items": 7, "max_age": 60}})
        self.assertTrue(await self.reloader.reload())
        self.assertIs(self.service.app.store, store)
        self.assertEqual((store.bounds.max_items, store.bounds.max_age), (7, 60))

    async def test_a_setting_that_needs_a_restart_is_named(self) -> None:
        write(self.path, {**self.data, "log_level": "debug"})
        self.assertTrue(await self.reloader.reload())
        notes = [e for e in self.logged if e["log_level"].name == "warn"]
        self.assertEqual(len(notes), 1)
        self.assertIn("log_level changed; it takes effect on restart", notes[0]["note"])
        self.assertEqual([e["ok"] for e in self.reloads()], [True], "one reload event")

    async def test_with_workers_the_address_needs_a_restart(self) -> None:
        shared = ReusePortService(reactor, TCPAddress("127.0.0.1", 0), self.service.app.site())
        self.service.endpoint_service = shared
        write(self.path, {**self.data, "listen": "tcp:8123:interface=127.0.0.1"})
        self.assertFalse(await self.reloader.reload())
        self.assertEqual(self.reloader.state.last_error,
                         f"{self.path}: listen: changed to 'tcp:8123:interface=127.0.0.1', but "
                         "with --workers the address only changes with a restart")
        self.assertIs(self.service.endpoint_service, shared)

    async def test_the_new_config_s_warnings_are_logged(self) -> None:
        self.data["backends"]["openai"]["api_keys"] = ["sk-1", "${UNSET_VARIABLE}"]
        write(self.path, self.data)
        self.assertTrue(await self.reloader.reload())
        [note] = [e["note"] for e in self.logged if e["log_level"].name == "warn"]
        self.assertIn("${UNSET_VARIABLE} is not set", note)

    async def test_reloads_asked_together_run_one_after_the_other(self) -> None:
        write(self.path, {**self.data, "failure_handling": {"max_attempts": 4}})
        both = [self.reloader.reload(), self.reloader.reload()]
        self.assertEqual([await d for d in both], [True, True])
        self.assertEqual(self.reloader.state.reloads, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class WatchTests(SynchronousTestCase):
    """
    L{ConfigWatch} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        write(self.path, "a: 1\n")
        self.changes: list[None] = []
        self.watch = ConfigWatch(self.path, 2.0, lambda: self.changes.append(None), self.clock)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def touch(self, text: str = "a: 2\n", ahead: int = 10) -> None:
        write(self.path, text)
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + ahead * 10**9))

    def test_an_unchanged_file_reloads_nothing(self) -> None:
        self.clock.pump([2.0] * 5)
        self.assertEqual(self.changes, [])

    def test_a_change_reloads_once_at_the_next_poll(self) -> None:
        self.touch()
        self.clock.advance(1.9)
        self.assertEqual(self.changes, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.changes), 1)
        self.clock.pump([2.0] * 3)
        self.assertEqual(len(self.changes), 1)
        self.touch("a: 3\n", ahead=20)
        self.clock.advance(2.0)
        self.assertEqual(len(self.changes), 2)

    def test_a_file_gone_for_a_moment_is_no_change(self) -> None:
        os.rename(self.path, self.path + ".tmp")
        self.clock.advance(2.0)
        self.assertEqual(self.changes, [])
        os.rename(self.path + ".tmp", self.path)
        self.clock.advance(2.0)
        self.assertEqual(self.changes, [])


class InstallTests(SynchronousTestCase):
    """
    C{twistd llmproxy}'s service gets its reloader, and with C{reload:
    {watch: true}} a watch on the file that reloads it.
    """

    def make(self, data: dict[str, Any]) -> tuple[ProxyService, str, MemoryReactorClock]:
        self.patch(os, "environ", {})
        path = os.path.abspath(self.mktemp())
        write(path, data)
        options = Options()
        options.parseOptions(["--config", path])
        clock = MemoryReactorClock()
        proxy = makeService(options, reactor=clock)  # type: ignore[arg-type]
        proxy.startService()
        self.addCleanup(proxy.stopService)
        return proxy, path, clock

    def test_a_watched_file_reloads_when_it_changes(self) -> None:
        data: dict[str, Any] = {"default_backend": "mock", "backends": {"mock": {"type": "mock"}},
                                "reload": {"watch": True, "interval": 1}}
        proxy, path, clock = self.make(data)
        self.assertEqual([type(s) for s in proxy if isinstance(s, (Reloader, ConfigWatch))],
                         [Reloader, ConfigWatch])
        write(path, {**data, "failure_handling": {"max_attempts": 2}})
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        clock.advance(1)
        self.assertEqual(proxy.config.failure.max_attempts, 2)
        self.assertEqual(proxy.app.config_status and proxy.app.config_status()["reloads"], 1)

    def test_unwatched_by_default(self) -> None:
        proxy, _, _ = self.make({"default_backend": "mock", "backends": {"mock": {}}})
        self.assertEqual([type(s) for s in proxy if isinstance(s, (Reloader, ConfigWatch))],
                         [Reloader])

    def test_the_reload_section_is_checked(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            make_config({"reload": {"watch": True, "intervall": 3}})
        self.assertIn("reload.intervall: unknown key; did you mean 'interval'?",
                      str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            make_config({"reload": {"interval": 0}})
        self.assertIn("reload.interval: must be at least 0.1", str(caught.exception))


class _Reactor:
    """
    Enough reactor for L{SignalHook}: running at once, calls from threads
    kept.
    """

    def __init__(self) -> None:
        self.called: list[Callable[[], object]] = []

    def callWhenRunning(self, f: Callable[[], object]) -> None:
        f()

    def callFromThread(self, f: Callable[[], object]) -> None:
        self.called.append(f)


class SignalHookTests(SynchronousTestCase):
    def test_installed_while_running_and_put_back(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        fake = _Reactor()
        calls: list[None] = []
        hook = SignalHook(fake, signal.SIGHUP, lambda: calls.append(None))  # type: ignore[arg-type]
        hook.startService()
        handler = signal.getsignal(signal.SIGHUP)
        self.assertNotEqual(handler, previous)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.assertEqual(calls, [], "not in the signal handler itself")
        [later] = fake.called
        later()
        self.assertEqual(calls, [None])
        hook.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)


class _Process:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)


class RelayTests(SynchronousTestCase):
    def test_the_parent_relays_to_every_running_worker(self) -> None:
        children = WorkerChildren(None, 3, [], None)  # type: ignore[arg-type]
        running, ended, gone = _Process(), Deferred[None](), _Process()
        ended.callback(None)
        children.children = [(running, Deferred()), (gone, ended)]  # type: ignore[list-item]
        children.relay(signal.SIGHUP)
        self.assertEqual((running.signals, gone.signals), ([signal.SIGHUP], []))


class ProcessTests(TestCase):
    """
    A real C{twistd -n llmproxy} reloads on C{SIGHUP}.
    """

    timeout = 60

    async def test_sighup_reloads_a_running_twistd(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise self.skipTest("no twistd script next to the interpreter")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        path = os.path.join(cwd, "llmproxy.yaml")
        port = free_port()
        data: dict[str, Any] = {"listen": f"tcp:{port}:interface=127.0.0.1",
                                "default_backend": "one",
                                "backends": {"one": {"type": "mock", "models": ["m"]}}}
        write(path, data)
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("OPENAI_API_KEY", None)
        process = subprocess.Popen([twistd, "-n", "llmproxy", "--config", path], cwd=cwd,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        output = Output(process)
        await output.wait_for(b"llmproxy on tcp:")
        data["backends"]["two"] = {"type": "mock", "models": ["n"]}
        write(path, data)
        os.kill(process.pid, signal.SIGHUP)
        await output.wait_for(b"config reloaded from")
        response = await client(self).post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(chat_request(model="two:n")).encode())
        self.assertEqual(response.code, 200, await treq.content(response))
        status = json.loads(await treq.content(await client(self).get(
            f"http://127.0.0.1:{port}/v1/llmproxy/status")))
        self.assertEqual((status["config"]["reloads"], status["config"]["path"]), (1, path))
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                break
            await deferLater(reactor, 0.05)
        self.assertIsNotNone(process.poll())


    async def test_the_first_worker_relays_sighup_to_the_others(self) -> None:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        path = os.path.join(cwd, "llmproxy.yaml")
        data: dict[str, Any] = {"listen": "tcp:0:interface=127.0.0.1", "workers": 2,
                                "default_backend": "one",
                                "backends": {"one": {"type": "mock", "models": ["m"]}}}
        write(path, data)
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("OPENAI_API_KEY", None)
        process = subprocess.Popen([sys.executable, "-m", "llmproxy", "--config", path],
                                   cwd=cwd, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        output = Output(process)
        await output.wait_for(b"llmproxy on tcp:", count=2)
        data["failure_handling"] = {"max_attempts": 2}
        write(path, data)
        os.kill(process.pid, signal.SIGHUP)
        await output.wait_for(b"config reloaded from", count=2)
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                break
            await deferLater(reactor, 0.05)
        self.assertIsNotNone(process.poll())


class Output:
    """
    A child process's output, read without blocking.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.stdout = process.stdout
        os.set_blocking(self.stdout.fileno(), False)
        self.text = b""

    async def wait_for(self, marker: bytes, seconds: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + seconds
        while self.text.count(marker) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} in {self.text.decode(errors='replace')}")
            self.text += self.stdout.read() or b""
            await deferLater(reactor, 0.05)
