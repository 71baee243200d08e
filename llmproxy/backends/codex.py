# -*- test-case-name: tests.test_codex_backend -*-
"""
The C{openai-codex} backend: the Responses API of ChatGPT's Codex backend,
with ChatGPT-login tokens (a Codex C{auth.json}) instead of API keys, so a
ChatGPT subscription serves any OpenAI client.

Each configured account (C{auth_file}, or several in C{accounts}) is one
L{ApiKey} of the backend whose value is the account's auth-file path: the
key pool rotates and cools accounts as it does API keys.  The backend asks
the account (L{Account}) for credentials before each request and tells it
when the upstream refused them (a 401: retried once with newer
credentials).  No credentials at all become a 401 answer, so the exchange
moves on to the next account.

What the upstream says of each account's usage windows (the
C{x-codex-primary-*} and C{x-codex-secondary-*} headers, a 429
C{usage_limit_reached}) is kept: the key pool prefers the account with the
most of its window left (L{CodexBackend.key_preference}), a 429 cools the
account until its window resets (a C{retry-after} the exchange keeps
exactly), and the status and usage endpoints show it
(L{CodexBackend.accounts_status}, L{CodexBackend.quota}).

The body rules (C{store:false}, C{stream:true}, ...) are an adapt step,
L{llmproxy.adapt.codex}; this module only speaks HTTP.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from llmproxy import __version__
from llmproxy.backends.base import IUpstreamReactor
from llmproxy.backends.body import collect_body, drop_body
from llmproxy.backends.codex_auth import Account, CodexAuthError, Credentials
from llmproxy.backends.codex_refresh import DEFAULT_TOKEN_URL
from llmproxy.backends.codex_tokens import CUSTODIES, DEFAULT_CUSTODY, open_account
from llmproxy.backends.codex_stream import FilledResponse
from llmproxy.backends.memory import MemoryResponse
from llmproxy.backends.openai import (
    BytesProducer, OpenAIResponsesBackend, host_header,
    with_timeout,
)
from llmproxy.backends.registry import BackendContext, BackendType
from llmproxy.config import ApiKey, BackendConfig, BackendKind, BackendOption
from llmproxy.config.backends import expand_user
from llmproxy.dialects import CODEX
from llmproxy.errors import ProxyError

DEFAULT_URL = "https://chatgpt.com/backend-api/codex"
DEFAULT_TOKEN_STORE = "~/.local/state/llmproxy/codex"
#: The Codex version llmproxy presents itself as (C{version}, the
#: C{User-Agent}, the models listing's C{client_version}).
DEFAULT_CLIENT_VERSION = "0.171.0"
#: The most of an upstream error body that is read.
MAX_ERROR_BODY = 1024 * 1024
#: The usage windows the upstream reports, by header prefix.
WINDOWS = ("primary", "secondary")
#: Upstream headers an error answer keeps.
_KEPT = (b"retry-after", b"retry-after-ms", b"x-request-id")


def default_auth_file(environ: Mapping[str, str]) -> str:
    """
    Where the Codex CLI keeps its login: C{$CODEX_HOME/auth.json}, else
    C{$OPENAI_CODEX_PATH/auth.json}, else C{~/.codex/auth.json}.
    """
    home = environ.get("CODEX_HOME") or environ.get("OPENAI_CODEX_PATH")
    if home:
        return str(Path(expand_user(home, environ)) / "auth.json")
    return expand_user("~/.codex/auth.json", environ)


def codex_keys(
    name: str, options: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[ApiKey, ...]:
    """
    The backend's accounts as keys C{NAME#1..N}, each valued with its
    auth-file path behind L{ACCOUNT_PREFIX}: C{auth_file} then C{accounts},
    each once; with neither, the Codex CLI's own (L{default_auth_file}).
    (Key values are redacted from everything a client sees; the prefix
    keeps the path itself, which tells a user which login to fix, showable.)
    """
    auth_file = options.get("auth_file")
    paths = [expand_user(auth_file, environ)] if auth_file else []
    paths += options.get("accounts") or ()
    if not paths:
        paths = [default_auth_file(environ)]
    unique = list(dict.fromkeys(paths))
    return tuple(ApiKey(f"{name}#{i}", ACCOUNT_PREFIX + path)
                 for i, path in enumerate(unique, start=1))


#: What the value of an account's key holds before its auth-file path.
ACCOUNT_PREFIX = "codex-account:"


def account_path(key: ApiKey) -> Path:
    """
    The auth file of the account C{key} stands for.
    """
    return Path(key.value.removeprefix(ACCOUNT_PREFIX))


@dataclass
class Window:
    """
    One usage window of an account, as the upstream last reported it.

    @ivar resets_at: POSIX seconds, when known.
    """

    used_percent: float
    window_minutes: int | None = None
    resets_at: float | None = None

    def used(self, now: float) -> float:
        """
        How much is used now: nothing once the window has reset.
        """
        if self.resets_at is not None and self.resets_at <= now:
            return 0.0
        return self.used_percent

    def shown(self) -> dict[str, Any]:
        return {"used_percent": self.used_percent, "window_minutes": self.window_minutes,
                "resets_at": self.resets_at}

    def news(self, before: Window | None) -> bool:
        """
        Whether this report says more than C{before}: another share used or
        another reset (one given as seconds from now drifts a little).
        """
        if before is None or before.used_percent != self.used_percent:
            return True
        if (before.resets_at is None) != (self.resets_at is None):
            return True
        return self.resets_at is not None and before.resets_at is not None and \
            abs(self.resets_at - before.resets_at) > 5


@dataclass
class AccountState:
    """
    What the backend learnt of one account (never a token).

    @ivar limited_until: when its usage limit resets, after a 429
        C{usage_limit_reached}.
    """

    plan: str | None = None
    expires_at: float | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    limited_until: float | None = None

    def remaining(self, now: float) -> float:
        """
        The percentage left of its most used window (100 when unknown).
        """
        if self.limited_until is not None and self.limited_until > now:
            return 0.0
        used = [w.used(now) for w in self.windows.values()]
        return max(0.0, 100.0 - max(used, default=0.0))


def _number(headers: Headers, name: str) -> float | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    try:
        number = float(values[-1])
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def windows_of(headers: Headers, now: float) -> dict[str, Window]:
    """
    The usage windows an upstream answer reports (C{x-codex-primary-*},
    C{x-codex-secondary-*}: used percent, window minutes, and the reset as
    C{reset-at} or, from older backends, C{reset-after-seconds}).
    """
    found = {}
    for which in WINDOWS:
        prefix = f"x-codex-{which}-"
        used = _number(headers, prefix + "used-percent")
        if used is None:
            continue
        minutes = _number(headers, prefix + "window-minutes")
        reset_at = _number(headers, prefix + "reset-at")
        after = _number(headers, prefix + "reset-after-seconds")
        if reset_at is None and after is not None:
            reset_at = now + after
        found[which] = Window(used, int(minutes) if minutes is not None else None, reset_at)
    return found


def usage_limit_reset(body: bytes, now: float) -> float | None:
    """
    When the account's usage limit resets, from a 429 C{usage_limit_reached}
    body (C{resets_at}, else C{resets_in_seconds}); L{None} for any other.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or "usage_limit_reached" not in (
            error.get("type"), error.get("code")):
        return None
    at, within = error.get("resets_at"), error.get("resets_in_seconds")
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        return float(at)
    if isinstance(within, (int, float)) and not isinstance(within, bool):
        return now + float(within)
    return None


def rewrap_detail(status: int, body: bytes) -> bytes:
    """
    An upstream C{{"detail": ...}} error body as an OpenAI error; any
    other body as it is.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or "error" in data or "detail" not in data:
        return body
    detail = data["detail"]
    message = detail if isinstance(detail, str) else json.dumps(detail)
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return ProxyError(message or f"upstream status {status}", type=kind).to_json()


def _session_id(body: bytes) -> str | None:
    """
    The conversation id of a request: its C{prompt_cache_key} (the adapt
    step puts one in every body).
    """
    try:
        data = json.loads(body)
    except ValueError:
        return None
    key = data.get("prompt_cache_key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key else None


class CodexBackend(OpenAIResponsesBackend):
    """
    ChatGPT's Codex backend, one account per key.

    @cvar streams_only: the upstream answers streams only: the exchange
        sends it streams, and aggregates them for non-streaming clients.
    """

    streams_only = True

    def __init__(
        self, config: BackendConfig, pool: HTTPConnectionPool, reactor: IUpstreamReactor,
        clock: IReactorTime,
    ) -> None:
        super().__init__(config, pool, reactor, clock)
        # Delivers the answers made here (I/O, like the network's).
        self.reactor = reactor
        options = config.options
        self.version = options.get("client_version") or DEFAULT_CLIENT_VERSION
        self.user_agent = (
            f"codex_cli_rs/{self.version} ({platform.system()} {platform.release()}; "
            f"{platform.machine()}) llmproxy/{__version__}").encode()
        store = Path(options.get("token_store") or DEFAULT_TOKEN_STORE).expanduser()
        self.accounts: dict[str, Account] = {
            key.name: open_account(
                key.name, account_path(key), options.get("tokens") or DEFAULT_CUSTODY,
                token_url=options.get("token_url") or DEFAULT_TOKEN_URL, store_dir=store,
                agent=self.agent, clock=clock, reactor=reactor)
            for key in config.keys
        }
        self.states: dict[str, AccountState] = {name: AccountState() for name in self.accounts}
        #: Told when an answer brings news of an account's usage windows
        #: (key name, its windows): how other processes hear of them.
        self.on_windows: Callable[[str, dict[str, Window]], None] | None = None

    # requests

    def _codex_headers(self, credentials: Credentials, session: str | None,
                       accept: bytes) -> Headers:
        headers = Headers({
            b"host": [host_header(self.config.base_url)],
            b"content-type": [b"application/json"],
            b"accept": [accept],
            b"accept-encoding": [b"identity"],
            b"authorization": [b"Bearer " + credentials.access_token.encode()],
            b"originator": [b"codex_cli_rs"],
            b"user-agent": [self.user_agent],
            b"version": [self.version.encode()],
            b"openai-beta": [b"responses=experimental"],
            b"x-llmproxy-loop-guard": [b"1"],
        })
        if credentials.account_id:
            headers.setRawHeaders(b"chatgpt-account-id", [credentials.account_id.encode()])
        if session:
            headers.setRawHeaders(b"session_id", [session.encode()])
        return headers

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        d = Deferred.fromCoroutine(self._send(body, key))
        return with_timeout(d, self.clock, self.config.timeout if timeout is None else timeout)

    async def _send(self, body: bytes, key: ApiKey | None) -> IResponse:
        """
        POST C{body} with the account's credentials; on a 401, once more
        with the newer credentials the account may have, else the 401 goes
        back.
        """
        if key is None or key.name not in self.accounts:
            return self._auth_failure(CodexAuthError("no ChatGPT account is configured"))
        account, session = self.accounts[key.name], _session_id(body)
        try:
            credentials = await account.credentials()
        except CodexAuthError as e:
            return self._auth_failure(e, key)
        response = await self._post(body, credentials, session)
        if response.code == 401:
            try:
                newer = await account.unauthorized(credentials)
            except CodexAuthError as e:
                drop_body(response, self.clock)
                return self._auth_failure(e, key)
            if newer is not None:
                drop_body(response, self.clock)
                credentials = newer
                response = await self._post(body, credentials, session)
        self._observe(key.name, credentials, response)
        if response.code // 100 == 2:
            return FilledResponse(response)
        return await self._error(key.name, response)

    def _post(self, body: bytes, credentials: Credentials,
              session: str | None) -> Deferred[IResponse]:
        headers = self._codex_headers(credentials, session, b"text/event-stream")
        return self.agent.request(b"POST", self._url, headers, BytesProducer(body))

    def _auth_failure(self, error: CodexAuthError, key: ApiKey | None = None) -> IResponse:
        """
        No usable credentials: a 401 answer, so the exchange tries the
        next account (its message names no token).
        """
        message = error.message
        code = "codex_login_required" if error.permanent else "codex_login_unavailable"
        body = ProxyError(message, type="invalid_request_error", code=code).to_json()
        # Retry-After 0: the account is tried again on the next request (the
        # user may fix the login at any moment), not rested for an hour.
        return MemoryResponse(401, {b"content-type": b"application/json", b"retry-after": b"0"},
                              [body], self.reactor)

    async def _error(self, name: str, response: IResponse) -> IResponse:
        """
        An error answer, read whole: C{{"detail": ...}} rewrapped, and a
        C{usage_limit_reached} noted and given the C{retry-after} of its
        reset.
        """
        body = await collect_body(response, self.clock, self.config.idle_timeout, MAX_ERROR_BODY)
        headers = {b"content-type": b"application/json"}
        for header in _KEPT:
            values = response.headers.getRawHeaders(header)
            if values:
                headers[header] = values[-1]
        now = self.clock.seconds()
        reset = usage_limit_reset(body, now) if response.code == 429 else None
        if reset is not None:
            self.states[name].limited_until = reset
            headers[b"retry-after"] = str(max(0, math.ceil(reset - now))).encode()
            headers.pop(b"retry-after-ms", None)
        return MemoryResponse(response.code, headers, [rewrap_detail(response.code, body)],
                              self.reactor)

    def _observe(self, name: str, credentials: Credentials, response: IResponse) -> None:
        """
        Keep what an answer says of the account: plan, token expiry, usage
        windows, and that a limit it had is over when it served.
        """
        state = self.states[name]
        state.plan = credentials.plan or state.plan
        state.expires_at = credentials.expires_at
        windows = windows_of(response.headers, self.clock.seconds())
        news = any(w.news(state.windows.get(which)) for which, w in windows.items())
        state.windows.update(windows)
        if response.code // 100 == 2:
            state.limited_until = None
        if news and self.on_windows is not None:
            self.on_windows(name, dict(state.windows))

    def apply_windows(self, name: str, windows: Mapping[str, Window]) -> None:
        """
        Usage windows another process learnt of the account C{name} (one
        this backend lacks is ignored).
        """
        state = self.states.get(name)
        if state is not None:
            state.windows.update(windows)

    # accounts, for the key pool, the status and the usage endpoints

    def key_preference(self, key: ApiKey) -> float:
        """
        How much of its usage windows the account of C{key} has left: the
        key pool tries the freest account first.
        """
        state = self.states.get(key.name)
        return state.remaining(self.clock.seconds()) if state is not None else 0.0

    def accounts_status(self) -> list[dict[str, Any]]:
        """
        Each account for the status endpoint: plan, token expiry, what its
        custody says (last refresh), usage windows; never a token.
        """
        shown = []
        for name, account in self.accounts.items():
            state = self.states[name]
            custody = account.status()
            shown.append({
                **custody, "name": name, "plan": custody.get("plan") or state.plan,
                "limited_until": state.limited_until,
                "windows": {which: w.shown() for which, w in state.windows.items()},
            })
        return shown

    async def quota(self) -> list[dict[str, Any]]:
        """
        Each account's plan, usage windows and limit, by key name, for the
        pooled usage endpoint.  An account not used yet is asked for its
        credentials once, for its plan.
        """
        found = []
        for name, account in self.accounts.items():
            state = self.states[name]
            if state.plan is None:
                try:
                    credentials = await account.credentials()
                except CodexAuthError:
                    pass
                else:
                    state.plan, state.expires_at = credentials.plan, credentials.expires_at
            found.append({
                "key": name, "plan": state.plan, "limited_until": state.limited_until,
                **{which: (w.shown() if (w := state.windows.get(which)) else None)
                   for which in WINDOWS},
            })
        return found

    # models

    async def _fetch_models(self) -> list[str]:
        """
        The models the first account may use (C{/models?client_version=}),
        within one deadline for headers and body together.
        """
        if not self.config.keys:
            return list(self.config.models)
        key = self.config.keys[0]
        credentials = await self.accounts[key.name].credentials()
        url = f"{self.config.base_url}/models?client_version={quote(self.version)}".encode()
        data = await self._get_json(
            url, self._codex_headers(credentials, None, b"application/json"))
        listed = data.get("models", []) if isinstance(data, dict) else []
        slugs = [m["slug"] for m in listed
                 if isinstance(m, dict) and isinstance(m.get("slug"), str)]
        return slugs or list(self.config.models)


def build(config: BackendConfig, context: BackendContext) -> CodexBackend:
    return CodexBackend(config, context.pool, context.reactor, context.clock)


#: C{type: openai-codex}: a ChatGPT subscription through its Codex backend.
OPENAI_CODEX = BackendType(
    BackendKind(CODEX, default_url=DEFAULT_URL, keys=codex_keys, loopback_only=True, options=(
        BackendOption("auth_file"),
        BackendOption("accounts", tuple),
        BackendOption("tokens", str, DEFAULT_CUSTODY, choices=CUSTODIES),
        BackendOption("token_url", str, DEFAULT_TOKEN_URL),
        BackendOption("token_store", str, DEFAULT_TOKEN_STORE),
        BackendOption("client_version", str, DEFAULT_CLIENT_VERSION),
    )),
    build,
)
