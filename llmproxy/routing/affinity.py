# -*- test-case-name: tests.test_affinity -*-
"""
Prompt-cache affinity: which of a backend's keys serves a conversation.

An upstream's prompt cache is per organisation (per key, or per ChatGPT
account), so a conversation spread round-robin over N keys finds its
prefix cached about once in N.  Rendezvous (highest-random-weight)
hashing gives each (conversation, key name) pair a weight from a stable
hash; the conversation goes to its heaviest key among those that are free.
No state is kept: every worker and every machine with the same keys makes
the same choice.  When the chosen key cools, only the conversations that
chose it move (each to its own next-heaviest key), and they come back
once it is free again (its cache may still be warm).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

from llmproxy.config import ApiKey

#: The per-backend setting's values: stick to a key per conversation, or not.
CONVERSATION = "conversation"
OFF = "off"
AFFINITIES = (CONVERSATION, OFF)

#: Weights are below this (8-byte digests).
_SPAN = 1 << 64


def weight(conversation: str, name: str) -> int:
    """
    The weight of key C{name} for C{conversation}: a stable hash (never
    Python's C{hash}, which differs between processes), in [0, 2**64).
    """
    digest = hashlib.blake2b(f"{conversation}\0{name}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(conversation: str, names: Iterable[str]) -> list[str]:
    """
    C{names}, heaviest first for C{conversation} (ties, which need equal
    digests, by name): the first is the one it sticks to.
    """
    return sorted(names, key=lambda n: (-weight(conversation, n), n))


def preference(
    conversation: str, backend: Callable[[ApiKey], float] | None = None
) -> Callable[[ApiKey], float]:
    """
    A key preference for L{llmproxy.backends.keypool.KeyPool.ordered}:
    the conversation's weights.  A backend's own preference (an account's
    share of its usage window left) only sends the keys it scores 0 or less
    (a spent window) after the others.
    """
    if backend is None:
        return lambda key: weight(conversation, key.name)

    def combined(key: ApiKey) -> float:
        score = weight(conversation, key.name)
        return score if backend(key) > 0 else score - _SPAN
    return combined


__all__ = ["AFFINITIES", "CONVERSATION", "OFF", "preference", "ranked", "weight"]
