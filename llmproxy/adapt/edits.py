# -*- test-case-name: tests.test_edit_precision -*-
"""
Edit precision tuning: a request whose newest turn shows a coding agent's
failed edit (a SEARCH block that matched nothing, a patch whose context was
not found) is sent, that once, with lower sampling parameters, so that the
model's retry copies the file's text exactly instead of paraphrasing it.

Pure: L{find_failure} finds the failure in a request, L{answer_failure} in
a whole answer; the exchange decides once per request whether to tune
(L{llmproxy.exchange.tuning}) and hands the decision to the L{EDITS} step in
L{Context.edit}.  L{tuned} says what the step changes for a target, so that
the exchange reports the very same thing (C{x-llmproxy-tuned}).

Only the newest turn is searched: the messages after the last assistant
message (the tool results and the user message that answer it).  Searching
the whole history would tune every later request of a conversation that
once saw a failure, which is not "that one request".

A reasoning model is never tuned: it rejects sampling parameters (the
reasoning step would have to drop what this step added, and on a Responses
upstream nothing would).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from llmproxy.adapt.pipeline import Context, EditTuning, Shaped, Step
from llmproxy.adapt.reasoning import is_reasoning_model
from llmproxy.config.edits import EditPrecisionConfig
from llmproxy.dialects import CHAT

__all__ = ["EDITS", "SCAN_LIMIT", "Change", "EditTuning", "answer_failure", "answer_text", "describe", "find_failure",
           "shape_for_edits", "turn_texts", "tuned"]

#: Responses input items an assistant produced: the newest turn starts after
#: the last of them.
_ASSISTANT_ITEMS = frozenset({"function_call", "custom_tool_call", "reasoning",
                              "local_shell_call", "computer_call"})
#: Responses input items carrying a tool's result.
_RESULT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output",
                           "local_shell_call_output", "computer_call_output"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})

#: How much of each text is searched: an agent's failure message opens the
#: tool result (or text part) that carries it, and a long tool output (a
#: file, a build log) would otherwise cost every pattern a full search
#: (about 50 us per 4 KB for the shipped patterns, on every such request).
SCAN_LIMIT = 4096


class Change(NamedTuple):
    """
    One parameter lowered (C{old} L{None}: the client sent none).
    """

    param: str
    old: float | None
    new: float


def _is(kind: object, kinds: frozenset[str]) -> bool:
    return isinstance(kind, str) and kind in kinds


def _texts(content: object) -> list[str]:
    """
    The texts of a message's content or a tool's output (a string, or
    each text part).
    """
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [part["text"] for part in content
            if isinstance(part, dict) and _is(part.get("type"), _TEXT_PARTS)
            and isinstance(part.get("text"), str)]


def _chat_turn(messages: Sequence[Any]) -> Iterator[tuple[bool, list[str]]]:
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") == "assistant":
            return
        yield message.get("role") == "user", _texts(message.get("content"))


def _responses_turn(items: Sequence[Any]) -> Iterator[tuple[bool, list[str]]]:
    for item in reversed(items):
        if not isinstance(item, dict):
            return
        kind, role = item.get("type"), item.get("role")
        if role == "assistant" or _is(kind, _ASSISTANT_ITEMS):
            return
        if _is(kind, _RESULT_ITEMS):
            yield False, _texts(item.get("output"))
        else:
            yield role == "user", _texts(item.get("content"))


def turn_texts(body: Mapping[str, Any], dialect: str) -> list[str]:
    """
    The texts of a request's newest turn: its last user message first, then
    the rest of the turn (tool results, other messages), newest first; each
    text part on its own.
    """
    if dialect == CHAT:
        messages = body.get("messages")
        found = list(_chat_turn(messages)) if isinstance(messages, list) else []
    else:
        items = body.get("input")
        if isinstance(items, str):
            return [items]
        found = list(_responses_turn(items)) if isinstance(items, list) else []
    first = next((i for i, (user, _) in enumerate(found) if user), None)
    if first is not None:
        found.insert(0, found.pop(first))
    return [text for _, texts in found for text in texts]


def _first_match(texts: Iterable[str], settings: EditPrecisionConfig) -> str | None:
    """
    The first pattern found in the first text that shows one, searching
    the first L{SCAN_LIMIT} characters of each.
    """
    for text in texts:
        if not text:
            continue
        head = text[:SCAN_LIMIT]
        for pattern in settings.patterns:
            for regex in pattern.regexes:
                if regex.search(head) is not None:
                    return pattern.name
    return None


def find_failure(
    body: Mapping[str, Any], dialect: str, settings: EditPrecisionConfig
) -> str | None:
    """
    The name of the first failure pattern found in the newest turn of a
    request (L{turn_texts}), or L{None}.
    """
    return _first_match(turn_texts(body, dialect), settings)


def answer_failure(text: str, settings: EditPrecisionConfig) -> str | None:
    """
    The name of the failure pattern an answer's text shows, or L{None}.
    """
    return _first_match((text,), settings)


def answer_text(data: Mapping[str, Any], dialect: str) -> str:
    """
    The text of a whole answer (every choice's message, or every output
    message's text), for L{answer_failure}.
    """
    if dialect == CHAT:
        choices = data.get("choices")
        return "\n".join(
            text for choice in (choices if isinstance(choices, list) else ())
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict)
            for text in _texts(choice["message"].get("content")))
    output = data.get("output")
    return "\n".join(text for item in (output if isinstance(output, list) else ())
                     if isinstance(item, dict) and item.get("type") == "message"
                     for text in _texts(item.get("content")))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _cap(body: Mapping[str, Any], param: str, cap: float, add: bool) -> Change | None:
    """
    C{param} lowered to C{cap}: set to it when absent (if C{add}), lowered
    when above; a value that is not a number is the upstream's to refuse.
    """
    value = body.get(param)
    if value is None:
        return Change(param, None, cap) if add else None
    number = _number(value)
    if number is not None and number > cap:
        return Change(param, number, cap)
    return None


def tuned(
    body: Mapping[str, Any], model: str, reasoning: re.Pattern[str] | None,
    tuning: EditTuning,
) -> tuple[Change, ...]:
    """
    What tuning changes in C{body} for C{model}: C{temperature} to at most
    the model's cap (the cap when unset), C{top_p} to at most C{min_top_p}
    (likewise), a C{top_k} the client sent to at most C{max_top_k}.
    Nothing for a reasoning model (C{reasoning}: its backend's pattern).
    """
    if is_reasoning_model(model, reasoning):
        return ()
    settings = tuning.settings
    changes = (
        _cap(body, "temperature", settings.temperature_for(model), True),
        _cap(body, "top_p", settings.min_top_p, True),
        None if settings.max_top_k is None else _cap(body, "top_k", settings.max_top_k, False),
    )
    return tuple(change for change in changes if change is not None)


def _shown(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}"


def describe(changes: Sequence[Change], tuning: EditTuning) -> str:
    """
    C{x-llmproxy-tuned}'s value: C{temperature 0.7->0.1, top_p unset->0.3
    (edit failure: cline search-block)} (ASCII, as header values should be).
    """
    done = ", ".join(f"{c.param} {_shown(c.old)}->{_shown(c.new)}" for c in changes)
    return f"{done} (edit failure: {tuning.failure})"


def shape_for_edits(body: Mapping[str, Any], context: Context) -> Shaped:
    """
    Apply L{tuned} when the request is to be tuned (C{context.edit}).
    """
    tuning = context.edit
    if tuning is None:
        return Shaped(body)
    changes = tuned(body, context.model, context.reasoning_models, tuning)
    if not changes:
        return Shaped(body)
    out = dict(body)
    for change in changes:
        out[change.param] = change.new
    return Shaped(out, (), True)


#: Lowers sampling parameters for a request retrying a failed edit; runs
#: before the reasoning step (see the module's docstring).
EDITS = Step("edits", shape_for_edits)
