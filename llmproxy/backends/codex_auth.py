# -*- test-case-name: tests.test_codex_auth,tests.test_codex_custody -*-
"""
ChatGPT-login credentials for the C{openai-codex} backend: what a Codex
C{auth.json} holds, and the one interface the backend asks an account for
a token through.

An L{Account} is one ChatGPT login.  How it keeps its token fresh is its
custody (see L{open_account}); the backend only asks for
L{Account.credentials} before each request and tells the account when the
upstream refused them (L{Account.unauthorized}).  Tokens never leave this
module's objects except as the C{Authorization} header: their C{repr} and
every message hide them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

#: The id_token claim that carries the ChatGPT account and plan.
AUTH_CLAIM = "https://api.openai.com/auth"


@dataclass(frozen=True)
class Credentials:
    """
    What one request to the ChatGPT backend needs.

    @ivar expires_at: the access token's C{exp} (POSIX seconds), if it says.
    """

    access_token: str = field(repr=False)
    account_id: str | None
    plan: str | None = None
    expires_at: float | None = None


class CodexAuthError(Exception):
    """
    No usable credentials.  C{message} is safe to show a client (it names
    files and what to run, never a token); C{permanent} says whether only
    a new login can fix it.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class Account(Protocol):
    """
    One ChatGPT login, as the backend uses it.

    @ivar name: how the account is shown (status, logs, key names); never
        a token.
    """

    name: str

    async def credentials(self) -> Credentials:
        """
        Credentials good for a request now.

        @raise CodexAuthError: when there are none.
        """

    async def unauthorized(self, used: Credentials) -> Credentials | None:
        """
        The upstream answered 401 to C{used}: newer credentials to retry
        once with, or L{None} when there are none (the 401 goes to the
        client).

        @raise CodexAuthError: when there are none and the user can do
            something about it (its message says what).
        """

    def status(self) -> dict[str, Any]:
        """
        What the status endpoint shows of this account: plan, token
        expiry, last refresh result; never a token.
        """


def jwt_claims(token: str) -> Mapping[str, Any]:
    """
    The claims of a JWT, unverified (the upstream verifies them; llmproxy
    only reads expiry, account and plan).  Empty when C{token} is no JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def credentials_of(data: Mapping[str, Any], source: Path) -> Credentials:
    """
    The credentials in a parsed C{auth.json}.

    @raise CodexAuthError: when it holds no ChatGPT login.
    """
    tokens = data.get("tokens")
    mode = data.get("auth_mode")
    if mode == "apikey" or (mode is None and data.get("OPENAI_API_KEY")):
        raise CodexAuthError(
            f"{source} holds an API key login, not a ChatGPT login: run `codex login` "
            "and sign in with ChatGPT", permanent=True)
    if not isinstance(tokens, dict) or not isinstance(tokens.get("access_token"), str):
        raise CodexAuthError(f"{source} has no ChatGPT tokens: run `codex login`",
                             permanent=True)
    access = tokens["access_token"]
    claims = jwt_claims(tokens.get("id_token") or "").get(AUTH_CLAIM) or {}
    account = tokens.get("account_id") or claims.get("chatgpt_account_id")
    exp = jwt_claims(access).get("exp")
    return Credentials(
        access, account if isinstance(account, str) else None,
        claims.get("chatgpt_plan_type") if isinstance(claims, dict) else None,
        float(exp) if isinstance(exp, (int, float)) else None,
    )


def read_auth_file(path: Path) -> tuple[Mapping[str, Any], Credentials]:
    """
    Read and parse C{path}: its whole content and its credentials.

    @raise CodexAuthError: when it cannot be read or holds no login.
    """
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CodexAuthError(
            f"{path} does not exist: run `codex login` (or set auth_file)", permanent=True)
    except (OSError, ValueError) as e:
        raise CodexAuthError(f"{path} cannot be read: {type(e).__name__}")
    if not isinstance(data, dict):
        raise CodexAuthError(f"{path} is not a Codex auth file", permanent=True)
    return data, credentials_of(data, path)


def write_private(path: Path, data: Mapping[str, Any]) -> None:
    """
    Write C{data} as JSON to C{path} atomically, mode 0600: a temporary
    file in the same directory, flushed to disk, then renamed over
    C{path}, so a reader (another process) sees the old content or the
    new, never a part, and a crash loses neither (a rotated refresh token
    lost is a login lost).
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(data, indent=2).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


class FileAccount:
    """
    The simplest custody: the file's token, re-read on every request and
    never refreshed.  (A stand-in until the custody modes land.)
    """

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    async def credentials(self) -> Credentials:
        return read_auth_file(self.path)[1]

    async def unauthorized(self, used: Credentials) -> Credentials | None:
        fresh = read_auth_file(self.path)[1]
        return fresh if fresh.access_token != used.access_token else None

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "auth_file": str(self.path)}


__all__ = [
    "AUTH_CLAIM", "Account", "CodexAuthError", "Credentials", "FileAccount",
    "credentials_of", "jwt_claims", "read_auth_file", "write_private",
]
