# -*- test-case-name: tests.test_usage -*-
"""
Streamed usage for chat clients that did not ask for it: a chat stream
reports its token counts only when asked (C{stream_options.include_usage}),
so llmproxy asks for it upstream on the client's behalf, and the chat
passthrough (L{llmproxy.translate.transforms.ChatPassthrough}) takes the
extra usage back out of what the client receives.  Nothing is reported as
dropped: the client's own fields all go upstream unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["asks_usage", "needs_usage", "with_usage"]

#: What goes in front of a body's first field when it names no stream options.
_ASK = b'"stream_options":{"include_usage":true}'


def asks_usage(body: Mapping[str, Any]) -> bool:
    """
    Whether a chat body asks for the usage of its stream.
    """
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def needs_usage(body: Mapping[str, Any]) -> bool:
    """
    Whether a chat body streams without asking for its usage (llmproxy
    then asks upstream, and strips what it adds).
    """
    return body.get("stream") is True and not asks_usage(body)


def with_usage(body: Mapping[str, Any], raw: bytes | None = None) -> bytes:
    """
    The bytes of chat C{body} asking for its stream's usage.

    @param raw: C{body}'s own bytes, when nothing changed it: a body naming
        no C{stream_options} then keeps them, with the option spliced in
        front of its first field (no serialisation of a long history).
    """
    if raw is not None and "stream_options" not in body:
        start = raw.find(b"{") + 1
        rest = raw[start:]
        empty = rest.lstrip().startswith(b"}")
        return raw[:start] + _ASK + (b"" if empty else b",") + rest
    options = body.get("stream_options")
    merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps({**body, "stream_options": merged}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")
