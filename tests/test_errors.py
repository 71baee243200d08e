# -*- test-case-name: tests.test_errors -*-
"""
Tests for L{llmproxy.errors}.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import BodyTooLarge, StreamBroken, StreamTimeout
from llmproxy.errors import (
    AuthenticationFailed, InvalidRequest, ProxyError, UpstreamError, error_body,
)


class ShapeTests(SynchronousTestCase):
    """
    Status and type per class, and the OpenAI error shape.
    """

    def test_defaults_per_class(self) -> None:
        cases = [
            (ProxyError, 500, "server_error"),
            (InvalidRequest, 400, "invalid_request_error"),
            (AuthenticationFailed, 401, "invalid_request_error"),
            (UpstreamError, 502, "server_error"),
            (StreamBroken, 502, "server_error"),
            (BodyTooLarge, 502, "server_error"),
            (StreamTimeout, 504, "server_error"),
        ]
        for cls, status, kind in cases:
            error = cls("went wrong")
            self.assertIsInstance(error, ProxyError)
            self.assertEqual((error.status, error.type), (status, kind), cls.__name__)
            self.assertEqual(error.body(), {"error": {"message": "went wrong", "type": kind,
                                                      "param": None, "code": None}})
            self.assertEqual(dict(error.headers), {})
            self.assertEqual(str(error), "went wrong")

    def test_overrides(self) -> None:
        """
        Keywords override the class defaults, on that instance only.
        """
        error = InvalidRequest("bad model", status=404, type="not_found_error",
                               code="model_not_found", param="model")
        self.assertEqual(error.status, 404)
        self.assertEqual(error.body(), {"error": {
            "message": "bad model", "type": "not_found_error", "param": "model",
            "code": "model_not_found"}})
        self.assertEqual(InvalidRequest("x").status, 400)
        self.assertEqual(InvalidRequest("x").type, "invalid_request_error")
        self.assertEqual(InvalidRequest.status, 400)

    def test_headers(self) -> None:
        """
        Extra headers are kept (as a copy), per instance.
        """
        given_headers = {"retry-after": "3"}
        error = UpstreamError("slow down", status=429, headers=given_headers)
        given_headers["retry-after"] = "99"
        self.assertEqual(dict(error.headers), {"retry-after": "3"})
        self.assertEqual(dict(UpstreamError("x").headers), {})
        self.assertNotIn("retry-after", json.dumps(error.body()))

    def test_to_json(self) -> None:
        error = AuthenticationFailed("Incorrect API key provided", code="invalid_api_key")
        self.assertEqual(json.loads(error.to_json()), error.body())
        self.assertIsInstance(error.to_json(), bytes)

    @given(st.text(), st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
    def test_to_json_round_trip(self, message: str, code: str | None,
                                param: str | None) -> None:
        """
        Any message, code and param encode to valid JSON in the shape.
        """
        body = json.loads(ProxyError(message, code=code, param=param).to_json())
        self.assertEqual(body, {"error": {"message": message, "type": "server_error",
                                          "param": param, "code": code}})

    def test_error_body(self) -> None:
        self.assertEqual(error_body("nope"), {"error": {
            "message": "nope", "type": "server_error", "param": None, "code": None}})
        self.assertEqual(error_body("m", "invalid_request_error", "c", "p"), {"error": {
            "message": "m", "type": "invalid_request_error", "param": "p", "code": "c"}})

    def test_catchable(self) -> None:
        """
        Every proxy error is an L{Exception} caught as L{ProxyError}.
        """
        with self.assertRaises(ProxyError) as caught:
            raise StreamTimeout("idle")
        self.assertEqual(caught.exception.status, 504)
