"""
Shared state between real llmproxy processes, over real HTTP with a new
connection per request (as separate clients or a load balancer make):
C{--workers 2} with no state setting (SQLite in the working directory),
and two processes on their own ports sharing one SQLite file (so a test
can tell which one it asks).  The fake upstream runs in this process and
records the key each request carried.
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
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunks, chat_completion, config_data, listen_fake,
)
from tests.harness import client, post

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT = "/v1/chat/completions"
ASK = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes(TestCase):
    timeout = 90

    async def upstream(self) -> tuple[Any, str]:
        fake, port, url = await listen_fake(reactor)
        self.addCleanup(port.stopListening)
        fake.script = [Reply(200, chat_completion("gpt-4o", f"answer {i}", f"chatcmpl-{i}"))
                       for i in range(200)]
        return fake, url

    def write_config(self, folder: str, data: Mapping[str, Any]) -> str:
        path = os.path.join(folder, "llmproxy.yaml")
        with open(path, "w") as f:
            json.dump(data, f)  # YAML reads JSON
        return path

    async def spawn(self, cwd: str, *args: str, servers: int = 1) -> subprocess.Popen[bytes]:
        """
        Start llmproxy in C{cwd}; return once C{servers} processes listen.
        """
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("OPENAI_API_KEY", None)
        process = subprocess.Popen([sys.executable, "-m", "llmproxy", *args], cwd=cwd, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop, process)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.output = b""
        deadline = time.monotonic() + 30
        while self.output.count(b"llmproxy on tcp:") < servers:
            self.output += process.stdout.read() or b""
            self.assertLess(time.monotonic(), deadline, self.output.decode(errors="replace"))
            self.assertIsNone(process.poll(), self.output.decode(errors="replace"))
            await deferLater(reactor, 0.05)
        return process

    async def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                return
            await deferLater(reactor, 0.05)
        process.kill()

    async def status(self, url: str) -> Any:
        response = await client(self).get(url + "/v1/llmproxy/status")
        return json.loads(await response.content())

    async def until(self, check: Any, limit: float = 5.0) -> float:
        """
        Seconds until C{await check()} is true (failing past C{limit}).
        """
        started = time.monotonic()
        while not await check():
            self.assertLess(time.monotonic() - started, limit, "never happened")
            await deferLater(reactor, 0.01)
        return time.monotonic() - started


def _response_id(content: bytes, stream: bool) -> str:
    if not stream:
        return str(json.loads(content)["id"])
    for line in content.splitlines():
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if event.get("type") == "response.completed":
                return str(event["response"]["id"])
    raise AssertionError(f"no response.completed in {content!r}")


class WorkersTests(Processes):
    async def test_follow_ups_are_served_by_either_worker(self) -> None:
        fake, upstream = await self.upstream()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = self.write_config(folder, config_data({"openai": backend_data(upstream, "sk")}))
        await self.spawn(folder, "--config", config, "--workers", "2", "--listen",
                         "tcp:0:interface=127.0.0.1", servers=2)
        match = re.search(rb"started 1 worker processes on port (\d+)", self.output)
        assert match is not None, self.output
        url = f"http://127.0.0.1:{int(match.group(1))}"
        fake.script = []
        for i in range(20):  # each created answer, then its follow-up's
            fake.script += [
                Stream(chat_chunks("gpt-4o", ["answer ", str(i)], f"chatcmpl-s{i}"))
                if i % 2 else Reply(200, chat_completion("gpt-4o", "answer", f"chatcmpl-{i}")),
                Reply(200, chat_completion("gpt-4o", "again", f"chatcmpl-f{i}"))]
        served, ids = 0, set()
        for i in range(20):
            stream = i % 2 == 1  # a streamed answer's record is written as it ends
            status, _, content = await post(self, url + "/v1/responses",
                                            {"model": "gpt-4o", "input": f"turn {i}",
                                             "stream": stream})
            self.assertEqual(status, 200, content)
            first = _response_id(content, stream)
            ids.add(first)
            status, _, content = await post(self, url + "/v1/responses", {
                "model": "gpt-4o", "input": "and then?", "previous_response_id": first})
            if status == 200:
                sent = fake.requests[-1].body["messages"]
                served += sent[0] == {"role": "user", "content": f"turn {i}"}
        self.assertEqual(len(ids), 20)
        self.assertEqual(served, 20)
        self.assertTrue(os.path.exists(os.path.join(folder, "llmproxy-state.db")))
        state = (await self.status(url))["state"]
        self.assertEqual((state["kind"], state["up"]), ("sqlite", True))


class TwoProcessesTests(Processes):
    async def pair(self, **extra: Any) -> tuple[Any, str, str, str]:
        fake, upstream = await self.upstream()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "state"))
        self.state_dir = os.path.join(folder, "state")
        data = config_data({"openai": backend_data(upstream, "sk-a", "sk-b")},
                           state=f"sqlite://{os.path.join(self.state_dir, 'state.db')}",
                           **extra)
        config = self.write_config(folder, data)
        urls = []
        for _ in range(2):
            port = free_port()
            await self.spawn(folder, "--config", config, "--listen",
                             f"tcp:{port}:interface=127.0.0.1")
            urls.append(f"http://127.0.0.1:{port}")
        return fake, urls[0], urls[1], folder

    async def key_state(self, url: str, name: str) -> str:
        keys = (await self.status(url))["backends"]["openai"]["keys"]
        return str(next(k["state"] for k in keys if k["name"] == name))

    async def test_a_429_learnt_by_one_cools_the_key_on_the_other(self) -> None:
        fake, a, b, _ = await self.pair()
        fake.by_key["sk-a"] = [Reply(429, {"error": {"message": "slow down",
                                                     "type": "rate_limit_error"}},
                                     {"retry-after": "30"})]
        status, _, _ = await post(self, a + CHAT, ASK)
        self.assertEqual(status, 200)
        self.assertEqual([r.headers["authorization"] for r in fake.requests],
                         ["Bearer sk-a", "Bearer sk-b"])
        name = (await self.status(a))["backends"]["openai"]["keys"][0]["name"]

        async def cooled() -> bool:
            return await self.key_state(b, name) == "rate_limited"

        self.assertLess(await self.until(cooled), 0.3)
        before = len(fake.requests)
        for _ in range(6):
            status, _, _ = await post(self, b + CHAT, ASK)
            self.assertEqual(status, 200)
        self.assertEqual({r.headers["authorization"] for r in fake.requests[before:]},
                         {"Bearer sk-b"})

    async def test_a_circuit_opened_by_one_is_open_on_the_other(self) -> None:
        fake, a, b, _ = await self.pair(
            failure_handling={"circuit_threshold": 2, "circuit_cooldown": 60,
                              "max_attempts": 1})
        fake.by_model["gpt-bad"] = [Reply(500, {"error": {"message": "down",
                                                          "type": "server_error"}})]

        async def circuit(url: str) -> str | None:
            circuits = (await self.status(url))["backends"]["openai"]["circuits"]
            return circuits.get("gpt-bad", {}).get("state")

        for _ in range(2):
            await post(self, a + CHAT, {**ASK, "model": "gpt-bad"})
        self.assertEqual(await circuit(a), "open")

        async def opened() -> bool:
            return await circuit(b) == "open"

        self.assertLess(await self.until(opened), 0.3)

    async def test_planning_counters_advance_across_processes(self) -> None:
        phase = {"enabled": True, "strong_model": "openai:gpt-strong", "max_turns": 3,
                 "max_file_writes": 0}
        fake, a, b, _ = await self.pair(session={"planning_phase": phase})
        seen = []
        for url in (a, b, a, b):
            status, headers, _ = await post(self, url + CHAT, ASK, {"session_id": "conv-7"})
            self.assertEqual(status, 200)
            seen.append(headers.get("x-llmproxy-phase"))
        self.assertEqual(seen, ["planning (turn 1/3, writes 0)", "planning (turn 2/3, writes 0)",
                                "planning (turn 3/3, writes 0)", None])
        self.assertEqual([r.model for r in fake.requests],
                         ["gpt-strong", "gpt-strong", "gpt-strong", "gpt-4o"])

    async def test_the_store_gone_and_back(self) -> None:
        fake, a, b, folder = await self.pair()
        status, _, content = await post(self, a + "/v1/responses",
                                        {"model": "gpt-4o", "input": "before"})
        earlier = json.loads(content)["id"]
        name = (await self.status(a))["backends"]["openai"]["keys"][0]["name"]
        # The state file becomes something SQLite cannot open (swapped in
        # whole, so no process sees a half-made folder).
        os.makedirs(os.path.join(folder, "broken", "state.db"))
        os.rename(self.state_dir, os.path.join(folder, "away"))
        os.rename(os.path.join(folder, "broken"), self.state_dir)

        async def up(url: str) -> bool:
            return bool((await self.status(url))["state"]["up"])

        async def both_down() -> bool:
            return not await up(a) and not await up(b)

        await self.until(both_down)
        state = (await self.status(b))["state"]
        self.assertTrue(state["last_error"])
        for url in (a, b):  # what needs no stored state is served
            status, _, _ = await post(self, url + CHAT, ASK)
            self.assertEqual(status, 200)
            status, _, _ = await post(self, url + "/v1/responses",
                                      {"model": "gpt-4o", "input": "meanwhile"})
            self.assertEqual(status, 200)
        started = time.monotonic()
        status, _, content = await post(self, b + "/v1/responses", {
            "model": "gpt-4o", "input": "and?", "previous_response_id": earlier})
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(content)["error"]["code"], "state_store_unavailable")
        self.assertLess(time.monotonic() - started, 3.0)
        fake.by_key["sk-a"] = [Reply(429, {"error": {"message": "slow down",
                                                     "type": "rate_limit_error"}},
                                     {"retry-after": "30"})]
        for _ in range(2):  # the rotation reaches sk-a: learnt while the store is away
            await post(self, a + CHAT, ASK)
        self.assertEqual(await self.key_state(a, name), "rate_limited")
        os.rename(self.state_dir, os.path.join(folder, "broken"))
        os.rename(os.path.join(folder, "away"), self.state_dir)

        async def both_up() -> bool:
            return await up(a) and await up(b)

        await self.until(both_up)

        async def cooled() -> bool:
            return await self.key_state(b, name) == "rate_limited"

        await self.until(cooled, limit=1.0)
        status, _, content = await post(self, b + "/v1/responses", {
            "model": "gpt-4o", "input": "and?", "previous_response_id": earlier})
        self.assertEqual(status, 200, content)
