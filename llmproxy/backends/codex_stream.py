# -*- test-case-name: tests.test_codex_backend -*-
"""
The one quirk of the Codex backend's event streams: its
C{response.completed} event may carry an empty C{output}, the items having
come only in the C{response.output_item.done} events.  Clients that take
the final response from C{response.completed} (the OpenAI SDK's
C{responses.stream()}, llmproxy's own store for C{previous_response_id})
would see an answer with nothing in it.

L{FilledResponse} relays such a stream as it comes, event by event and
byte for byte, but for that one event, whose empty C{output} it fills with
the items the stream carried.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IProtocol, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from llmproxy.sse import SSEError, SSEFramer, encode_event, parse_event

_ITEM_DONE = b"response.output_item.done"
_COMPLETED = b"response.completed"


class FillCompleted(Protocol):
    """
    Between an upstream body and its reader: whole events through, the
    C{response.completed} one filled in.  Pausing and stopping go to the
    upstream itself (the reader gets its transport).
    """

    def __init__(self, inner: IProtocol) -> None:
        self.inner = inner
        self.framer: SSEFramer | None = SSEFramer()
        self.items: dict[int, Any] = {}

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.framer is None:
            self.inner.dataReceived(data)
            return
        try:
            frames = self.framer.feed(data)
        except SSEError:
            # Not a stream this can read: the reader finds out itself.
            self.framer = None
            self.inner.dataReceived(data)
            return
        out = b"".join(self._frame(frame) for frame in frames)
        if out:
            self.inner.dataReceived(out)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.framer is not None:
            rest = self.framer.remainder()
            if rest:
                self.inner.dataReceived(self._frame(rest))
        self.inner.connectionLost(reason)

    def _frame(self, raw: bytes) -> bytes:
        """
        One event as it goes on: itself, but for a completed one with no
        output.
        """
        if _ITEM_DONE not in raw and _COMPLETED not in raw:
            return raw
        event = parse_event(raw)
        try:
            data = json.loads(event.data) if event is not None and event.data else None
        except ValueError:
            return raw
        if not isinstance(data, dict):
            return raw
        if data.get("type") == "response.output_item.done" and "item" in data:
            index = data.get("output_index")
            self.items[index if isinstance(index, int) else len(self.items)] = data["item"]
            return raw
        response = data.get("response")
        if data.get("type") != "response.completed" or not isinstance(response, dict) \
                or response.get("output") or not self.items:
            return raw
        output = [self.items[i] for i in sorted(self.items)]
        filled = {**data, "response": {**response, "output": output}}
        return encode_event(filled, event.event if event is not None else None)


@implementer(IResponse)
class FilledResponse:
    """
    An upstream response whose body is read through L{FillCompleted}.
    """

    def __init__(self, original: IResponse) -> None:
        self.original = original
        self.version = original.version
        self.code = original.code
        self.phrase = original.phrase
        self.headers = original.headers
        # Filling changes the body's length.
        self.length = UNKNOWN_LENGTH
        self.request = original.request
        self.previousResponse = original.previousResponse

    def deliverBody(self, protocol: IProtocol) -> None:
        self.original.deliverBody(FillCompleted(protocol))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.original.setPreviousResponse(response)


__all__ = ["FillCompleted", "FilledResponse"]
