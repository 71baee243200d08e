# -*- test-case-name: tests.test_codex_adapt -*-
"""
The wire rules of ChatGPT's Codex backend (the C{openai-codex} backend
type), as one adapt step, L{CODEX_RULES}: it shapes Responses bodies for
targets on that type only, and leaves every other body as it is.

The Codex backend refuses what the public Responses API accepts: it wants
C{store: false} and C{stream: true} always (non-streaming clients are
served by aggregating the stream), C{instructions} always, and no token
cap, C{temperature} or C{metadata}.  Those are removed and reported (in
C{x-llmproxy-dropped-params}), as is a C{store} other than C{false}.

C{prompt_cache_key} names the conversation upstream (the backend sends it
as the C{session_id} header too, and the upstream's prompt cache follows
it).  A client that sends none gets one derived from the start of its
conversation, which every turn re-sends: so each turn of one conversation
keeps the same key, and two conversations get different ones.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

from llmproxy.adapt.pipeline import Context, Shaped, Step
from llmproxy.dialects import CODEX, RESPONSES

__all__ = ["CODEX_RULES", "DEFAULT_INSTRUCTIONS", "STRIPPED", "conversation_key",
           "shape_for_codex"]

#: The instructions of a request that gives none (the upstream requires
#: some): neutral, so the model behaves as it would without.
DEFAULT_INSTRUCTIONS = "You are a helpful assistant."

#: Fields the Codex backend rejects.
STRIPPED = frozenset({"max_output_tokens", "max_tokens", "max_completion_tokens",
                      "temperature", "metadata"})

#: The namespace of derived conversation keys (a fixed, arbitrary uuid).
_NAMESPACE = uuid.UUID("6f1c3a52-9d0e-4b8e-a2f4-2c1d7e5b9a30")


def conversation_key(body: Mapping[str, Any]) -> str:
    """
    A stable id for the conversation C{body} belongs to: a uuid5 of its
    C{instructions} and its first input item (or its input text).
    """
    instructions = body.get("instructions")
    items = body.get("input")
    first = items[0] if isinstance(items, list) and items else items
    seed = json.dumps([instructions, first], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), default=str)
    return str(uuid.uuid5(_NAMESPACE, seed))


def _conforms(body: Mapping[str, Any]) -> bool:
    """
    Whether C{body} already follows every rule (the Codex CLI's own
    requests do): then it goes as the client's own bytes.
    """
    instructions = body.get("instructions")
    return (body.get("store") is False and body.get("stream") is True
            and isinstance(instructions, str) and bool(instructions)
            and bool(body.get("prompt_cache_key"))
            and not any(name in STRIPPED for name in body))


def shape_for_codex(body: Mapping[str, Any], context: Context) -> Shaped:
    """
    Apply the Codex wire rules to a Responses body bound for an
    C{openai-codex} backend; any other target's body is left alone.
    """
    if context.backend_type != CODEX or _conforms(body):
        return Shaped(body)
    dropped = tuple(name for name in body
                    if name in STRIPPED or (name == "store" and body[name] is not False))
    out = {name: value for name, value in body.items() if name not in STRIPPED}
    out["store"] = False
    out["stream"] = True
    instructions = out.get("instructions")
    if not isinstance(instructions, str) or not instructions:
        out["instructions"] = DEFAULT_INSTRUCTIONS
    if not out.get("prompt_cache_key"):
        out["prompt_cache_key"] = conversation_key(body)
    return Shaped(out, dropped, True)


#: The step: Responses bodies only, so a Chat client's body gets it after
#: its translation to Responses.
CODEX_RULES = Step("codex", shape_for_codex, dialects=frozenset({RESPONSES}))
