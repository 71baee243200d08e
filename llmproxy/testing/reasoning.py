"""
A fake upstream's reasoning model (behaviour.md section 10): streams that
think first, then answer, in the three shapes a hybrid route's reasoning
phase reads (L{llmproxy.translate.hybrid_stream.ReasoningCutter}).  Serve
them paced with L{Stream} (C{delay} between events) to see the phase cut.
"""

from __future__ import annotations

from typing import Any, Sequence

from llmproxy.sse import DONE, encode_event
from llmproxy.testing.builders import chat_chunk, responses_events

__all__ = ["think_chunks", "reasoning_delta_chunks", "reasoning_summary_events"]


def think_chunks(model: str, thoughts: Sequence[str], answer: Sequence[str],
                 tag: str = "think") -> list[bytes]:
    """
    A chat stream whose content is C{<tag>thoughts</tag>} then C{answer}
    (DeepSeek-R1 style), one event per piece: the close tag arrives in its
    own events, split in two.
    """
    out = [chat_chunk(model, {"role": "assistant", "content": ""})]
    pieces = [f"<{tag}>", *thoughts, f"</{tag[:3]}", f"{tag[3:]}>", *answer]
    out += [chat_chunk(model, {"content": p}) for p in pieces]
    out.append(chat_chunk(model, {}, "stop"))
    return [encode_event(c) for c in out] + [DONE]


def reasoning_delta_chunks(model: str, thoughts: Sequence[str], answer: Sequence[str],
                           field: str = "reasoning_content") -> list[bytes]:
    """
    A chat stream of C{field} deltas (C{reasoning_content} or
    C{reasoning}), then the answer's content deltas.
    """
    out: list[dict[str, Any]] = [chat_chunk(model, {"role": "assistant", "content": ""})]
    out += [chat_chunk(model, {field: t}) for t in thoughts]
    out += [chat_chunk(model, {"content": p}) for p in answer]
    out.append(chat_chunk(model, {}, "stop"))
    return [encode_event(c) for c in out] + [DONE]


def reasoning_summary_events(model: str, thoughts: Sequence[str],
                             answer: Sequence[str]) -> list[bytes]:
    """
    A Responses stream with a reasoning item (its summary C{thoughts}),
    then a message item of C{answer}.
    """
    events = responses_events(model, answer)
    at = {"item_id": "rs_fake", "output_index": 0, "summary_index": 0}
    items: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_fake", "summary": []}},
        {"type": "response.reasoning_summary_part.added", **at,
         "part": {"type": "summary_text", "text": ""}},
        *({"type": "response.reasoning_summary_text.delta", **at, "delta": t} for t in thoughts),
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs_fake",
                  "summary": [{"type": "summary_text", "text": "".join(thoughts)}]}},
    ]
    reasoning = [encode_event(e, e["type"]) for e in items]
    return events[:2] + reasoning + events[2:]
