# -*- test-case-name: tests.test_capture_chunks -*-
"""
A stream's chunks, passed on with any tail that could begin a secret held
back and put in front of the next chunk, so that a secret the stream
splits between chunks is whole in one chunk before redaction (which works
chunk by chunk) sees it.  The stream's bytes are unchanged; only where a
chunk ends may move.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from llmproxy.capture.entries import Record


def dangling(data: bytes, secrets: Sequence[bytes]) -> int:
    """
    The length of the longest tail of C{data} that is the beginning of a
    secret (but not the whole of it); 0 when none is.
    """
    most = 0
    for secret in secrets:
        reach = min(len(secret) - 1, len(data))
        if reach <= most:
            continue
        tail = data[len(data) - reach:]
        at = tail.find(secret[:1])
        while at != -1 and reach - at > most:
            if secret.startswith(tail[at:]):
                most = reach - at
                break
            at = tail.find(secret[:1], at + 1)
    return most


class ChunkCarry:
    """
    Passes a stream's chunk records on at once, less a tail that could
    begin a secret, which goes in front of the next.
    """

    def __init__(self, emit: Callable[[Record], None], secrets: Sequence[bytes]) -> None:
        self._emit = emit
        self._secrets = secrets
        self._carry = b""
        self._last: Record | None = None

    def add(self, record: Record) -> None:
        """
        Pass C{record} on, its dangling tail held back.
        """
        body = self._carry + (record.body or b"")
        held = dangling(body, self._secrets)
        self._carry = body[len(body) - held:] if held else b""
        record.body = body[:len(body) - held]
        self._last = record
        if record.body:
            self._emit(record)

    def flush(self) -> None:
        """
        The stream ended: pass on what was held back, if anything.
        """
        if self._carry and self._last is not None:
            self._emit(replace(self._last, body=self._carry, seq=0))
        self._carry = b""


__all__ = ["ChunkCarry", "dangling"]
