"""
Whatever JSON a client sends, llmproxy answers with a status below 500 and
an OpenAI-shaped body when it refuses.  Driven synchronously: the app runs
on a memory transport (treq's StubTreq) with the mock backend on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from llmproxy.service import build_upstreams
from llmproxy.frontends import ProxyApp
from llmproxy.testing import config_data, make_config

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
                          optional={"content": json_values, "tool_calls": json_values,
                                    "name": json_values}),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={"model": st.sampled_from(["mock-echo", "mock:m?temperature=0.5", "bad:m", "",
                                        "m?temperature=9", "a|b"]) | json_values,
              "messages": messages | json_values,
              "stream": st.booleans() | json_values,
              "tools": json_values, "tool_choice": json_values,
              "response_format": json_values, "stream_options": json_values},
)
responses_bodies = st.fixed_dictionaries(
    {},
    optional={"model": st.sampled_from(["mock-echo", "mock:m"]) | json_values,
              "input": json_values | st.lists(st.fixed_dictionaries(
                  {"type": st.sampled_from(["message", "function_call",
                                            "function_call_output", "reasoning", "zzz"])},
                  optional={"role": json_values, "content": json_values,
                            "call_id": json_values, "output": json_values,
                            "arguments": json_values, "name": json_values}), max_size=3),
              "instructions": json_values, "tools": json_values, "text": json_values,
              "stream": st.booleans(), "previous_response_id": json_values,
              "reasoning": json_values, "max_output_tokens": json_values},
)


class ArbitraryBodiesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        config = make_config(config_data({"mock": {"type": "mock"}}))
        pool = HTTPConnectionPool(self.clock, persistent=False)
        app = ProxyApp(config, build_upstreams(config, pool, self.clock, self.clock), self.clock)
        self.stub = StubTreq(app.site().resource)

    def _settle(self, d: Any, what: Any) -> Any:
        """
        Pump the memory transport and the clock until C{d} has a result.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        for _ in range(500):
            if results:
                break
            self.stub.flush()
            self.clock.advance(0.01)
        if not results:
            self.fail(f"no answer to {what!r}")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def _post(self, path: str, body: Any) -> tuple[int, bytes]:
        d = self.stub.post("http://proxy" + path, data=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
        response = self._settle(d, body)
        return response.code, self._settle(self.stub.content(response), body)

    def _check(self, status: int, content: bytes) -> None:
        self.assertLess(status, 500, content[:300])
        if status >= 400:
            error = json.loads(content)["error"]
            self.assertIsInstance(error["message"], str)
            self.assertEqual(set(error), {"message", "type", "param", "code"})

    @settings(max_examples=150)
    @given(chat_bodies)
    def test_chat_never_500(self, body: dict[str, Any]) -> None:
        self._check(*self._post("/v1/chat/completions", body))

    @settings(max_examples=150)
    @given(responses_bodies)
    def test_responses_never_500(self, body: dict[str, Any]) -> None:
        self._check(*self._post("/v1/responses", body))

    @settings(max_examples=50)
    @given(json_values)
    def test_any_json_document(self, body: Any) -> None:
        self._check(*self._post("/v1/chat/completions", body))

    def test_deep_nesting_is_never_a_500(self) -> None:
        """
        Nesting deep enough to exhaust Python's recursion (in parsing or in
        translation) is the client's error.
        """
        for depth in (200, 5000, 200000):
            nested = "[" * depth + "1" + "]" * depth
            for path, body in (
                ("/v1/chat/completions",
                 '{"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], '
                 '"tools": %s}' % nested),
                ("/v1/responses", '{"model": "mock-echo", "input": "hi", "metadata": %s}' % nested),
            ):
                d = self.stub.post("http://proxy" + path, data=body.encode(),
                                   headers={"content-type": "application/json"})
                response = self._settle(d, depth)
                content = self._settle(self.stub.content(response), depth)
                self._check(response.code, content)

    def test_unexpected_shapes_in_translation_are_400(self) -> None:
        for body in (
            {"model": "mock-echo", "input": [{"role": "user", "content": [{"type": ["x"]}]}]},
            {"model": "mock-echo", "input": [{"role": "user", "content": [{"type": {"a": 1}}]}]},
        ):
            status, content = self._post("/v1/responses", body)
            self.assertEqual(status, 400, content)
            self._check(status, content)
