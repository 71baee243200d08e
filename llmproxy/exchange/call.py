"""
What one client request asks of the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from llmproxy.routing.conversation import Conversation
from llmproxy.translate.transforms import Transform


@dataclass(slots=True)
class Call:
    """
    What the client asked: its frontend's dialect, its body (parsed, and
    as sent), the Responses conversation it continues (L{None} when
    llmproxy does not know it) and who wants the whole answer.
    """

    frontend: str
    body: Mapping[str, Any]
    raw: bytes
    history: tuple[Mapping[str, Any], ...] | None = ()
    on_response: Callable[[bytes], None] | None = None
    #: The conversation the client named, if any.
    conversation: Conversation | None = None
    #: Wraps each attempt's stream transform (the planning phase counts
    #: tool calls through it); L{None} for nearly every request.
    tap: Callable[[Transform], Transform] | None = None
    #: Whether the client asked for an event stream.
    stream: bool = field(init=False)

    def __post_init__(self) -> None:
        self.stream = self.body.get("stream") is True


__all__ = ["Call"]
