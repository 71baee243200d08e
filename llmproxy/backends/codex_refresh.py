# -*- test-case-name: tests.test_codex_refresh,tests.test_codex_custody -*-
"""
The OAuth token endpoint a ChatGPT login is refreshed at, as the Codex
CLI uses it (C{codex-rs/login/src/auth/manager.rs}): one JSON POST trading
a refresh token for new tokens, the refresh token rotating each time.

Its failures are classified as Codex does: a 401, or the codes
C{refresh_token_expired} / C{_reused} / C{_invalidated} (found as
C{error.code}, C{error} or C{code}), and a 400 C{invalid_grant} mean the
login is lost for good; anything else may pass.  A failure's reason names
the status and code only, never the body (which may echo the token).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from llmproxy.backends.body import collect_body
from llmproxy.backends.openai import BytesProducer
from llmproxy.errors import ProxyError

#: The Codex CLI's OAuth client.
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
DEFAULT_TOKEN_URL = "https://auth.openai.com/oauth/token"
#: The most a refresh may take, answer read included.
REFRESH_TIMEOUT = 30.0
#: The codes by which the token endpoint says a refresh token is dead.
PERMANENT_CODES = frozenset({
    "refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated",
})
#: The answer's fields that are saved (all strings).
TOKEN_FIELDS = ("id_token", "access_token", "refresh_token")
_CODE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")


class RefreshFailed(Exception):
    """
    A refresh that got no new tokens.

    @ivar reason: what went wrong, safe to log and show (status and error
        code, never a token or the answer's body).
    @ivar permanent: only a new login helps.
    """

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def error_code(body: bytes) -> str | None:
    """
    The error code of a token endpoint's error answer, where Codex looks
    for it: C{error.code}, C{error} (a string), or C{code}.  Only a short
    identifier is returned, so nothing else of the body can leak through.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    code: Any = None
    if isinstance(error, dict):
        code = error.get("code")
    elif isinstance(error, str):
        code = error
    if not isinstance(code, str):
        code = data.get("code")
    return code if isinstance(code, str) and _CODE.match(code) else None


def classify(status: int, body: bytes) -> RefreshFailed:
    """
    The failure a non-2xx answer of the token endpoint means.
    """
    code = error_code(body)
    lowered = code.lower() if code else None
    permanent = (status == 401 or lowered in PERMANENT_CODES
                 or (status == 400 and lowered == "invalid_grant"))
    return RefreshFailed(f"token endpoint answered {status}" + (f" {code}" if code else ""),
                         permanent)


def tokens_of(body: bytes) -> dict[str, str]:
    """
    The tokens of a 2xx answer: every one of L{TOKEN_FIELDS} present.

    @raise RefreshFailed: (transient) when it is no JSON object or holds
        none of them.
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise RefreshFailed("token endpoint answered 200 without JSON")
    found = {k: data[k] for k in TOKEN_FIELDS
             if isinstance(data, dict) and isinstance(data.get(k), str) and data[k]}
    if not found:
        raise RefreshFailed("token endpoint answered 200 without tokens")
    return found


class TokenEndpoint:
    """
    The token endpoint at C{url}, reached through C{agent}, each refresh
    bounded by C{timeout} seconds on C{reactor}.
    """

    def __init__(self, url: str, agent: IAgent, reactor: IReactorTime,
                 timeout: float = REFRESH_TIMEOUT) -> None:
        self.url = url.encode("ascii")
        self.agent = agent
        self.reactor = reactor
        self.timeout = timeout

    async def refresh(self, refresh_token: str) -> Mapping[str, str]:
        """
        Trade C{refresh_token} for new tokens.

        @raise RefreshFailed: when it got none.
        """
        body = json.dumps({"client_id": CLIENT_ID, "grant_type": "refresh_token",
                           "refresh_token": refresh_token}).encode()
        headers = Headers({b"content-type": [b"application/json"],
                           b"accept": [b"application/json"]})
        deadline = self.reactor.seconds() + self.timeout
        d = self.agent.request(b"POST", self.url, headers, BytesProducer(body))
        timer = self.reactor.callLater(self.timeout, d.cancel)
        try:
            response = await d
        except CancelledError:
            if timer.active():
                raise  # not ours: whoever cancelled is told
            raise RefreshFailed(f"token endpoint did not answer within {self.timeout:g} s")
        except Exception as e:
            if not timer.active():
                raise RefreshFailed(f"token endpoint did not answer within {self.timeout:g} s")
            raise RefreshFailed(f"token endpoint unreachable ({type(e).__name__})")
        finally:
            if timer.active():
                timer.cancel()
        try:
            answer = await collect_body(response, self.reactor, limit=1024 * 1024,
                                        deadline=deadline)
        except CancelledError:
            raise
        except ProxyError as e:
            raise RefreshFailed(f"token endpoint answer unreadable ({e.code})")
        except Exception as e:
            raise RefreshFailed(f"token endpoint answer unreadable ({type(e).__name__})")
        if not 200 <= response.code < 300:
            raise classify(response.code, answer)
        return tokens_of(answer)


__all__ = [
    "CLIENT_ID", "DEFAULT_TOKEN_URL", "PERMANENT_CODES", "REFRESH_TIMEOUT", "RefreshFailed",
    "TOKEN_FIELDS", "TokenEndpoint", "classify", "error_code", "tokens_of",
]
