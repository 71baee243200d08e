# -*- test-case-name: tests.test_events -*-
"""
Which stream transform relays an attempt's answer: byte for byte when the
client and the backend speak the same dialect, translating otherwise; and
L{UsageTap}, which notes the upstream's usage on the way when someone
observes the exchange's events.
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTime

from llmproxy.adapt.usage import asks_usage, needs_usage
from llmproxy.dialects import CHAT
from llmproxy.exchange.events import USAGE_KEY, AttemptNote, find_usage
from llmproxy.translate import transforms
from llmproxy.translate.transforms import Transform, Wrapped


def token() -> str:
    """
    A fresh random identifier suffix.
    """
    return secrets.token_hex(12)


def response_id() -> str:
    """
    A fresh Responses API response id.
    """
    return "resp_" + token()


def choose_transform(
    frontend: str, backend_dialect: str, model: str, body: Mapping[str, Any],
    clock: IReactorTime,
) -> Transform:
    """
    The transform for a C{backend_dialect} stream answering a C{frontend}
    client's C{body} with C{model}.
    """
    if frontend == backend_dialect:
        # A chat stream llmproxy asked usage for (see prepare_chat) sheds it.
        return transforms.passthrough(frontend, strip_usage=frontend == CHAT
                                      and needs_usage(body))
    now = int(clock.seconds())
    if frontend == CHAT:
        return transforms.ResponsesToChat(model, asks_usage(body), "chatcmpl-" + token(), now)
    return transforms.ChatToResponses(response_id(), now, body)


class UsageTap(Wrapped):
    """
    A transform that relays through another, keeps the last usage object
    the upstream's events carried and counts the events.
    """

    __slots__ = ("usage", "count")

    def __init__(self, inner: Transform) -> None:
        super().__init__(inner)
        self.usage: dict[str, Any] | None = None
        self.count = 0

    def known(self) -> dict[str, Any] | None:
        """
        What the stream consumed as far as known: the upstream's usage, else
        the marked estimate of the events relayed (see
        L{llmproxy.exchange.events}), else L{None}.
        """
        if self.usage is not None:
            return self.usage
        return {"output_tokens": self.count, "estimated": True} if self.count else None

    def tell(self, note: AttemptNote) -> dict[str, Any] | None:
        """
        Put what a stream that ended early consumed (L{known}) on its
        attempt's C{note}, and return it.
        """
        note.usage, note.events = self.known(), self.count or None
        return note.usage

    def events(self, raw: list[bytes]) -> bytes:
        self.count += len(raw)
        for item in reversed(raw):
            if USAGE_KEY in item:
                usage = find_usage(item)
                if usage is not None:
                    self.usage = usage
                break
        return self.inner.events(raw)


class Recorder(Wrapped):
    """
    A transform that keeps the bytes it produced, for what reads the answer
    once it ended (a continuation, edit precision's answer watch).
    """

    __slots__ = ("sent",)

    def __init__(self, inner: Transform) -> None:
        super().__init__(inner)
        self.sent: list[bytes] = []

    def events(self, raw: list[bytes]) -> bytes:
        out = self.inner.events(raw)
        self.sent.append(out)
        return out

    def end(self) -> bytes:
        out = self.inner.end()
        self.sent.append(out)
        return out


__all__ = ["Recorder", "UsageTap", "choose_transform", "response_id", "token"]
