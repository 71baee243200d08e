"""
Token custody of ChatGPT-login accounts (C{llmproxy.backends.codex_tokens}):
read-only accounts follow the Codex CLI's C{auth.json}; owned accounts
refresh their own copy (once per rotation across processes: also
C{test_codex_custody_processes}), and no token reaches a log, an error or
the status.

Time is a L{Clock} (token expiry, lock polling); the token endpoint is a
L{FakeTokenEndpoint} on a real port, reached through a real L{Agent}.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Awaitable, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from llmproxy.backends.codex_auth import (
    Account, CodexAuthError, Credentials, jwt_claims, write_private,
)
from llmproxy.backends.codex_refresh import REFRESH_TIMEOUT
from llmproxy.backends import codex_tokens
from llmproxy.backends.codex_tokens import (
    FRESH_FOR, LOCK_POLL, LOCK_WAIT, REFRESH_INTERVAL, REFRESH_MARGIN, RETRY_AFTER, OwnedAccount,
    iso, open_account, safe_name,
)
from llmproxy.testing import listen_tokens
from llmproxy.testing.codex import auth_data, write_auth_file
from llmproxy.testing.upstream import Stall

#: Where the tests' clock starts (a realistic time, so ISO dates are too).
NOW = 1_800_000_000.0
HOUR = 3600.0


def sub(creds: Credentials | None) -> str:
    """
    Which token C{creds} holds (the fixtures name it in its C{sub}).
    """
    assert creds is not None
    return str(jwt_claims(creds.access_token)["sub"])


class CustodyCase(TestCase):
    """
    An C{auth.json}, a token endpoint, a store directory, and a clock.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(NOW)
        root = Path(self.mktemp())
        self.auth_file = root / "codex" / "auth.json"
        self.store_dir = root / "store"
        self.fake, port, self.token_url = await listen_tokens(reactor, self.clock)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.fake.wait_idle)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    def login(self, access: str = "one", exp: float | None = NOW + HOUR, **kw: Any) -> None:
        write_auth_file(self.auth_file, auth_data(access, exp=exp, **kw))

    def account(self, custody: str = "owned", net: IReactorTime | None = None) -> Account:
        return open_account(
            "main", self.auth_file, custody, token_url=self.token_url,
            store_dir=self.store_dir, agent=self.agent, clock=self.clock,
            reactor=net or reactor)

    def owned(self, net: IReactorTime | None = None) -> OwnedAccount:
        account = self.account("owned", net)
        assert isinstance(account, OwnedAccount)
        return account

    async def failure(self, work: Awaitable[Any]) -> CodexAuthError:
        try:
            await work
        except CodexAuthError as e:
            return e
        self.fail("no CodexAuthError")

    def store(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.store_dir / "acct-1.json").read_text())
        return data


def _touch_back(path: Path, before: os.stat_result) -> None:
    """
    Give C{path} back its old mtime (a rewrite llmproxy cannot see by stat
    alone, unless its size or inode changed).
    """
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


class ReadOnlyTests(CustodyCase):
    async def test_follows_the_file_the_cli_rewrites(self) -> None:
        """
        The file is read again when its mtime changes, not otherwise, and
        the token endpoint is never called.
        """
        self.login("one")
        account = self.account("read-only")
        self.assertEqual(sub(await account.credentials()), "one")
        before = self.auth_file.stat()
        self.login("two")
        _touch_back(self.auth_file, before)
        self.assertEqual(sub(await account.credentials()), "one")
        self.login("six")
        os.utime(self.auth_file, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        self.assertEqual(sub(await account.credentials()), "six")
        self.assertEqual(self.fake.calls, [])

    async def test_a_file_caught_half_written(self) -> None:
        """
        The CLI rewrites C{auth.json} in place: a torn read keeps the
        token read before, and the file is read again next time.
        """
        self.login("one")
        account = self.account("read-only")
        await account.credentials()
        whole = json.dumps(auth_data("two", exp=NOW + HOUR))
        self.auth_file.write_text(whole[:40])
        self.assertEqual(sub(await account.credentials()), "one")
        self.auth_file.write_text("")
        self.assertEqual(sub(await account.credentials()), "one")
        self.auth_file.write_text(whole)
        self.assertEqual(sub(await account.credentials()), "two")
        self.assertIsNone(account.status()["error"])

    async def test_read_again_near_expiry(self) -> None:
        self.login("one", exp=NOW + REFRESH_MARGIN + 10)
        account = self.account("read-only")
        await account.credentials()
        before = self.auth_file.stat()
        self.login("two", exp=NOW + HOUR)
        _touch_back(self.auth_file, before)
        self.clock.advance(10)
        self.assertEqual(sub(await account.credentials()), "two")
        self.assertEqual(self.fake.calls, [])

    async def test_expired_says_what_to_run(self) -> None:
        self.login("one", exp=NOW + 60)
        account = self.account("read-only")
        await account.credentials()
        self.clock.advance(60)
        e = await self.failure(account.credentials())
        self.assertFalse(e.permanent)
        self.assertIn("run any `codex` command", e.message)
        self.assertIn("tokens: owned", e.message)
        self.assertEqual(self.fake.calls, [])

    async def test_unauthorized_finds_the_cli_s_new_token(self) -> None:
        self.login("one")
        account = self.account("read-only")
        used = await account.credentials()
        refused = await self.assertFailure(
            Deferred.fromCoroutine(account.unauthorized(used)), CodexAuthError)
        self.assertIn("run any `codex` command", refused.message)
        self.assertFalse(refused.permanent)
        self.login("two")
        self.assertEqual(sub(await account.unauthorized(used)), "two")
        self.login("other", account_id="acct-2")
        await self.assertFailure(Deferred.fromCoroutine(account.unauthorized(used)),
                                 CodexAuthError)
        self.assertEqual(self.fake.calls, [])

    async def test_status(self) -> None:
        self.login("one", plan="pro")
        account = self.account("read-only")
        creds = await account.credentials()
        status = account.status()
        self.assertEqual(
            {k: status[k] for k in ("name", "custody", "account_id", "plan", "expires_at")},
            {"name": "main", "custody": "read-only", "account_id": "acct-1", "plan": "pro",
             "expires_at": iso(NOW + HOUR)})
        self.assertEqual(status["last_refresh"], "2026-11-01T00:00:00Z")
        text = json.dumps(status)
        self.assertNotIn(creds.access_token, text)
        self.assertNotIn("rt-1", text)


class OwnedImportTests(CustodyCase):
    async def test_imported_once_and_auth_file_never_written(self) -> None:
        self.login("one", exp=NOW + REFRESH_MARGIN + 5)
        written = self.auth_file.read_bytes(), self.auth_file.stat().st_mtime_ns
        account = self.owned()
        self.assertEqual(sub(await account.credentials()), "one")
        store = self.store_dir / "acct-1.json"
        self.assertEqual(account.store, store)
        self.assertEqual(stat.S_IMODE(store.stat().st_mode), 0o600)
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-1")
        self.clock.advance(10)
        self.assertEqual(sub(await account.credentials()), "access-1")
        self.assertEqual(stat.S_IMODE(store.stat().st_mode), 0o600)
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-issued-1")
        self.assertEqual((self.auth_file.read_bytes(), self.auth_file.stat().st_mtime_ns),
                         written)
        self.assertEqual([f.name for f in self.store_dir.iterdir()
                          if not f.name.endswith(".lock")], ["acct-1.json"])

    async def test_the_cli_s_file_changing_is_not_imported_again(self) -> None:
        self.login("one")
        account = self.owned()
        await account.credentials()
        self.login("cli", refresh="rt-cli")
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-1")

    async def test_a_new_account_object_uses_the_store(self) -> None:
        """
        A restart (or a second backend on the same login) finds the store
        and does not import the CLI's (older) file again.
        """
        self.login("one", exp=NOW + 10)
        await self.owned().credentials()
        self.assertEqual(self.fake.count("rotated"), 1)
        self.assertEqual(sub(await self.owned().credentials()), "access-1")
        self.assertEqual(self.fake.count("rotated"), 1)

    async def test_an_unusable_store_is_an_auth_error(self) -> None:
        self.login("one")
        self.store_dir.parent.mkdir(parents=True, exist_ok=True)
        self.store_dir.write_text("a file, not a directory")
        e = await self.failure(self.owned().credentials())
        self.assertFalse(e.permanent)
        self.assertIn("token store", e.message)

    async def test_tokens_not_saved_are_kept_in_memory(self) -> None:
        self.login("one", exp=NOW + 400)
        account = self.owned()
        await account.credentials()

        def full(path: Path, data: Any) -> None:
            raise OSError(28, "No space left on device")

        self.patch(codex_tokens, "write_private", full)
        self.clock.advance(100)
        self.assertEqual(sub(await account.credentials()), "access-1")
        self.assertEqual(sub(await account.credentials()), "access-1")
        self.assertEqual(account.status()["last_refresh_result"],
                         "ok, but not saved: No space left on device")
        self.assertEqual(len(self.fake.calls), 1)

    def test_store_writes_are_atomic(self) -> None:
        """
        A write that fails half way leaves the old file whole, and no
        temporary file behind.
        """
        path = Path(self.mktemp())
        path.mkdir()
        store = path / "acct-1.json"
        write_private(store, {"tokens": {"refresh_token": "rt-1"}})
        self.assertEqual(stat.S_IMODE(store.stat().st_mode), 0o600)
        self.assertRaises(TypeError, write_private, store, {"tokens": object()})
        self.assertEqual(json.loads(store.read_text()), {"tokens": {"refresh_token": "rt-1"}})
        self.assertEqual([p.name for p in path.iterdir()], ["acct-1.json"])

    def test_safe_names(self) -> None:
        self.assertEqual(safe_name("acct-1"), "acct-1")
        self.assertEqual(safe_name("../../etc/passwd"), "_.._etc_passwd")
        self.assertEqual(safe_name(".."), "account")

    def test_unknown_custody(self) -> None:
        self.assertRaises(ValueError, self.account, "shared")


class OwnedRefreshTests(CustodyCase):
    async def test_proactive_refresh_near_exp(self) -> None:
        self.login("one", exp=NOW + HOUR)
        account = self.owned()
        await account.credentials()
        self.clock.advance(HOUR - REFRESH_MARGIN - 1)
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(self.fake.calls, [])
        self.clock.advance(1)
        fresh = await account.credentials()
        self.assertEqual(sub(fresh), "access-1")
        self.assertEqual(fresh.expires_at, self.clock.seconds() + HOUR)
        self.assertEqual([(c.refresh_token, c.outcome) for c in self.fake.calls],
                         [("rt-1", "rotated")])
        saved = self.store()
        self.assertEqual(saved["tokens"]["refresh_token"], "rt-issued-1")
        self.assertEqual(saved["tokens"]["account_id"], "acct-1")
        self.assertEqual(saved["last_refresh"], iso(self.clock.seconds()))
        status = account.status()
        self.assertEqual((status["last_refresh"], status["last_refresh_result"]),
                         (iso(self.clock.seconds()), "ok"))

    async def test_no_exp_refreshes_after_eight_days(self) -> None:
        self.login("one", exp=None, last_refresh=iso(NOW - REFRESH_INTERVAL + 5))
        account = self.owned()
        self.assertEqual(sub(await account.credentials()), "one")
        self.clock.advance(5)
        self.assertEqual(sub(await account.credentials()), "access-1")
        self.assertEqual(len(self.fake.calls), 1)

    async def test_unauthorized_refreshes_once(self) -> None:
        self.login("one")
        account = self.owned()
        used = await account.credentials()
        fresh = await account.unauthorized(used)
        self.assertEqual(sub(fresh), "access-1")
        self.assertEqual(sub(await account.credentials()), "access-1")
        # A second request that was refused with the old token adopts the new one.
        self.assertEqual(sub(await account.unauthorized(used)), "access-1")
        self.assertEqual(len(self.fake.calls), 1)

    async def test_a_refused_fresh_token_is_not_refreshed_again_at_once(self) -> None:
        """
        The upstream refusing a token just refreshed (an account it
        refuses whatever the token) costs no refresh per request.
        """
        self.login("one")
        account = self.owned()
        fresh = await account.unauthorized(await account.credentials())
        assert fresh is not None
        self.assertIsNone(await account.unauthorized(fresh))
        self.assertEqual(len(self.fake.calls), 1)
        self.clock.advance(FRESH_FOR)
        self.assertEqual(sub(await account.unauthorized(fresh)), "access-2")

    async def test_adopts_a_token_another_process_saved(self) -> None:
        self.login("one")
        account = self.owned()
        used = await account.credentials()
        data = self.store()
        data["tokens"].update(auth_data("theirs", exp=NOW + HOUR)["tokens"])
        (self.store_dir / "acct-1.json").write_text(json.dumps(data))
        self.assertEqual(sub(await account.unauthorized(used)), "theirs")
        self.assertEqual(sub(await account.credentials()), "theirs")
        self.assertEqual(self.fake.calls, [])

    async def test_one_refresh_in_flight_survives_its_request(self) -> None:
        """
        Requests needing a refresh at once share one; the request that
        started it going away does not stop it (its answer would be lost,
        and the login with it).
        """
        self.fake.delay = 1.0
        self.login("one", exp=NOW + 400)
        account = self.owned()
        await account.credentials()
        self.clock.advance(100)
        first = Deferred.fromCoroutine(account.credentials())
        second = Deferred.fromCoroutine(account.credentials())
        await _until(lambda: len(self.fake.calls) == 1)
        first.cancel()
        self.failureResultOf(first)
        self.clock.advance(1.0)
        self.assertEqual(sub(await second), "access-1")
        self.assertEqual(len(self.fake.calls), 1)
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-issued-1")


class OwnedFailureTests(CustodyCase):
    async def test_permanent_failure_is_cached_until_a_new_login(self) -> None:
        self.login("one", exp=NOW + HOUR)
        account = self.owned()
        await account.credentials()
        self.fake.revoke()
        self.clock.advance(HOUR - REFRESH_MARGIN)
        e = await self.failure(account.credentials())
        self.assertTrue(e.permanent)
        self.assertIn("codex login", e.message)
        e = await self.failure(account.credentials())
        self.assertTrue(e.permanent)
        self.assertIsNone(await account.unauthorized(Credentials("x", "acct-1")))
        self.assertEqual(len(self.fake.calls), 1)
        self.assertTrue(account.status()["last_refresh_result"].startswith(
            "permanent: token endpoint answered 401 refresh_token_invalidated"))
        # The user logs in again: the new login is imported (and refreshed
        # at once, being due).
        self.fake.current = "rt-new"
        self.login("relogged", exp=self.clock.seconds() + HOUR, refresh="rt-new")
        self.assertEqual(sub(await account.credentials()), "relogged")
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-new")
        self.assertIsNone(account.status()["error"])
        self.fake.revoke()
        self.clock.advance(HOUR - REFRESH_MARGIN)
        await self.failure(account.credentials())
        self.fake.current = "rt-newer"
        self.login("again", exp=self.clock.seconds() + 10, refresh="rt-newer")
        self.assertEqual(sub(await account.credentials()), "access-1")
        self.assertEqual(self.store()["tokens"]["refresh_token"], "rt-issued-1")

    async def test_refresh_token_reused_is_permanent(self) -> None:
        self.login("one", exp=NOW + 10, refresh="rt-old")
        self.fake.dead.add("rt-old")
        e = await self.failure(self.owned().credentials())
        self.assertTrue(e.permanent)
        self.assertEqual(self.fake.count("reused"), 1)

    async def test_transient_failure_keeps_a_valid_token(self) -> None:
        self.login("one", exp=NOW + REFRESH_MARGIN)
        account = self.owned()
        self.fake.fail(500, times=3)
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(account.status()["last_refresh_result"],
                         "transient: token endpoint answered 500 server_error")
        # Not asked again at once; then again, and answered.
        self.clock.advance(RETRY_AFTER - 1)
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(len(self.fake.calls), 1)
        self.clock.advance(1)
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(len(self.fake.calls), 2)
        # Expired and the endpoint still down: a transient error.
        self.clock.advance(REFRESH_MARGIN)
        e = await self.failure(account.credentials())
        self.assertFalse(e.permanent)
        self.assertIn("could not be refreshed (token endpoint answered 500", e.message)
        self.clock.advance(RETRY_AFTER)
        self.assertEqual(sub(await account.credentials()), "access-1")

    async def test_timeout_is_transient(self) -> None:
        self.login("one", exp=NOW + 100)
        self.fake.script.append(Stall())
        account = self.owned(net=self.clock)
        d = Deferred.fromCoroutine(account.credentials())
        await _until(lambda: len(self.fake.calls) == 1)
        self.clock.advance(REFRESH_TIMEOUT)
        self.assertEqual(sub(await d), "one")
        self.assertIn("did not answer within", account.status()["last_refresh_result"])

    async def test_connection_refused_is_transient(self) -> None:
        self.login("one", exp=NOW + 100)
        self.token_url = "http://127.0.0.1:1/oauth/token"
        account = self.owned()
        self.assertEqual(sub(await account.credentials()), "one")
        self.assertEqual(account.status()["last_refresh_result"],
                         "transient: token endpoint unreachable (ConnectionRefusedError)")

    async def test_no_token_in_logs_errors_or_status(self) -> None:
        """
        Failed refreshes, one echoing the token it was sent (as some
        endpoints do), log and raise nothing that holds a token.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.login("one", exp=NOW + 10, refresh="rt-secret-1")
        tokens = ["rt-secret-1", auth_data("one", exp=NOW + 10)["tokens"]["access_token"]]
        self.fake.current = "rt-secret-1"
        self.fake.fail(500, {"error": {"message": "bad refresh token rt-secret-1",
                                       "code": "rt-secret-1 is bad"}})
        self.fake.fail(401, {"error": "bad refresh token rt-secret-1"})
        account = self.owned()
        await account.credentials()
        self.clock.advance(RETRY_AFTER + 10)
        messages = [(await self.failure(account.credentials())).message for _ in range(2)]
        texts = messages + [json.dumps(account.status())] + [
            f"{formatEvent(e)} {e!r}" for e in events]
        self.assertEqual(len(self.fake.calls), 2)
        self.assertTrue(any("token refresh failed" in t for t in texts))
        for text in texts:
            for token in tokens:
                self.assertNotIn(token, text)


class LockTests(CustodyCase):
    def hold(self, account: OwnedAccount) -> int:
        assert account.store is not None
        fd = os.open(str(account.store) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    async def test_waits_for_another_process_s_refresh(self) -> None:
        """
        While another process holds the lock, the refresh waits (polling
        on the clock); once it is released, the store is read again and
        the other process's token adopted, with no refresh of ours.
        """
        self.login("one", exp=NOW + 400)
        account = self.owned()
        await account.credentials()
        fd = self.hold(account)
        self.clock.advance(100)
        d = Deferred.fromCoroutine(account.credentials())
        self.clock.advance(LOCK_POLL * 3)
        self.assertNoResult(d)
        assert account.store is not None
        write_auth_file(account.store, auth_data("theirs", exp=NOW + HOUR, refresh="rt-theirs"))
        os.close(fd)
        self.clock.advance(LOCK_POLL)
        self.assertEqual(sub(self.successResultOf(d)), "theirs")
        self.assertEqual(self.fake.calls, [])

    async def test_gives_up_after_a_bounded_wait(self) -> None:
        self.login("one", exp=NOW + 400)
        account = self.owned()
        await account.credentials()
        fd = self.hold(account)
        self.addCleanup(os.close, fd)
        self.clock.advance(100)
        d = Deferred.fromCoroutine(account.credentials())
        for _ in range(int(LOCK_WAIT / LOCK_POLL) + 1):
            self.clock.advance(LOCK_POLL)
        self.assertEqual(sub(self.successResultOf(d)), "one")
        self.assertIn("refresh lock", account.status()["last_refresh_result"])
        self.assertEqual(self.fake.calls, [])


async def _until(done: Any, limit: float = 5.0) -> None:
    """
    Let the real reactor run until C{done()} (network I/O the test waits
    for), at most C{limit} seconds.
    """
    give_up = time.monotonic() + limit
    while not done():
        if time.monotonic() > give_up:
            raise AssertionError("timed out waiting")
        await deferLater(reactor, 0.005, lambda: None)
