# -*- test-case-name: tests.test_continuation -*-
"""
L{Speak}: a fake-upstream behaviour for mid-stream continuation tests.  A
model that streams one deterministic answer (so a restarted answer splices
on), word by word, and can be told to cut or stall after N words, to
refuse an assistant-last (prefill) request with 400 C{invalid_prefill}, or
to continue one correctly.  L{SpeakingOpenAI} is a L{FakeOpenAI} that plays
it (queue it in C{by_model}, C{by_key} or C{script} like any behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.web.server import Request

from llmproxy.testing.builders import chat_chunks, responses_events
from llmproxy.testing.upstream import FakeOpenAI, Recorded, Reply, Stream, listen_local

INVALID_PREFILL = {"error": {"message": "the last message must be from the user",
                             "type": "invalid_request_error", "param": "messages",
                             "code": "invalid_prefill"}}


@dataclass
class Speak:
    """
    Stream C{text} word by word (each word with its trailing space but the
    last), C{delay} seconds apart.

    @ivar cut_after: drop the connection after this many words.
    @ivar stall_after: send nothing more after this many words.
    @ivar prefill: for a request whose last message is the assistant's:
        C{"continue"} (answer only what follows that text in C{text}),
        C{"reject"} (400 C{invalid_prefill}) or C{"ignore"} (answer all of
        C{text}).
    """

    text: str
    cut_after: int | None = None
    stall_after: int | None = None
    prefill: str = "continue"
    delay: float = 0.0


def words(text: str) -> list[str]:
    """
    C{text} in the pieces L{Speak} streams.
    """
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]] if text else []


def prefilled(body: Any) -> str | None:
    """
    The assistant text a request ends with (chat or Responses), if it does.
    """
    if not isinstance(body, dict):
        return None
    items = body.get("messages") or body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _stream(speak: Speak, recorded: Recorded, text: str) -> Stream:
    body = recorded.body if isinstance(recorded.body, dict) else {}
    model = str(body.get("model", "gpt-4o"))
    pieces = words(text)
    if recorded.path.endswith("/responses"):
        chunks, head = responses_events(model, pieces, ident=f"resp_{model}"), 4
    else:
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks, head = chat_chunks(model, pieces, f"chatcmpl-{model}", usage), 1
    for limit, end in ((speak.cut_after, "drop"), (speak.stall_after, "stall")):
        if limit is not None:
            return Stream(chunks[:head + limit], speak.delay, end)
    return Stream(chunks, speak.delay)


def play(speak: Speak, recorded: Recorded) -> Reply | Stream:
    """
    What L{Speak} answers to C{recorded}.
    """
    given = prefilled(recorded.body)
    if given is None or speak.prefill == "ignore":
        return _stream(speak, recorded, speak.text)
    if speak.prefill == "reject":
        return Reply(400, INVALID_PREFILL)
    rest = speak.text[len(given):] if speak.text.startswith(given) else speak.text
    return _stream(speak, recorded, rest)


class SpeakingOpenAI(FakeOpenAI):
    """
    A L{FakeOpenAI} that also plays L{Speak}.
    """

    def _perform(self, request: Request, behaviour: Any, recorded: Recorded) -> bytes | int:
        if isinstance(behaviour, Speak):
            behaviour = play(behaviour, recorded)
        return super()._perform(request, behaviour, recorded)


async def listen_speaking(
    reactor: IReactorTCP, clock: IReactorTime | None = None
) -> tuple[SpeakingOpenAI, IListeningPort, str]:
    """
    Start a L{SpeakingOpenAI} on 127.0.0.1, port 0 (see L{listen_fake}).
    """
    fake = SpeakingOpenAI(clock or cast(IReactorTime, reactor))
    port, origin = await listen_local(reactor, fake)
    return fake, port, origin + "/v1"


__all__ = ["INVALID_PREFILL", "Speak", "SpeakingOpenAI", "listen_speaking", "play", "prefilled",
           "words"]
