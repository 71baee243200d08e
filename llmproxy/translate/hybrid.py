# -*- test-case-name: tests.test_hybrid_pure -*-
"""
The bodies of a hybrid route's two phases and its whole answer (pure;
behaviour.md section 10), in the client's dialect (the adapt pipeline and
translation then shape each phase's body for its backend as usual):

 - L{reasoning_body}: the reasoning phase asks at maximum effort, streamed,
   without tools (only the execution model's tool calls reach the client);
 - L{execution_body}: the execution phase gets the captured reasoning
   injected (L{inject}: a system message, or a prefix of the last user
   message) and its reasoning turned off;
 - L{merge_answer}: a whole answer with the reasoning in it
   (C{reasoning_content} for Chat, a reasoning item for Responses) and
   both phases' usage summed (L{add_usage}).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from llmproxy.dialects import CHAT
from llmproxy.translate.usage import usage_counts

__all__ = [
    "MAX_EFFORT", "add_usage", "chosen_effort", "execution_body", "inject", "merge_answer", "reasoning_block",
    "reasoning_body", "reasoning_item",
]

#: The reasoning phase's effort: the highest every reasoning model takes.
MAX_EFFORT = "high"
#: The effort of an execution model that cannot turn reasoning off.
LOW_EFFORT = "low"

#: What the reasoning phase is not sent: tools, an output format, a token
#: cap (a reasoning model spends its cap on reasoning; the phase's timeout
#: and L{llmproxy.translate.hybrid_stream.MAX_REASONING} bound it).
_CHAT_DROPPED = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                 "response_format", "stream_options", "n", "max_tokens",
                 "max_completion_tokens")
_RESPONSES_DROPPED = ("tools", "tool_choice", "parallel_tool_calls", "max_output_tokens")


def _effort(body: Mapping[str, Any], frontend: str) -> Any:
    if frontend == CHAT:
        return body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    return reasoning.get("effort") if isinstance(reasoning, Mapping) else None


def chosen_effort(target: Mapping[str, Any], client: Mapping[str, Any], frontend: str) -> str:
    """
    The reasoning phase's effort: its selector's (a target body's effort
    that is not the client's), else L{MAX_EFFORT}.
    """
    mine = _effort(target, frontend)
    return mine if isinstance(mine, str) and mine != _effort(client, frontend) else MAX_EFFORT


def reasoning_body(
    body: Mapping[str, Any], frontend: str, effort: str = MAX_EFFORT
) -> dict[str, Any]:
    """
    The reasoning phase's body: streamed, at C{effort}, without tools, an
    output format or a token cap.
    """
    out = {k: v for k, v in body.items()
           if k not in (_CHAT_DROPPED if frontend == CHAT else _RESPONSES_DROPPED)}
    out["stream"] = True
    if frontend == CHAT:
        out["reasoning_effort"] = effort
        return out
    reasoning = out.get("reasoning")
    out["reasoning"] = {**(reasoning if isinstance(reasoning, Mapping) else {}),
                        "effort": effort, "summary": "auto"}
    text = out.get("text")
    if isinstance(text, Mapping) and "format" in text:
        out["text"] = {k: v for k, v in text.items() if k != "format"}
    return out


def reasoning_block(reasoning: str) -> str:
    """
    How the captured reasoning is shown to the execution model.
    """
    return ("Reasoning by a planning model, for you to act on (do not repeat it):\n"
            f"<reasoning>\n{reasoning}\n</reasoning>")


def _is_user(item: Any) -> bool:
    return isinstance(item, Mapping) and item.get("role") == "user" \
        and item.get("type", "message") == "message"


def _prefixed(content: Any, block: str, part_type: str) -> Any:
    """
    A message content with C{block} in front.
    """
    if isinstance(content, str):
        return f"{block}\n\n{content}"
    if isinstance(content, list):
        return [{"type": part_type, "text": block}, *content]
    return block


def inject(body: Mapping[str, Any], frontend: str, reasoning: str, mode: str) -> dict[str, Any]:
    """
    C{body} with C{reasoning} injected: C{mode} C{system} inserts a system
    message before the last user message; C{user} prefixes that message's
    content.  Without a user message the block goes last (system).
    """
    block = reasoning_block(reasoning)
    out = dict(body)
    field = "messages" if frontend == CHAT else "input"
    items = out.get(field)
    if isinstance(items, str):  # a Responses input given as text
        items = [{"role": "user", "content": items}]
    items = list(items) if isinstance(items, list) else []
    last = max((i for i, item in enumerate(items) if _is_user(item)), default=None)
    if mode == "user" and last is not None:
        part = "text" if frontend == CHAT else "input_text"
        items[last] = {**items[last], "content": _prefixed(items[last].get("content"), block,
                                                          part)}
    else:
        at = len(items) if last is None else last
        items.insert(at, {"role": "system", "content": block})
    out[field] = items
    return out


def execution_body(
    body: Mapping[str, Any], frontend: str, reasoning: str | None, mode: str,
    reasoning_model: bool,
) -> dict[str, Any]:
    """
    The execution phase's body: the reasoning injected (when there is
    some) and the model's own reasoning off: the effort field removed, or
    at L{LOW_EFFORT} for a C{reasoning_model}, which cannot do without.
    """
    out = inject(body, frontend, reasoning, mode) if reasoning else dict(body)
    if frontend == CHAT:
        out.pop("reasoning_effort", None)
        if reasoning_model:
            out["reasoning_effort"] = LOW_EFFORT
    else:
        out.pop("reasoning", None)
        if reasoning_model:
            out["reasoning"] = {"effort": LOW_EFFORT}
    return out


_FIELDS = {
    CHAT: ("prompt_tokens", "completion_tokens", "prompt_tokens_details",
           "completion_tokens_details"),
    "responses": ("input_tokens", "output_tokens", "input_tokens_details",
                  "output_tokens_details"),
}


def add_usage(
    usage: Mapping[str, Any] | None, other: Mapping[str, Any] | None, dialect: str
) -> dict[str, Any] | None:
    """
    C{usage} (in C{dialect}'s names) plus the counts of C{other} (either
    dialect).
    """
    if other is None:
        return None if usage is None else dict(usage)
    prompt, completion, cached_details, reasoning_details = _FIELDS[dialect]
    out = dict(usage or {})
    mine, theirs = usage_counts(out), usage_counts(other)
    out[prompt] = mine["prompt"] + theirs["prompt"]
    out[completion] = mine["completion"] + theirs["completion"]
    out["total_tokens"] = mine["total"] + theirs["total"]
    for details, name, key in ((cached_details, "cached_tokens", "cached"),
                               (reasoning_details, "reasoning_tokens", "reasoning")):
        if mine[key] or theirs[key]:
            old = out.get(details)
            out[details] = {**(old if isinstance(old, Mapping) else {}),
                            name: mine[key] + theirs[key]}
    return out


def reasoning_item(reasoning: str, ident: str = "rs_hybrid") -> dict[str, Any]:
    """
    The Responses output item that carries the reasoning, as a summary.
    """
    return {"type": "reasoning", "id": ident,
            "summary": [{"type": "summary_text", "text": reasoning}]}


def merge_answer(
    answer: bytes, frontend: str, reasoning: str | None, usage: Mapping[str, Any] | None
) -> tuple[bytes, dict[str, Any] | None]:
    """
    The execution phase's whole answer with the reasoning in it and the
    reasoning phase's C{usage} added; and the summed usage.  An answer that
    is not a JSON object is left alone.
    """
    try:
        data = json.loads(answer)
    except ValueError:
        return answer, None
    if not isinstance(data, dict):
        return answer, None
    if reasoning:
        if frontend == CHAT:
            choices = data.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
                    and isinstance(choices[0].get("message"), dict):
                message = choices[0]["message"]
                choices[0] = {**choices[0], "message": {**message, "reasoning_content": reasoning}}
        elif isinstance(data.get("output"), list):
            data["output"] = [reasoning_item(reasoning), *data["output"]]
    summed = add_usage(data.get("usage") if isinstance(data.get("usage"), dict) else None,
                       usage, frontend)
    if summed is not None:
        data["usage"] = summed
    return json.dumps(data).encode(), summed
