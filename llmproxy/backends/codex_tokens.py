# -*- test-case-name: tests.test_codex_custody,tests.test_codex_custody_processes -*-
"""
Token custody for ChatGPT-login accounts: who keeps an account's tokens
fresh, so that llmproxy and a Codex CLI sharing the login never burn each
other's rotating refresh token (C{refresh_token_reused}, the login lost).

 - C{read-only} (L{ReadOnlyAccount}, the default): the Codex CLI owns the
   tokens; llmproxy re-reads its C{auth.json} when the file changes and
   never refreshes.
 - C{owned} (L{OwnedAccount}): llmproxy imports the login once into its
   own store and refreshes it there, one refresh per rotation across all
   its processes (a file lock, and a re-read of the store under it).

L{open_account} builds either; the backend sees only L{Account}.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from llmproxy.backends.codex_auth import (
    Account, CodexAuthError, Credentials, credentials_of, read_auth_file, write_private,
)
from llmproxy.backends.codex_refresh import RefreshFailed, TokenEndpoint

READ_ONLY = "read-only"
OWNED = "owned"
CUSTODIES = (READ_ONLY, OWNED)
#: Never refreshing is the safe default: it cannot burn the CLI's login.
DEFAULT_CUSTODY = READ_ONLY
#: Refresh (or, read-only, re-read) this long before the access token's C{exp}.
REFRESH_MARGIN = 300.0
#: With no C{exp}, refresh once the last refresh is this old (Codex's own rule).
REFRESH_INTERVAL = 8 * 24 * 3600.0
#: How often a process waiting for another one's refresh looks at the lock.
LOCK_POLL = 0.05
#: How long it waits before giving up (a transient failure).
LOCK_WAIT = 15.0
#: After a transient failure, how long requests go without a new refresh
#: attempt (so a down token endpoint is not asked once per request).
RETRY_AFTER = 15.0
#: A 401 to a token this process got less than this long ago is not
#: answered with another refresh (an account the upstream refuses would
#: otherwise cost a refresh per request).
FRESH_FOR = 60.0


def iso(when: float) -> str:
    """
    C{when} (POSIX seconds) as RFC 3339 UTC, as Codex writes C{last_refresh}.
    """
    stamp = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def parse_time(value: Any) -> float | None:
    """
    An RFC 3339 time as POSIX seconds, or L{None} when it is none.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def safe_name(account_id: str) -> str:
    """
    A file name for C{account_id}: only C{[A-Za-z0-9._-]}, never hidden.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", account_id).lstrip(".") or "account"


def _stat(path: Path) -> tuple[int, int, int] | None:
    """
    What changes when C{path} is rewritten (in place or by a rename), or
    L{None} when it is missing.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _expires(creds: Credentials) -> str | None:
    return iso(creds.expires_at) if creds.expires_at is not None else None


def _refresh_token(data: Mapping[str, Any]) -> str | None:
    tokens = data.get("tokens")
    token = tokens.get("refresh_token") if isinstance(tokens, dict) else None
    return token if isinstance(token, str) else None


class ReadOnlyAccount:
    """
    An account whose tokens the Codex CLI keeps fresh: its C{auth.json} is
    re-read when it changed (mtime, size or inode) and before its token is
    used within L{REFRESH_MARGIN} of its expiry; it is never written and
    never refreshed here.
    """

    def __init__(self, name: str, auth_file: Path, clock: IReactorTime) -> None:
        self.name = name
        self.auth_file = auth_file
        self.clock = clock
        self._seen: tuple[int, int, int] | None = None
        self._creds: Credentials | None = None
        self._last_refresh: str | None = None
        self._error: str | None = None

    def _read(self) -> Credentials:
        seen = _stat(self.auth_file)
        try:
            data, creds = read_auth_file(self.auth_file)
        except CodexAuthError as e:
            self._error = e.message
            raise
        self._seen, self._creds, self._error = seen, creds, None
        last = data.get("last_refresh")
        self._last_refresh = last if isinstance(last, str) else None
        return creds

    def _current(self) -> Credentials:
        """
        The file's credentials, read again when it changed or the token
        is near its end.  The Codex CLI rewrites the file in place, so a
        read may catch it half written: the token read before serves
        meanwhile (the file is read again on the next request).
        """
        creds = self._creds
        if (creds is None or _stat(self.auth_file) != self._seen
                or (creds.expires_at is not None
                    and creds.expires_at - self.clock.seconds() <= REFRESH_MARGIN)):
            try:
                creds = self._read()
            except CodexAuthError as e:
                if e.permanent or creds is None:
                    raise
        return creds

    async def credentials(self) -> Credentials:
        creds = self._current()
        if creds.expires_at is not None and creds.expires_at <= self.clock.seconds():
            self._error = "access token expired"
            raise CodexAuthError(
                f"the ChatGPT access token in {self.auth_file} has expired and the file holds "
                "no newer one: run any `codex` command (it refreshes the file), or set "
                "`tokens: owned` on this backend to let llmproxy refresh its own copy")
        return creds

    async def unauthorized(self, used: Credentials) -> Credentials | None:
        """
        The file's token if the CLI wrote a newer one for this account;
        else what the user can do about it (only the CLI refreshes here).
        """
        try:
            fresh: Credentials | None = self._read()
        except CodexAuthError:
            fresh = None
        if fresh is not None and fresh.access_token != used.access_token \
                and fresh.account_id == used.account_id:
            return fresh
        self._error = "access token refused upstream"
        raise CodexAuthError(
            f"the ChatGPT backend refused the access token in {self.auth_file}, and the file "
            "holds no newer one: run any `codex` command (it refreshes the file), or set "
            "`tokens: owned` on this backend to let llmproxy refresh its own copy")

    def status(self) -> dict[str, Any]:
        creds = self._creds
        return {
            "name": self.name, "custody": READ_ONLY, "auth_file": str(self.auth_file),
            "account_id": creds.account_id if creds else None,
            "plan": creds.plan if creds else None,
            "expires_at": _expires(creds) if creds else None,
            "last_refresh": self._last_refresh, "last_refresh_result": None,
            "error": self._error,
        }


class RefreshLock:
    """
    The lock serialising one account's refreshes across processes: an
    exclusive C{flock} on a file next to its store, taken without blocking
    and polled on C{clock} (the reactor never waits on it).  The file is
    never removed (removing it would let two processes lock two files).
    """

    def __init__(self, path: Path, clock: IReactorTime, wait: float = LOCK_WAIT,
                 poll: float = LOCK_POLL) -> None:
        self.path = path
        self.clock = clock
        self.wait = wait
        self.poll = poll
        self._fd: int | None = None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    async def __aenter__(self) -> RefreshLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            give_up = self.clock.seconds() + self.wait
            while not self._try(fd):
                if self.clock.seconds() >= give_up:
                    raise RefreshFailed(
                        f"another process held the refresh lock for over {self.wait:g} s")
                await deferLater(self.clock, self.poll, lambda: None)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


class OwnedAccount:
    """
    An account whose tokens llmproxy keeps: imported once from
    C{auth_file} into C{store_dir} (C{auth_file} is never written), then
    refreshed there, proactively near expiry and on a 401.

    Refreshes are shared within the process (one in flight per account,
    never cancelled by the request that started it: a refresh the endpoint
    answered but llmproxy did not save burns the login) and serialised
    across processes by L{RefreshLock}; under the lock the store is read
    again, and a token another process got is adopted instead of
    refreshing the one it rotated away.
    """

    log = Logger()

    def __init__(
        self, name: str, auth_file: Path, store_dir: Path, endpoint: TokenEndpoint,
        clock: IReactorTime,
    ) -> None:
        self.name = name
        self.auth_file = auth_file
        self.store_dir = store_dir
        self.endpoint = endpoint
        self.clock = clock
        self.store: Path | None = None
        self._data: dict[str, Any] = {}
        self._creds: Credentials | None = None
        self._seen: tuple[int, int, int] | None = None
        self._permanent: str | None = None
        self._burnt: str | None = None
        self._auth_seen: tuple[int, int, int] | None = None
        self._last: tuple[float, str] | None = None
        self._retry_at = 0.0
        self._fresh_until: dict[str, float] = {}
        self._inflight: Deferred[None] | None = None
        self._followers: list[Deferred[None]] = []

    # -- the store

    def _lock(self) -> RefreshLock:
        assert self.store is not None
        return RefreshLock(self.store.with_name(self.store.name + ".lock"), self.clock)

    def _load_store(self) -> Credentials:
        """
        Read the store (again); C{_creds} is what it holds.
        """
        assert self.store is not None
        seen = _stat(self.store)
        data, creds = read_auth_file(self.store)
        self._data, self._creds, self._seen = dict(data), creds, seen
        return creds

    def _fresh(self) -> Credentials:
        """
        The store's credentials, read again when another process rewrote it.
        """
        assert self.store is not None
        if self._creds is None or _stat(self.store) != self._seen:
            return self._load_store()
        return self._creds

    async def _import(self, data: Mapping[str, Any], creds: Credentials) -> None:
        """
        Make the store this login's, unless it already holds a usable one
        (another process imported it, or a previous run did, and may have
        rotated it since: the store wins; after a permanent failure, a
        login other than the burnt one).
        """
        self.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = self.store_dir / (safe_name(creds.account_id or self.name) + ".json")
        async with self._lock():
            if self.store.exists():
                self._load_store()
                if self._burnt is None or _refresh_token(self._data) != self._burnt:
                    self._permanent, self._burnt, self._retry_at = None, None, 0.0
                    return
            write_private(self.store, {**data, "llmproxy": {
                "imported_from": str(self.auth_file), "imported_at": iso(self.clock.seconds())}})
            self._load_store()
            self._permanent, self._burnt, self._retry_at = None, None, 0.0
            self.log.info("codex account {name}: imported the login from {auth_file}",
                          name=self.name, auth_file=str(self.auth_file))

    async def _ready(self) -> Credentials:
        try:
            if self.store is None:
                await self._import(*read_auth_file(self.auth_file))
            if self._permanent is not None:
                await self._relogin()
        except (OSError, RefreshFailed) as e:  # the store (or its lock) unusable
            reason = e.strerror if isinstance(e, OSError) else e.reason
            raise CodexAuthError(
                f"codex account {self.name}: llmproxy's token store {self.store_dir} "
                f"is unusable ({reason})")
        return self._fresh()

    async def _relogin(self) -> None:
        """
        After a permanent failure: import C{auth_file} again once it holds
        another refresh token for the same account (the user logged in
        again), else fail as before.
        """
        assert self._permanent is not None and self._creds is not None
        seen = _stat(self.auth_file)
        if seen != self._auth_seen:
            self._auth_seen = seen
            try:
                data, creds = read_auth_file(self.auth_file)
            except CodexAuthError:
                raise CodexAuthError(self._permanent, permanent=True)
            if _refresh_token(data) != self._burnt and creds.account_id == self._creds.account_id:
                await self._import(data, creds)
                return
        raise CodexAuthError(self._permanent, permanent=True)

    # -- refreshing

    def _due(self, creds: Credentials) -> bool:
        now = self.clock.seconds()
        if creds.expires_at is not None:
            return creds.expires_at - now <= REFRESH_MARGIN
        last = parse_time(self._data.get("last_refresh"))
        return last is None or now - last >= REFRESH_INTERVAL

    def _refreshing(self, stale: str) -> Deferred[None]:
        """
        Wait for the account's refresh (starting one unless one is in
        flight) of the access token C{stale}.  Cancelling the result
        stops the wait, not the refresh.
        """
        follower: Deferred[None] = Deferred()
        self._followers.append(follower)
        if self._inflight is None:
            self._inflight = Deferred.fromCoroutine(self._refresh(stale))
            self._inflight.addBoth(self._refreshed)
        return follower

    def _refreshed(self, result: None | Failure) -> None:
        self._inflight = None
        followers, self._followers = self._followers, []
        for follower in followers:
            if follower.called:
                continue  # its waiter was cancelled
            if isinstance(result, Failure):
                follower.errback(result)
            else:
                follower.callback(None)

    async def _refresh(self, stale: str) -> None:
        try:
            try:
                async with self._lock():
                    await self._trade(stale)
            except OSError as e:
                raise RefreshFailed(f"token store unusable ({e.strerror})")
        except RefreshFailed as e:
            self._failed(e)
            raise

    async def _trade(self, stale: str) -> None:
        """
        Under the lock: adopt what another process saved since C{stale}
        was read, else trade the refresh token for new tokens and save
        them.
        """
        creds = self._load_store()
        if creds.access_token != stale and not self._due(creds):
            return
        refresh_token = _refresh_token(self._data)
        if refresh_token is None:
            raise RefreshFailed("the store has no refresh token", permanent=True)
        self._save(await self.endpoint.refresh(refresh_token))

    def _save(self, answer: Mapping[str, str]) -> None:
        """
        Keep the new tokens: in the store, or when it cannot be written,
        at least in memory (the old refresh token is dead either way).
        """
        assert self.store is not None
        now = self.clock.seconds()
        tokens = dict(self._data.get("tokens") or {})
        tokens.update(answer)
        data = {**self._data, "tokens": tokens, "last_refresh": iso(now)}
        self._last = (now, "ok")
        try:
            write_private(self.store, data)
        except OSError as e:
            self._data, self._creds = data, credentials_of(data, self.store)
            self._last = (now, f"ok, but not saved: {e.strerror}")
            self.log.error("codex account {name}: refreshed tokens not saved to {store} "
                           "({error}); other processes will lose this login",
                           name=self.name, store=str(self.store), error=e.strerror)
            return
        self._load_store()
        self._fresh_until = {self._creds.access_token: now + FRESH_FOR} if self._creds else {}
        self.log.info("codex account {name}: tokens refreshed", name=self.name)

    def _failed(self, error: RefreshFailed) -> None:
        kind = "permanent" if error.permanent else "transient"
        now = self.clock.seconds()
        self._last = (now, f"{kind}: {error.reason}")
        self._retry_at = now + RETRY_AFTER
        self.log.warn("codex account {name}: token refresh failed ({kind}: {reason})",
                      name=self.name, kind=kind, reason=error.reason)
        if error.permanent:
            self._burnt, self._auth_seen = _refresh_token(self._data), None
            self._permanent = (
                f"the ChatGPT login of codex account {self.name} can no longer be refreshed "
                f"({error.reason}): run `codex login`; llmproxy imports the new login from "
                f"{self.auth_file}")

    # -- Account

    async def credentials(self) -> Credentials:
        creds = await self._ready()
        if not self._due(creds):
            return creds
        try:
            if self.clock.seconds() < self._retry_at:
                assert self._last is not None
                raise RefreshFailed(self._last[1].partition(": ")[2])
            await self._refreshing(creds.access_token)
        except RefreshFailed as e:
            if self._permanent is not None:
                raise CodexAuthError(self._permanent, permanent=True)
            if creds.expires_at is not None and creds.expires_at > self.clock.seconds():
                return creds  # still good for a while: try again later
            raise CodexAuthError(
                f"the ChatGPT access token of codex account {self.name} has expired and "
                f"could not be refreshed ({e.reason}); llmproxy tries again shortly")
        return self._fresh()

    async def unauthorized(self, used: Credentials) -> Credentials | None:
        try:
            creds = await self._ready()
            if creds.access_token == used.access_token:
                now = self.clock.seconds()
                if now < self._retry_at or now < self._fresh_until.get(used.access_token, 0):
                    return None
                await self._refreshing(used.access_token)
                creds = self._fresh()
        except (CodexAuthError, RefreshFailed):
            return None
        if creds.access_token == used.access_token or creds.account_id != used.account_id:
            return None
        return creds

    def status(self) -> dict[str, Any]:
        creds = self._creds
        last = self._last
        return {
            "name": self.name, "custody": OWNED, "auth_file": str(self.auth_file),
            "store": str(self.store) if self.store else None,
            "account_id": creds.account_id if creds else None,
            "plan": creds.plan if creds else None,
            "expires_at": _expires(creds) if creds else None,
            "last_refresh": iso(last[0]) if last else self._data.get("last_refresh"),
            "last_refresh_result": last[1] if last else None,
            "error": self._permanent,
        }


def open_account(
    name: str, auth_file: Path, custody: str, *, token_url: str, store_dir: Path,
    agent: IAgent, clock: IReactorTime, reactor: IReactorTime,
) -> Account:
    """
    The account C{name} logged in in C{auth_file}, in C{custody}
    (L{READ_ONLY} or L{OWNED}).  Nothing is read before its first use.

    @param token_url: the OAuth token endpoint (owned custody refreshes there
        through C{agent}, with network timeouts on C{reactor}).
    @param store_dir: where owned custody keeps its copies (one file per
        ChatGPT account, mode 0600, and its lock file).
    @param clock: the time tokens expire by, and lock polling.
    """
    if custody == READ_ONLY:
        return ReadOnlyAccount(name, auth_file, clock)
    if custody == OWNED:
        return OwnedAccount(name, auth_file, store_dir,
                            TokenEndpoint(token_url, agent, reactor), clock)
    raise ValueError(f"unknown token custody {custody!r}: one of {', '.join(CUSTODIES)}")


__all__ = [
    "CUSTODIES", "DEFAULT_CUSTODY", "FRESH_FOR", "LOCK_POLL", "LOCK_WAIT", "OWNED",
    "OwnedAccount", "READ_ONLY", "REFRESH_INTERVAL", "REFRESH_MARGIN", "RETRY_AFTER",
    "ReadOnlyAccount", "RefreshLock", "iso", "open_account", "parse_time", "safe_name",
]
