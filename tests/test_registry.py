# -*- test-case-name: tests.test_registry -*-
"""
Tests for the backend registry (L{llmproxy.backends.REGISTRY}): a backend
type is one declaration plus one line in a table, and nothing else in
llmproxy knows its name.

C{greeter} below is a test-only type, declared here the way a backend
module declares its own, and registered in a table built by the test, not
in the shipped one.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IResponse

from llmproxy.backends import REGISTRY, BackendContext, BackendType, Registry
from llmproxy.backends.memory import MemoryResponse
from llmproxy.config import (
    ApiKey, BackendConfig, BackendKind, BackendOption, Config, ConfigError, build_config,
)
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.service import ProxyService
from llmproxy.testing import chat_chunks, chat_completion
from tests.harness import post

SOURCE = "conf.yaml"


class GreeterBackend:
    """
    Answers every chat request with its configured greeting and the last
    user message, and remembers what it was sent.
    """

    dialect = CHAT

    def __init__(self, config: BackendConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self.sent: list[tuple[dict[str, Any], str | None]] = []

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        request = json.loads(body)
        self.sent.append((request, key.name if key is not None else None))
        text = f"{self.config.options['greeting']}, {request['messages'][-1]['content']}"
        if self.config.options["shout"]:
            text = text.upper()
        if stream:
            return succeed(MemoryResponse(200, {b"content-type": b"text/event-stream"},
                                          chat_chunks(request["model"], [text[:3], text[3:]]),
                                          self.clock))
        return succeed(MemoryResponse(200, {b"content-type": b"application/json"},
                                      [json.dumps(chat_completion(request["model"], text))
                                       .encode()], self.clock))

    async def models(self) -> list[str]:
        return list(self.config.models or ("greeter-1",))

    def close(self) -> None:
        pass


def build_greeter(config: BackendConfig, context: BackendContext) -> GreeterBackend:
    return GreeterBackend(config, context.clock)


GREETER = BackendType(
    BackendKind("greeter", uses_url=False,
                options=(BackendOption("greeting", str, "hello"),
                         BackendOption("shout", bool, False))),
    build_greeter,
)
#: The shipped table plus the one line a new type adds.
WITH_GREETER = REGISTRY.plus(GREETER)


def _build(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
           registry: Registry = WITH_GREETER) -> Config:
    return build_config(data, environ=environ or {}, source=SOURCE, kinds=registry.kinds)


class ShippedTableTests(SynchronousTestCase):
    """
    The types llmproxy ships, and the backends their factories build.
    """

    def test_types(self) -> None:
        """
        The README's types, in order: the first is the type of a backend
        that names none.
        """
        self.assertEqual([k.name for k in REGISTRY.kinds],
                         ["openai", "openai-responses", "mock", "openai-codex", "hybrid"])
        config = _build({"backends": {"up": {}}}, registry=REGISTRY)
        self.assertEqual(config.backends["up"].type, "openai")

    def test_factories(self) -> None:
        """
        Each type's factory builds a backend of that type's dialect, on the
        context it is given.
        """
        clock = Clock()
        pool = HTTPConnectionPool(clock, persistent=False)
        context = BackendContext(pool, clock, clock)
        config = _build({"backends": {"c": {"type": "openai"}, "r": {"type": "openai-responses"},
                                      "m": {"type": "mock"}}}, registry=REGISTRY)
        dialects = {name: REGISTRY.build(b, context).dialect
                    for name, b in config.backends.items()}
        self.assertEqual(dialects, {"c": CHAT, "r": RESPONSES, "m": CHAT})
        self.assertIs(REGISTRY.build(config.backends["c"], context).clock, clock)

    def test_test_type_is_not_shipped(self) -> None:
        """
        Registering a type builds a new table; the shipped one does not
        know it.
        """
        self.assertNotIn("greeter", [k.name for k in REGISTRY.kinds])
        with self.assertRaises(ConfigError) as caught:
            _build({"backends": {"g": {"type": "greeter"}}}, registry=REGISTRY)
        self.assertIn("backends.g.type", str(caught.exception))
        self.assertIn("known: openai, openai-responses, mock", str(caught.exception))

    def test_unique_names(self) -> None:
        self.assertRaises(ValueError, REGISTRY.plus, GREETER, GREETER)
        self.assertRaises(ValueError, Registry)


class TypeSettingsTests(SynchronousTestCase):
    """
    A type's own settings (its L{BackendKind.options}) are read, typed and
    checked like every other key, and only for that type.
    """

    def test_defaults_and_values(self) -> None:
        config = _build({"backends": {"a": {"type": "greeter"},
                                      "b": {"type": "greeter", "greeting": "${G}", "shout": True},
                                      "greeter": {}}},
                        {"G": "bonjour"})
        self.assertEqual(dict(config.backends["a"].options), {"greeting": "hello", "shout": False})
        self.assertEqual(dict(config.backends["b"].options), {"greeting": "bonjour", "shout": True})
        self.assertEqual(config.backends["greeter"].type, "greeter")

    def test_read_only(self) -> None:
        options = _build({"backends": {"a": {"type": "greeter"}}}).backends["a"].options
        with self.assertRaises(TypeError):
            options["greeting"] = "x"  # type: ignore[index]

    def test_wrong_type_names_key_and_file(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            _build({"backends": {"a": {"type": "greeter", "shout": "yes"}}})
        self.assertEqual(str(caught.exception),
                         f"{SOURCE}: backends.a.shout: expected true or false, got str")

    def test_other_types_do_not_take_them(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            _build({"backends": {"up": {"type": "openai", "greeting": "hi"}}})
        self.assertEqual(str(caught.exception), f"{SOURCE}: backends.up.greeting: unknown key")

    def test_no_url_no_loop_check(self) -> None:
        """
        A type that talks to no URL is not refused for a C{base_url} that
        points at llmproxy itself; one that does is.
        """
        data = {"listen": "tcp:8124:interface=127.0.0.1",
                "backends": {"g": {"type": "greeter", "base_url": "http://127.0.0.1:8124/v1"}}}
        self.assertEqual(_build(data).warnings, ())
        data["backends"]["g"]["type"] = "openai"
        self.assertRaises(ConfigError, _build, data)


class EndToEndTests(TestCase):
    """
    A request over real HTTP, through llmproxy, to a backend of the
    test-only type.
    """

    async def start(self, data: Mapping[str, Any]) -> tuple[str, GreeterBackend]:
        config = _build(data)
        service = ProxyService(config, reactor, registry=WITH_GREETER)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            service.app.site())
        self.addCleanup(port.stopListening)
        backend = service.app.runtime.upstreams.backends["hi"]
        assert isinstance(backend, GreeterBackend)
        return f"http://127.0.0.1:{port.getHost().port}", backend

    async def test_chat(self) -> None:
        url, backend = await self.start({
            "default_backend": "hi",
            "backends": {"hi": {"type": "greeter", "greeting": "bonjour"}},
        })
        status, _, body = await post(self, url + "/v1/chat/completions", {
            "model": "hi:m1", "messages": [{"role": "user", "content": "world"}]})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "bonjour, world")
        [(sent, key)] = backend.sent
        self.assertEqual((sent["model"], key), ("m1", None))

    async def test_responses_stream(self) -> None:
        """
        The Responses frontend reaches it too, translated, streamed, with
        its key and its C{shout} setting.
        """
        url, backend = await self.start({
            "default_backend": "hi",
            "backends": {"hi": {"type": "greeter", "shout": True, "api_key": "sk-g"}},
        })
        status, _, body = await post(self, url + "/v1/responses", {
            "model": "m2", "input": "there", "stream": True})
        self.assertEqual(status, 200, body)
        done = [json.loads(line[len(b"data: "):]) for line in body.splitlines()
                if line.startswith(b"data: ") and b"response.output_text.done" in line]
        self.assertEqual([event["text"] for event in done], ["HELLO, THERE"])
        [(sent, key)] = backend.sent
        self.assertEqual((sent["model"], sent["stream"], key), ("m2", True, "hi#1"))
