# -*- test-case-name: tests.test_capture_show -*-
"""
Reading a capture file back: its entries grouped by request
(L{read_requests}), and one request's journey as readable text
(L{timeline}): client -> proxy -> each attempt with its outcome ->
client, streams reassembled (the SSE text joined, and the text the deltas
spell), times relative to the request's arrival.  Pure, but for reading
the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from llmproxy.capture.entries import (
    ATTEMPT, DROPPED, INBOUND_REQUEST, INBOUND_RESPONSE, OUTBOUND_REQUEST, OUTBOUND_RESPONSE,
    STREAM_CHUNK, STREAM_END, STREAM_START,
)

#: How much of a payload a timeline line shows.
SHOWN = 300


@dataclass
class Captured:
    """
    The entries of one request, in C{seq} order.
    """

    request_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def session_id(self) -> str | None:
        return self.entries[0].get("session_id") if self.entries else None

    def side(self, client: bool, attempt: int | None = None) -> list[dict[str, Any]]:
        """
        The entries of the client side, or of one attempt.
        """
        if client:
            return [e for e in self.entries if "client" in (e["source"], e["destination"])]
        return [e for e in self.entries if e.get("attempt") == attempt
                and e["direction"] != ATTEMPT and "client" not in (e["source"], e["destination"])]

    def attempts(self) -> list[int]:
        return sorted({e["attempt"] for e in self.entries if e.get("attempt") is not None})


def read_entries(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """
    The entries of a capture file's lines, header entries left out.
    """
    for line in lines:
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("direction") != "header":
            yield entry


def read_requests(path: str) -> dict[str, Captured]:
    """
    The requests of a capture file, by id, in the order they arrived.
    """
    return read_capture(path)[0]


def read_capture(path: str) -> tuple[dict[str, Captured], int]:
    """
    The requests of a capture file, by id, in the order they arrived, and
    how many entries its C{dropped} entries say were lost.
    """
    requests: dict[str, Captured] = {}
    dropped = 0
    with open(path, "rb") as f:
        for entry in read_entries(f):
            rid = entry.get("request_id")
            if rid is not None:
                requests.setdefault(rid, Captured(rid)).entries.append(entry)
            elif entry.get("direction") == DROPPED:
                dropped += int((entry.get("metadata") or {}).get("dropped", 0))
    for captured in requests.values():
        captured.entries.sort(key=lambda e: e["seq"])
    return requests, dropped


def stream_text(chunks: Iterable[dict[str, Any]]) -> str:
    """
    The raw text of a stream's chunks, joined.
    """
    return "".join(_as_text(c.get("payload")) for c in chunks)


def spelled(sse: str) -> str:
    """
    The text an SSE stream's deltas spell (Chat Completions
    C{choices[].delta.content}, Responses C{response.output_text.delta}).
    """
    out = []
    for line in sse.splitlines():
        if not line.startswith("data:"):
            continue
        try:
            data = json.loads(line[5:].strip())
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("type") == "response.output_text.delta":
            out.append(str(data.get("delta", "")))
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                out.append(str((choice.get("delta") or {}).get("content") or ""))
    return "".join(out)


def timeline(captured: Captured) -> str:
    """
    One request's journey, as lines of text.
    """
    entries = captured.entries
    start = entries[0]["timestamp_unix"]
    first = entries[0]
    meta = first.get("metadata", {})
    lines = [f"request {captured.request_id}  session {captured.session_id or '-'}  "
             f"{meta.get('method', '?')} {meta.get('path', '?')}  model {first.get('model')}"]
    streams: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for e in entries:
        at = f"  +{e['timestamp_unix'] - start:7.3f}s  "
        d = e["direction"]
        key = (e["destination"], e.get("attempt"))
        if d == STREAM_CHUNK:
            streams.setdefault(key, []).append(e)
            continue
        lines.append(at + _describe(e))
        if d == STREAM_END:
            lines.extend(_stream_lines(streams.pop(key, [])))
    return "\n".join(lines)


def _describe(e: dict[str, Any]) -> str:
    d = e["direction"]
    route = f"{e['source']} -> {e['destination']}"
    meta = e.get("metadata") or {}
    if d == INBOUND_REQUEST:
        return f"{route}  request, {e['content_length']} bytes: {_short(e.get('payload'))}"
    if d == OUTBOUND_REQUEST:
        return (f"{route}  attempt {e['attempt']} to {e['backend']}:{e['model']} "
                f"(key {e['key_name'] or '-'}), {e['content_length']} bytes: "
                f"{_short(e.get('payload'))}")
    if d == INBOUND_RESPONSE:
        return (f"{route}  attempt {e['attempt']} answered {e['status']}, "
                f"{e['content_length']} bytes: {_short(e.get('payload'))}")
    if d == OUTBOUND_RESPONSE:
        return (f"{route}  answer {e['status']}, {e['content_length']} bytes"
                f"{'' if meta.get('completed', True) else ' (' + str(meta.get('error')) + ')'}"
                f": {_short(e.get('payload'))}")
    if d == STREAM_START:
        who = f"attempt {e['attempt']} " if e.get("attempt") else ""
        return f"{route}  {who}stream starts, status {e['status']}"
    if d == STREAM_END:
        how = "complete" if meta.get("completed") else f"BROKEN: {meta.get('error')}"
        return f"{route}  stream ends, {how}"
    if d == ATTEMPT:
        took = meta.get("duration")
        return (f"attempt {e['attempt']} ({e['backend']}:{e['model']}, "
                f"key {e['key_name'] or '-'}): {meta.get('outcome')}, status {e['status']}"
                + (f", {took:.3f} s" if isinstance(took, (int, float)) else "")
                + (f", {meta['error']}" if meta.get("error") else ""))
    return f"{route}  {d}: {_short(meta)}"


def _stream_lines(chunks: list[dict[str, Any]]) -> list[str]:
    raw = stream_text(chunks)
    text = spelled(raw)
    size = sum(c.get("content_length") or 0 for c in chunks)
    lines = [f"             {len(chunks)} chunks, {size} bytes"]
    if text:
        lines.append(f"             text: {json.dumps(text, ensure_ascii=False)[:SHOWN]}")
    return lines


def _as_text(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict) and "$base64" in payload:
        return ""
    return json.dumps(payload, ensure_ascii=False) if payload is not None else ""


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


__all__ = ["Captured", "read_capture", "read_entries", "read_requests", "spelled", "stream_text", "timeline"]
