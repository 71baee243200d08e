"""
The two hot POST routes are declared once, in L{ProxyApp.hot_routes}, and
served without Klein; Klein serves the rest.  Other methods on the hot
paths get the JSON 405 Klein gives elsewhere.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.frontends import ProxyApp
from tests.memsite import USER, Conversation, config_of, memory_app

HOT = ["/v1/chat/completions", "/v1/responses"]


class HotRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.app = memory_app(config_of({"a": {}}), self.clock)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        conversation = Conversation(self.app, self.clock)
        conversation.send(method, path, body)
        conversation.run(0.5)
        reply = conversation.reply()
        return reply.status, reply.body

    def test_declared_once(self) -> None:
        self.assertEqual(sorted(self.app.hot_routes()), [p.encode() for p in HOT])
        klein_paths = {rule.rule for rule in ProxyApp.app.url_map.iter_rules()}
        self.assertEqual(klein_paths & set(HOT), set(), "Klein does not know the hot routes")
        self.assertIn("/v1/models", klein_paths)

    def test_hot_posts_are_served(self) -> None:
        for path, body in zip(HOT, [{"model": "a:m", "messages": USER},
                                    {"model": "a:m", "input": "hi"}]):
            status, content = self.request("POST", path, body)
            self.assertEqual(status, 200, content)

    def test_other_methods_on_hot_paths_are_405(self) -> None:
        for path in HOT:
            for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]:
                status, content = self.request(method, path)
                self.assertEqual(status, 405, (method, path))
                self.assertEqual(json.loads(content), {"error": {
                    "message": f"Method {method} is not allowed here",
                    "type": "invalid_request_error", "param": None,
                    "code": "method_not_allowed"}})

    def test_head_on_a_hot_path_is_405_without_a_body(self) -> None:
        status, content = self.request("HEAD", "/v1/responses")
        self.assertEqual((status, content), (405, b""))

    def test_repeated_slashes_are_unknown_paths(self) -> None:
        """
        As on every route (see tests.test_http_protocol), no merging.
        """
        for path in ["/v1//chat/completions", "//v1/responses"]:
            status, content = self.request("POST", path, {"model": "a:m", "messages": USER})
            self.assertEqual((status, json.loads(content)["error"]["code"]),
                             (404, "unknown_url"), path)

    def test_klein_serves_the_rest(self) -> None:
        self.assertEqual(self.request("GET", "/healthz"), (200, b'{"status": "ok"}'))
        status, content = self.request("POST", "/v1/models")
        self.assertEqual((status, json.loads(content)["error"]["code"]),
                         (405, "method_not_allowed"))
        for path in ["/v1/chat/completions/", "/v1/responses/x", "/v1/Responses"]:
            status, content = self.request("POST", path, {})
            self.assertEqual((status, json.loads(content)["error"]["code"]),
                             (404, "unknown_url"), path)

    def test_loop_guard_comes_first(self) -> None:
        for method in ["POST", "GET"]:
            conversation = Conversation(self.app, self.clock)
            conversation.send(method, "/v1/chat/completions", {},
                              {"x-llmproxy-loop-guard": "1"})
            conversation.run()
            reply = conversation.reply()
            self.assertEqual((reply.status, json.loads(reply.body)["error"]["code"]),
                             (400, "proxy_loop_detected"))

    def test_errors_stay_openai_shaped_without_the_site(self) -> None:
        stub = StubTreq(self.app.site().resource)
        d = stub.get("http://proxy/v1/responses")
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 405)
        body = self.successResultOf(stub.content(response))
        self.assertEqual(json.loads(body)["error"]["code"], "method_not_allowed")
