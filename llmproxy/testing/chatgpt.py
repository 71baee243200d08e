# -*- test-case-name: tests.test_codex_backend -*-
"""
L{FakeChatGPT}: an in-process fake of ChatGPT's Codex backend
(C{/backend-api/codex/responses} and C{/backend-api/codex/models}), as
strict as the real one about what it refuses, and L{listen_chatgpt}.

Access tokens are the fixtures' JWTs (L{llmproxy.testing.codex}): the
fake knows an account by its token's C{sub} (L{FakeChatGPT.accept}).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, cast

from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from llmproxy.backends.codex_auth import jwt_claims
from llmproxy.sse import encode_event
from llmproxy.testing.builders import CREATED
from llmproxy.testing.upstream import Recorded, last_text, listen_local

#: Where the fake serves, under its root.
BASE_PATH = "/backend-api/codex"
#: Fields the real backend refuses, and how it says so.
_UNSUPPORTED = ("max_output_tokens", "temperature")
#: The windows the quota headers report: (name, minutes).
_WINDOWS = (("primary", 300), ("secondary", 10080))


class FakeChatGPT(Resource):
    """
    The Codex backend of ChatGPT, faked.

    @ivar accounts: the access tokens it accepts, by their C{sub}, each
        with the account id it must come with (C{ChatGPT-Account-ID}).
    @ivar calls: function calls to answer with, in order (name and
        arguments), one per request, before answering text again.
    @ivar exhausted: accounts (by token C{sub}) whose usage limit is
        reached, and in how many seconds it resets: they get a 429
        C{usage_limit_reached}.
    @ivar used: the C{used_percent} of each account's (by token C{sub})
        windows, in the quota headers of every answer (0 when absent).
    @ivar errors: answers to give instead, in order (status and JSON
        body), one per request to C{/responses}.
    @ivar on_request: called with each request as it arrives.
    @ivar requests: every request received, in order (C{path} with its
        query).
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self.clock = clock
        self.accounts: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.exhausted: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.errors: list[tuple[int, Any]] = []
        self.on_request: Callable[[Recorded], None] | None = None
        self.requests: list[Recorded] = []
        self.models = ["gpt-5.1-codex", "gpt-5.1"]
        self.require_instructions = True

    def accept(self, subject: str, account_id: str = "acct-1") -> None:
        """
        Accept the access tokens whose C{sub} is C{subject}, for account
        C{account_id}.
        """
        self.accounts[subject] = account_id

    # the two routes

    def render_GET(self, request: Request) -> bytes:
        recorded = self._record(request, None)
        if request.path != f"{BASE_PATH}/models".encode() or not request.args.get(
                b"client_version"):
            return _json(request, 404, {"detail": "Not Found"})
        refused = self._refuse_login(request, recorded)
        if refused is not None:
            return refused
        return _json(request, 200, {"models": [
            {"slug": slug, "display_name": slug, "visibility": "list", "supported_in_api": True,
             "priority": i} for i, slug in enumerate(self.models)]})

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None  # gotLength() made it
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        recorded = self._record(request, body, raw)
        if self.on_request is not None:
            self.on_request(recorded)
        if request.path != f"{BASE_PATH}/responses".encode():
            return _json(request, 404, {"detail": "Not Found"})
        if self.errors:
            return _json(request, *self.errors.pop(0))
        refused = self._refuse_login(request, recorded) or self._refuse_body(request, body)
        if refused is not None:
            return refused
        subject = self._subject(recorded)
        self._quota_headers(request, subject)
        if subject in self.exhausted:
            return self._usage_limit(request, self.exhausted[subject])
        request.setHeader(b"content-type", b"text/event-stream")
        call = self.calls.pop(0) if self.calls else None
        return b"".join(stream_events(str(body.get("model")), last_text(body), call))

    # checks

    def _record(self, request: Request, body: Any, raw: bytes = b"") -> Recorded:
        recorded = Recorded(
            request.method.decode(), request.uri.decode(),
            {k.decode().lower(): v[-1].decode()
             for k, v in request.requestHeaders.getAllRawHeaders()},
            body, raw)
        self.requests.append(recorded)
        return recorded

    @staticmethod
    def _subject(recorded: Recorded) -> str:
        token = recorded.headers.get("authorization", "").partition(" ")[2]
        return str(jwt_claims(token).get("sub", ""))

    def _refuse_login(self, request: Request, recorded: Recorded) -> bytes | None:
        subject = self._subject(recorded)
        if subject not in self.accounts:
            return _json(request, 401, {"detail": "Could not validate your credentials"})
        if recorded.headers.get("chatgpt-account-id") != self.accounts[subject]:
            return _json(request, 403, {"detail": "Account mismatch"})
        return None

    def _refuse_body(self, request: Request, body: Any) -> bytes | None:
        if not isinstance(body, dict):
            return _json(request, 400, {"detail": "Invalid JSON"})
        if body.get("store") is not False:
            return _json(request, 400, {"detail": "Store must be set to false"})
        if body.get("stream") is not True:
            return _json(request, 400, {"detail": "Stream must be set to true"})
        if self.require_instructions and not body.get("instructions"):
            return _json(request, 400, {"detail": "Instructions are required"})
        for name in _UNSUPPORTED:
            if name in body:
                return _json(request, 400, {"detail": f"Unsupported parameter: {name}"})
        return None

    # answers

    def _quota_headers(self, request: Request, subject: str) -> None:
        now = int(self.clock.seconds())
        for which, minutes in _WINDOWS:
            prefix = f"x-codex-{which}-"
            request.setHeader(prefix + "used-percent", str(self.used.get(subject, 0.0)))
            request.setHeader(prefix + "window-minutes", str(minutes))
            request.setHeader(prefix + "reset-at", str(now + minutes * 60))

    def _usage_limit(self, request: Request, seconds: float) -> bytes:
        return _json(request, 429, {"error": {
            "type": "usage_limit_reached", "message": "The usage limit has been reached",
            "plan_type": "plus", "resets_in_seconds": seconds}})


def _json(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


def stream_events(model: str, text: str, call: tuple[str, str] | None) -> list[bytes]:
    """
    A Responses stream answering C{text} (echoed), or calling C{call};
    as the real backend does, its C{response.completed} has no output: the
    items come in their C{output_item.done} events.
    """
    base = {"id": "resp_chatgpt", "object": "response", "created_at": CREATED, "model": model,
            "error": None, "incomplete_details": None, "tools": [], "parallel_tool_calls": True}
    middle = _call_events(*call) if call is not None else _text_events("chatgpt: " + text)
    usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 8}
    started = {**base, "status": "in_progress", "output": [], "usage": None}
    events: list[Mapping[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        *middle,
        {"type": "response.completed",
         "response": {**base, "status": "completed", "output": [], "usage": usage}},
    ]
    return [encode_event({**e, "sequence_number": i}, str(e["type"]))
            for i, e in enumerate(events)]


def _text_events(text: str) -> list[Mapping[str, Any]]:
    item = {"type": "message", "id": "msg_chatgpt", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    where = {"item_id": "msg_chatgpt", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": w}
          for w in _pieces(text)),
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
    ]


def _call_events(name: str, arguments: str) -> list[Mapping[str, Any]]:
    item = {"type": "function_call", "id": "fc_chatgpt", "call_id": "call_chatgpt",
            "name": name, "arguments": arguments, "status": "completed"}
    where = {"item_id": "fc_chatgpt", "output_index": 0}
    return [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "arguments": "", "status": "in_progress"}},
        *({"type": "response.function_call_arguments.delta", **where, "delta": p}
          for p in _pieces(arguments)),
        {"type": "response.function_call_arguments.done", **where, "name": name,
         "arguments": arguments},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
    ]


def _pieces(text: str) -> list[str]:
    """
    C{text} in a few deltas.
    """
    size = max(1, len(text) // 3)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


async def listen_chatgpt(
    reactor: IReactorTCP, clock: IReactorTime | None = None
) -> tuple[FakeChatGPT, IListeningPort, str]:
    """
    Start a L{FakeChatGPT} on 127.0.0.1, port 0.  Returns it, its port and
    the C{base_url} of an C{openai-codex} backend using it.
    """
    fake = FakeChatGPT(clock or cast(IReactorTime, reactor))  # the reactor is a clock too
    port, origin = await listen_local(reactor, fake)
    return fake, port, origin + BASE_PATH


__all__ = ["BASE_PATH", "FakeChatGPT", "listen_chatgpt", "stream_events"]
