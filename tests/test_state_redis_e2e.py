"""
Two llmproxy processes on different ports, one real C{redis-server}
between them (C{state: redis://...}), one fake upstream in this process
that records which key each request carried: they behave as one proxy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import treq

from llmproxy.testing import (
    Reply, backend_data, chat_completion, listen_fake, openai_config, sse_json,
)
from llmproxy.state.redis_link import RedisLink, parse_redis_url
from llmproxy.testing.redis import RedisServer, free_port
from tests.harness import client, post

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("sk-e2e-a", "sk-e2e-b")
SPARE = "sk-e2e-spare"
RATE_LIMITED = {"error": {"message": "Rate limit reached", "type": "requests",
                          "param": None, "code": "rate_limit_exceeded"}}
BROKEN = {"error": {"message": "upstream broke", "type": "server_error",
                    "param": None, "code": None}}


class Worker(ProcessProtocol):
    """
    One llmproxy process: its output, whether it serves, when it ended.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = b""
        self.serving: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"llmproxy on tcp:" in self.output and not self.serving.called:
            self.serving.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.serving.called:
            self.serving.errback(AssertionError(
                f"{self.name} ended: {self.output.decode(errors='replace')[-3000:]}"))
        self.ended.callback(None)


class TwoProcessesCase(TestCase):
    """
    A Redis server, the fake upstream (two keys), and two llmproxy
    processes sharing the server: C{self.urls}.
    """

    timeout = 90

    async def start_all(self, spare: bool = False, server: RedisServer | None = None,
                        password_in_env: bool = False, **extra: Any) -> None:
        """
        Start it all; C{server} instead of a plain persistent one, its
        password given as C{REDIS_PASSWORD} rather than in the URL when
        C{password_in_env}.
        """
        self.redis = server or RedisServer(reactor, persistent=True)
        self.addCleanup(self.redis.stop)
        await self.redis.start()
        url, self.env = self.redis.url, {}
        if password_in_env and self.redis.password:
            url = url.replace(f":{self.redis.password}@", "")
            self.env = {"REDIS_PASSWORD": self.redis.password}
        self.fake, port, upstream = await listen_fake(reactor)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.fake.wait_idle)
        data = openai_config(upstream, keys=KEYS, state={"url": url, "timeout": 1.0}, **extra)
        if spare:
            data["backends"]["spare"] = backend_data(upstream, SPARE)
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.config_file = directory / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(data))
        self.urls = [await self.spawn(name, directory) for name in ("A", "B")]

    async def spawn(self, name: str, directory: Path) -> str:
        port = free_port()
        worker = Worker(name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        env.pop("OPENAI_API_KEY", None)
        process = reactor.spawnProcess(
            worker, sys.executable,
            [sys.executable, "-m", "llmproxy", "--config", str(directory / "config.yaml"),
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--log-level", "info"],
            env=env, path=str(directory))
        self.addCleanup(lambda: worker.ended)
        self.addCleanup(lambda: process.signalProcess("TERM") if process.pid else None)
        await worker.serving.addTimeout(30, reactor)
        return f"http://127.0.0.1:{port}"

    async def ask(self, url: str, path: str, body: Any) -> tuple[int, Any]:
        code, _, content = await post(self, url + path, body)
        return code, json.loads(content)

    async def status(self, url: str) -> Any:
        response = await client(self).get(url + "/v1/llmproxy/status")
        return json.loads(await treq.content(response))

    def redis_link(self) -> RedisLink:
        """
        A connection of the test's own to the Redis server.
        """
        link = RedisLink(parse_redis_url(self.redis.url, {}), reactor, reactor, ("test",),
                         lambda channel, message: None, lambda: None)
        self.addCleanup(link.disconnect)
        return link

    async def everything_stored(self) -> str:
        """
        Every key and value in the Redis server, as one text.
        """
        link = self.redis_link()
        found = []
        for key in await link.call("keys", "*"):
            kind = await link.call("type", key)
            command = {"string": "get", "hash": "hgetall", "zset": "zrange"}[kind]
            found.append(f"{key} {await link.call(command, key)}")
        return "\n".join(found)

    async def key_state(self, url: str, name: str) -> str:
        keys = (await self.status(url))["backends"]["openai"]["keys"]
        return str({k["name"]: k for k in keys}[name]["state"])

    def keys_sent(self, since: int = 0) -> list[str]:
        return [r.headers.get("authorization", "").partition(" ")[2]
                for r in self.fake.requests[since:] if r.method == "POST"]


def chat(text: str, model: str = "gpt-4o") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


class SharedRecordsTests(TwoProcessesCase):
    async def test_previous_response_id_across_processes(self) -> None:
        """
        20 of 20 follow-ups sent to the other process find the conversation
        the first one stored; half of them follow a streamed answer (its
        record is written as the stream ends).
        """
        await self.start_all()
        a, b = self.urls
        found = 0
        for n in range(20):
            first, second = (a, b) if n % 2 else (b, a)
            stream = n % 4 < 2
            code, _, content = await post(self, first + "/v1/responses", {
                "model": "gpt-4o", "input": f"question {n}", "stream": stream})
            self.assertEqual(code, 200, content)
            seen = len(self.fake.requests)
            code, follow = await self.ask(second, "/v1/responses", {
                "model": "gpt-4o", "input": "and then?",
                "previous_response_id": response_id(content, stream)})
            self.assertEqual(code, 200, follow)
            sent = self.fake.requests[seen].body["messages"]
            found += [m["content"] for m in sent][:1] == [f"question {n}"]
        self.assertEqual(found, 20)


def response_id(content: bytes, stream: bool) -> str:
    """
    The id of a Responses answer, whole or streamed.
    """
    if not stream:
        return str(json.loads(content)["id"])
    completed = [event["response"]["id"] for event in sse_json(content)
                 if event.get("type") == "response.completed"]
    assert completed, content
    return str(completed[0])


class TlsTests(TwoProcessesCase):
    async def test_two_processes_over_rediss_with_the_password_from_the_environment(
        self,
    ) -> None:
        """
        C{rediss://} (verified against the server's CA) and C{REDIS_PASSWORD}
        in the environment, not in the file: a follow-up crosses over.
        """
        server = RedisServer(reactor, password="s3cret-e2e", tls=True)
        await self.start_all(server=server, password_in_env=True)
        self.assertNotIn("s3cret", self.redis_url_in_config())
        a, b = self.urls
        code, answer = await self.ask(a, "/v1/responses", {"model": "gpt-4o", "input": "tls"})
        self.assertEqual(code, 200, answer)
        code, follow = await self.ask(b, "/v1/responses", {
            "model": "gpt-4o", "input": "and?", "previous_response_id": answer["id"]})
        self.assertEqual(code, 200, follow)
        state = (await self.status(b))["state"]
        self.assertEqual((state["up"], state["where"].split(":")[0]), (True, "rediss"))

    def redis_url_in_config(self) -> str:
        return str(yaml.safe_load(self.config_file.read_text())["state"]["url"])


class HotPathTests(TwoProcessesCase):
    async def test_requests_that_need_no_stored_state_never_ask_redis(self) -> None:
        """
        Plain chat requests (no previous response, no conversation) read
        nothing from Redis and write nothing to it: the server counts no
        command between two of its own.
        """
        await self.start_all()
        for url in self.urls:
            self.assertEqual((await self.ask(url, "/v1/chat/completions", chat("w")))[0], 200)
        link = self.redis_link()
        before = await self.quiet(link)
        for n in range(10):
            code, _ = await self.ask(self.urls[n % 2], "/v1/chat/completions", chat(f"q{n}"))
            self.assertEqual(code, 200)
        self.assertEqual(await self.commands(link), before + 1)  # the first INFO itself

    async def quiet(self, link: RedisLink) -> int:
        """
        Wait until the processes' start-up work with Redis (connecting,
        catching up, the first expiry) is over: half a second without a
        command but our own; the count then.
        """
        count, still, end = await self.commands(link), 0, time.monotonic() + 20
        while still < 5:
            self.assertLess(time.monotonic(), end, "Redis never went quiet")
            await deferLater(reactor, 0.1, lambda: None)
            count, previous = await self.commands(link), count
            still = still + 1 if count == previous + 1 else 0
        return count

    async def commands(self, link: RedisLink) -> int:
        info = await link.call("execute_command", "INFO", "stats")
        return int(info.split("total_commands_processed:")[1].split()[0])


class SharedConversationsTests(TwoProcessesCase):
    async def test_planning_counters_advance_across_processes(self) -> None:
        """
        One conversation's turns alternate between the processes; the
        planning phase counts them all and ends after the third.
        """
        phase = {"enabled": True, "strong_model": "openai:gpt-strong", "max_turns": 3,
                 "max_file_writes": 0}
        await self.start_all(session={"planning_phase": phase})
        a, b = self.urls
        seen = []
        for url in (a, b, a, b):
            code, headers, _ = await post(self, url + "/v1/chat/completions", chat("step"),
                                          {"session_id": "conv-7"})
            self.assertEqual(code, 200)
            seen.append(headers.get("x-llmproxy-phase"))
        self.assertEqual(seen, ["planning (turn 1/3, writes 0)", "planning (turn 2/3, writes 0)",
                                "planning (turn 3/3, writes 0)", None])
        self.assertEqual([r.model for r in self.fake.requests],
                         ["gpt-strong", "gpt-strong", "gpt-strong", "gpt-4o"])


class SharedFactsTests(TwoProcessesCase):
    async def test_a_429_cools_the_key_on_the_other_within_300ms(self) -> None:
        """
        A learns a 429 on the first key; B shows it cooling within 300 ms
        and sends nothing to it after (round robin would, within two).
        """
        await self.start_all(failure_handling={"default_cooldown": 30, "max_cooldown": 60})
        a, b = self.urls
        self.fake.by_key[KEYS[0]] = [Reply(429, RATE_LIMITED, {"retry-after": "30"})]
        for _ in range(2):  # round robin: one of two reaches the first key
            code, _ = await self.ask(a, "/v1/chat/completions", chat("hello"))
            self.assertEqual(code, 200)
        learnt = time.monotonic()
        self.assertIn(KEYS[0], self.keys_sent())
        while await self.key_state(b, "openai#1") != "rate_limited":
            self.assertLess(time.monotonic() - learnt, 0.3, "B did not learn within 300 ms")
            await deferLater(reactor, 0.01, lambda: None)
        seen = len(self.fake.requests)
        for n in range(6):
            code, _ = await self.ask(b, "/v1/chat/completions", chat(f"other {n}"))
            self.assertEqual(code, 200)
        self.assertEqual(self.keys_sent(seen), [KEYS[1]] * 6)
        stored = await self.everything_stored()
        self.assertIn("openai#1", stored)
        self.assertNotIn("sk-e2e", stored)

    async def test_a_circuit_opened_on_one_is_open_on_the_other(self) -> None:
        """
        A opens the circuit of (openai, gpt-broken); B shows it open and
        goes straight to the spare backend (it would try openai first).
        """
        await self.start_all(spare=True, failure_handling={
            "circuit_threshold": 2, "circuit_cooldown": 60, "retries_per_target": 0})
        a, b = self.urls
        route = "openai:gpt-broken|spare:gpt-broken"
        self.fake.by_model["gpt-broken"] = [Reply(500, BROKEN)]
        self.fake.by_key[SPARE] = [Reply(200, chat_completion("gpt-broken", "spare here"))]
        for _ in range(2):
            code, _ = await self.ask(a, "/v1/chat/completions", chat("x", route))
            self.assertEqual(code, 200)
        self.assertEqual(await self.circuit(a, "gpt-broken"), "open")
        end = time.monotonic() + 1
        while await self.circuit(b, "gpt-broken") != "open":
            self.assertLess(time.monotonic(), end, "the circuit did not open on B")
            await deferLater(reactor, 0.02, lambda: None)
        seen = len(self.fake.requests)
        for _ in range(3):
            code, _ = await self.ask(b, "/v1/chat/completions", chat("y", route))
            self.assertEqual(code, 200)
        self.assertEqual(self.keys_sent(seen), [SPARE] * 3, "B sent to an open circuit")

    async def circuit(self, url: str, model: str) -> str:
        circuits = (await self.status(url))["backends"]["openai"]["circuits"]
        return str(circuits.get(model, {}).get("state", "closed"))


class OutageTests(TwoProcessesCase):
    async def test_redis_killed_mid_test(self) -> None:
        """
        Both keep serving from local state, say the store is down, answer a
        request needing stored state with a prompt 503, and catch up when
        the server is back: a 429 learnt meanwhile by A reaches B.
        """
        await self.start_all(failure_handling={"default_cooldown": 30, "max_cooldown": 60})
        a, b = self.urls
        code, answer = await self.ask(a, "/v1/responses", {"model": "gpt-4o", "input": "kept"})
        self.assertEqual(code, 200, answer)
        await self.redis.kill()
        for url in (a, b):
            code, _ = await self.ask(url, "/v1/chat/completions", chat("still here"))
            self.assertEqual(code, 200)
            await self.until_state(url, up=False)
        asked = time.monotonic()
        code, refused = await self.ask(b, "/v1/responses", {
            "model": "gpt-4o", "input": "and then?", "previous_response_id": answer["id"]})
        self.assertEqual((code, refused["error"]["code"]), (503, "state_store_unavailable"))
        self.assertLess(time.monotonic() - asked, 2.0)
        self.fake.by_key[KEYS[0]] = [Reply(429, RATE_LIMITED, {"retry-after": "30"})]
        for _ in range(2):
            code, _ = await self.ask(a, "/v1/chat/completions", chat("hello"))
            self.assertEqual(code, 200)
        self.assertEqual(await self.key_state(b, "openai#1"), "ok")
        await self.redis.start()
        for url in (a, b):
            await self.until_state(url, up=True)
        end = time.monotonic() + 5
        while await self.key_state(b, "openai#1") != "rate_limited":
            self.assertLess(time.monotonic(), end, "B never caught up")
            await deferLater(reactor, 0.05, lambda: None)
        code, follow = await self.ask(b, "/v1/responses", {
            "model": "gpt-4o", "input": "and then?", "previous_response_id": answer["id"]})
        self.assertEqual(code, 200, follow)

    async def until_state(self, url: str, up: bool, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while True:
            state = (await self.status(url))["state"]
            self.assertEqual((state["kind"], state["where"]), ("redis", self.redis.url))
            if state["up"] is up:
                if not up:
                    self.assertTrue(state["last_error"])
                return
            self.assertLess(time.monotonic(), end, f"{url}: state never {up}: {state}")
            await deferLater(reactor, 0.05, lambda: None)
