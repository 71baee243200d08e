# -*- test-case-name: tests.test_codex_refresh -*-
"""
L{FakeTokenEndpoint}, an in-process fake of the OAuth token endpoint that
ChatGPT logins are refreshed at (C{https://auth.openai.com/oauth/token}),
with its rotating refresh tokens, and L{listen_tokens} to serve it on a
real port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime, ITCPTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from llmproxy.backends.codex_auth import AUTH_CLAIM
from llmproxy.backends.codex_refresh import CLIENT_ID
from llmproxy.testing.codex import make_jwt
from llmproxy.testing.upstream import Reply, Stall, listen_local

#: What the real endpoint answers (401) to a refresh token already traded.
REUSED = {"error": {
    "message": "Your refresh token has already been used to generate a new access token. "
               "Please try signing in again.",
    "type": "invalid_request_error", "param": None, "code": "refresh_token_reused"}}


def token_error(code: str, message: str = "") -> dict[str, Any]:
    """
    An error answer of the token endpoint, in its (OpenAI-error) shape.
    """
    return {"error": {"message": message or code, "type": "invalid_request_error",
                      "param": None, "code": code}}


@dataclass(frozen=True)
class TokenCall:
    """
    One refresh the fake received: the refresh token sent, what became of
    it (C{rotated}, C{reused}, C{unknown}, C{scripted}, C{stalled},
    C{bad_request}), the status answered, and when it arrived.
    """

    refresh_token: str
    outcome: str
    status: int
    at: float = 0.0


class FakeTokenEndpoint(Resource):
    """
    A token endpoint holding one login whose valid refresh token is
    C{current}.  Trading it answers new tokens (a JWT access token
    expiring C{ttl} seconds from now by C{clock}, an id token naming the
    account and plan, and a new refresh token: the old one is dead);
    trading a dead one answers 401 C{refresh_token_reused}, an unknown
    one 401 C{refresh_token_invalidated}.  Answers go C{delay} seconds
    after the request (by C{clock}); the token is traded on arrival.

    @ivar calls: every refresh received, in order.
    @ivar script: answers (L{Reply}, L{Stall}) to give instead, consumed
        in order, before any trade.
    """

    isLeaf = True

    def __init__(
        self, clock: IReactorTime, *, refresh: str = "rt-1", account_id: str = "acct-1",
        plan: str = "plus", ttl: float = 3600.0, delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.current = refresh
        self.account_id = account_id
        self.plan = plan
        self.ttl = ttl
        self.delay = delay
        self.dead: set[str] = set()
        self.calls: list[TokenCall] = []
        self.script: list[Reply | Stall] = []
        self.issued = 0
        self.open: list[Request] = []

    def fail(self, status: int = 500, body: Any = None, times: int = 1) -> None:
        """
        Answer the next C{times} refreshes with C{status} (a transient
        failure by default), trading nothing.
        """
        reply = Reply(status, body if body is not None else token_error("server_error"))
        self.script.extend([reply] * times)

    def revoke(self) -> None:
        """
        Revoke the login (as signing out elsewhere does): from now on its
        refresh tokens are unknown (401 C{refresh_token_invalidated}).
        """
        self.dead.clear()
        self.current = ""

    def count(self, outcome: str) -> int:
        return sum(1 for call in self.calls if call.outcome == outcome)

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        fields = _fields(request, request.content.read())
        token = str(fields.get("refresh_token") or "")
        if fields.get("client_id") != CLIENT_ID or fields.get("grant_type") != "refresh_token":
            return self._answer(request, token, "bad_request", Reply(400, token_error(
                "invalid_request", "client_id and grant_type=refresh_token are required")))
        if self.script:
            return self._answer(request, token, "scripted", self.script.pop(0))
        if token and token == self.current:
            return self._answer(request, token, "rotated", Reply(200, self._rotate()))
        if token in self.dead:
            return self._answer(request, token, "reused", Reply(401, REUSED))
        return self._answer(request, token, "unknown", Reply(401, token_error(
            "refresh_token_invalidated", "Your refresh token has been invalidated.")))

    def _rotate(self) -> dict[str, str]:
        self.issued += 1
        self.dead.add(self.current)
        self.current = f"rt-issued-{self.issued}"
        auth = {"chatgpt_account_id": self.account_id, "chatgpt_plan_type": self.plan}
        access = make_jwt({"sub": f"access-{self.issued}", AUTH_CLAIM: auth,
                           "exp": _numeric_date(self.clock.seconds() + self.ttl)})
        return {"access_token": access, "refresh_token": self.current,
                "id_token": make_jwt({AUTH_CLAIM: auth}), "token_type": "Bearer"}

    def _answer(self, request: Request, token: str, outcome: str,
                answer: Reply | Stall) -> bytes | int:
        status = answer.status if isinstance(answer, Reply) else 0
        self.calls.append(TokenCall(token, "stalled" if status == 0 else outcome, status,
                                    self.clock.seconds()))
        self.open.append(request)
        request.notifyFinish().addBoth(self._gone, request)
        if isinstance(answer, Reply):
            if self.delay:
                self.clock.callLater(self.delay, self._send, request, answer)
            else:
                self._send(request, answer)
        return NOT_DONE_YET

    def _gone(self, _: object, request: Request) -> None:
        if request in self.open:
            self.open.remove(request)

    def _send(self, request: Request, reply: Reply) -> None:
        if request not in self.open:
            return  # the client went away
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps(reply.body).encode())
        request.finish()

    def wait_idle(self) -> None:
        """
        Cut every request still unanswered (for test cleanup).
        """
        for request in list(self.open):
            cast(ITCPTransport, request.channel.transport).abortConnection()


def _numeric_date(when: float) -> float | int:
    """
    A JWT time: whole seconds, unless C{when} has a fraction (sub-second
    lifetimes, for tests in real time).
    """
    return int(when) if when == int(when) else round(when, 3)


def _fields(request: Request, raw: bytes) -> dict[str, Any]:
    """
    A refresh's fields, sent as JSON (as Codex does) or form-encoded (as
    some clients do).
    """
    kind = request.getHeader(b"content-type") or b""
    if kind.startswith(b"application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def listen_tokens(
    reactor: IReactorTCP, clock: IReactorTime | None = None, **options: Any,
) -> tuple[FakeTokenEndpoint, IListeningPort, str]:
    """
    Start a L{FakeTokenEndpoint} (built with C{options}) on 127.0.0.1,
    port 0.  Returns it, its port and its token URL.
    """
    fake = FakeTokenEndpoint(clock or cast(IReactorTime, reactor), **options)
    port, origin = await listen_local(reactor, fake)
    return fake, port, origin + "/oauth/token"


__all__ = ["REUSED", "FakeTokenEndpoint", "TokenCall", "listen_tokens", "token_error"]
