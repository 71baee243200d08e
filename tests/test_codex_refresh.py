"""
The token endpoint's client (C{llmproxy.backends.codex_refresh}): how its
failures are classified, and what its reasons may hold; and the fake
endpoint the custody tests refresh at.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.codex_auth import jwt_claims
from llmproxy.backends.codex_refresh import CLIENT_ID, classify, error_code
from tests.test_codex_custody import HOUR, NOW, CustodyCase


class ClassifyTests(SynchronousTestCase):
    def test_permanent(self) -> None:
        for status, body in [
            (401, b""), (401, b'{"error": {"code": "whatever"}}'),
            (400, b'{"error": {"code": "refresh_token_reused"}}'),
            (400, b'{"error": "refresh_token_expired"}'),
            (403, b'{"code": "REFRESH_TOKEN_INVALIDATED"}'),
            (400, b'{"error": "invalid_grant", "error_description": "x"}'),
        ]:
            self.assertTrue(classify(status, body).permanent, (status, body))

    def test_transient(self) -> None:
        for status, body in [(500, b""), (503, b'{"error": {"code": "temporarily_unavailable"}}'),
                             (429, b"{}"), (400, b'{"error": "invalid_request"}')]:
            self.assertFalse(classify(status, body).permanent, (status, body))

    @given(st.text(max_size=80))
    def test_the_reason_holds_no_body_text(self, secret: str) -> None:
        body = json.dumps({"error": {"message": secret, "code": secret}}).encode()
        reason = classify(500, body).reason
        code = error_code(body)
        self.assertEqual(reason, "token endpoint answered 500" + (f" {code}" if code else ""))
        if code is not None:
            self.assertRegex(code, r"\A[A-Za-z0-9_.-]{1,64}\Z")


class FakeTokenEndpointTests(CustodyCase):
    """
    The fake itself: what it refuses, and the form encoding some clients use.
    """

    async def post(self, data: bytes, kind: str) -> tuple[int, Any]:
        headers: dict[str | bytes, str | bytes] = {"content-type": kind}
        response = await treq.post(self.token_url, data=data, headers=headers,
                                   pool=self.pool)
        return response.code, json.loads(await response.content())

    async def test_needs_codex_s_client_and_grant(self) -> None:
        status, body = await self.post(json.dumps(
            {"client_id": "other", "grant_type": "refresh_token", "refresh_token": "rt-1"}
        ).encode(), "application/json")
        self.assertEqual((status, body["error"]["code"]), (400, "invalid_request"))
        self.assertEqual(self.fake.current, "rt-1")

    async def test_form_encoded_then_reused(self) -> None:
        form = f"client_id={CLIENT_ID}&grant_type=refresh_token&refresh_token=rt-1".encode()
        kind = "application/x-www-form-urlencoded"
        status, body = await self.post(form, kind)
        self.assertEqual((status, body["refresh_token"]), (200, "rt-issued-1"))
        self.assertEqual(jwt_claims(body["access_token"])["exp"], NOW + HOUR)
        status, body = await self.post(form, kind)
        self.assertEqual((status, body["error"]["code"]), (401, "refresh_token_reused"))
        self.assertEqual([c.outcome for c in self.fake.calls], ["rotated", "reused"])
