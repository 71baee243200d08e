# -*- test-case-name: tests.test_conversation -*-
"""
Which conversation a request belongs to: only what the client says, in a
fixed order, never guessed from the messages (guessing mixes different
users' state).  A request that names none has no conversation, and every
per-conversation feature is stateless for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: The headers that name a conversation, in order (Codex sends C{session_id}).
HEADERS = ("session_id", "x-session-id")
#: The proxy-only body field that names one (removed before the upstream).
BODY_FIELD = "x_llmproxy_session"


@dataclass(frozen=True)
class Conversation:
    """
    A request's conversation.

    @ivar key: the state store's key: the source and a digest of the value,
        scoped to the client (so two clients' equal ids never share state).
    @ivar source: where it came from, as C{x-llmproxy-session} shows it:
        C{header session_id}, C{header x-session-id}, C{x_llmproxy_session},
        C{prompt_cache_key}, C{previous_response_id}.
    @ivar value: the id itself; never shown when it came from a header.
    """

    key: str
    source: str
    value: str = field(repr=False)

    @property
    def shown(self) -> str:
        """
        What C{x-llmproxy-session} says: the source, and the value unless
        it came from a header (or would not make a clean header value).
        """
        if self.source.startswith("header") or not _printable(self.value):
            return self.source
        return f"{self.source} {self.value}"


def conversation_of(
    header: Callable[[str], str | None], body: Mapping[str, Any], root: str | None = None,
    scope: str = "",
) -> Conversation | None:
    """
    The conversation a request names: a C{session_id} (or C{x-session-id})
    header or the proxy-only C{x_llmproxy_session} body field; else its
    C{prompt_cache_key}; else C{root}, the first response of the
    C{previous_response_id} chain it continues.

    @param header: a request header's value by lower-case name.
    @param scope: who is asking (e.g. which proxy key), mixed into the key.
    """
    for name in HEADERS:
        value = header(name)
        if value:
            return _conversation(f"header {name}", value, scope)
    for name in (BODY_FIELD, "prompt_cache_key"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return _conversation(name, value, scope)
    if root:
        return _conversation("previous_response_id", root, scope)
    return None


def _printable(value: str) -> bool:
    return len(value) <= 200 and value.isascii() and value.isprintable()


def _conversation(source: str, value: str, scope: str) -> Conversation:
    digest = hashlib.blake2b(f"{scope}\0{value}".encode(), digest_size=12).hexdigest()
    return Conversation(digest, source, value)


__all__ = ["BODY_FIELD", "HEADERS", "Conversation", "conversation_of"]
