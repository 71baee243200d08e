"""
Reading ChatGPT-login credentials from a Codex C{auth.json}.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.codex_auth import (
    CodexAuthError, Credentials, FileAccount, credentials_of, jwt_claims, read_auth_file,
)
from llmproxy.testing.codex import auth_data, make_jwt, write_auth_file

claims = st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8)),
                         max_size=4)


class JwtTests(SynchronousTestCase):
    @given(claims)
    def test_claims_round_trip(self, data: dict[str, object]) -> None:
        self.assertEqual(dict(jwt_claims(make_jwt(data))), data)

    @given(st.text(max_size=30))
    def test_anything_else_has_no_claims(self, text: str) -> None:
        if text.count(".") != 2:
            self.assertEqual(jwt_claims(text), {})


class CredentialsTests(SynchronousTestCase):
    def test_chatgpt_login(self) -> None:
        data = auth_data("tok", exp=2_000_000_000, account_id="acct-9", plan="pro")
        found = credentials_of(data, Path("auth.json"))
        self.assertEqual((found.account_id, found.plan, found.expires_at),
                         ("acct-9", "pro", 2_000_000_000.0))
        self.assertEqual(found.access_token, data["tokens"]["access_token"])
        self.assertNotIn(found.access_token, repr(found))

    def test_account_from_the_id_token_claim(self) -> None:
        data = auth_data("tok", exp=None, account_id="acct-7")
        data["tokens"]["account_id"] = None
        found = credentials_of(data, Path("auth.json"))
        self.assertEqual((found.account_id, found.expires_at), ("acct-7", None))

    def test_api_key_login_is_refused(self) -> None:
        data = {"OPENAI_API_KEY": "sk-secret", "tokens": None}
        e = self.assertRaises(CodexAuthError, credentials_of, data, Path("a.json"))
        self.assertTrue(e.permanent)
        self.assertNotIn("sk-secret", e.message)

    def test_missing_file_says_what_to_run(self) -> None:
        e = self.assertRaises(CodexAuthError, read_auth_file, Path(self.mktemp()))
        self.assertIn("codex login", e.message)


class FileAccountTests(SynchronousTestCase):
    def _result(self, d: Deferred[object]) -> object:
        return self.successResultOf(d)

    def test_unauthorized_finds_a_newer_token_or_none(self) -> None:
        path = write_auth_file(Path(self.mktemp()) / "auth.json", auth_data("one", exp=None))
        account = FileAccount("main", path)
        used = self._result(Deferred.fromCoroutine(account.credentials()))
        assert isinstance(used, Credentials)
        self.assertIsNone(self._result(Deferred.fromCoroutine(account.unauthorized(used))))
        write_auth_file(path, auth_data("two", exp=None))
        fresh = self._result(Deferred.fromCoroutine(account.unauthorized(used)))
        assert isinstance(fresh, Credentials)
        self.assertEqual(jwt_claims(fresh.access_token)["sub"], "two")
        self.assertNotIn("access_token", json.dumps(account.status()))
