# -*- test-case-name: tests.test_adapt_reasoning,tests.test_adapt_pipeline -*-
"""
Adapting Chat Completions requests for OpenAI reasoning models: the first
step of the adapt pipeline, L{REASONING}.

Reasoning models (o1, o3, o4-mini, the gpt-5 family) reject C{max_tokens},
sampling parameters, penalties and log-probabilities.  The first models,
o1-preview and o1-mini, also reject the C{system} and C{developer} roles.
L{adapt_chat_for_reasoning} rewrites a request body so such a model
accepts it, and reports what it removed or renamed so the caller can log
it.  The input body is never mutated.

L{REASONING} understands Chat bodies only, so the pipeline runs it on the
client's body before a Chat -> Responses translation, on the translated
body after a Responses -> Chat one, and not at all when a Responses client
talks to a Responses upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from llmproxy.adapt.pipeline import Context, Shaped, Step
from llmproxy.dialects import CHAT

__all__ = [
    "DEFAULT_REASONING_MODELS",
    "LEGACY_REASONING_MODELS",
    "Adaptation",
    "is_reasoning_model",
    "adapt_chat_for_reasoning",
    "shape_for_reasoning",
    "REASONING",
]

DEFAULT_REASONING_MODELS: re.Pattern[str] = re.compile(
    r"(?:o1|o3|o4)(?:-|$)|gpt-5(?:[-.]|$)"
)
LEGACY_REASONING_MODELS: re.Pattern[str] = re.compile(r"o1-(?:preview|mini)")

_UNSUPPORTED = frozenset(
    {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)
_LEGACY_UNSUPPORTED = _UNSUPPORTED | {"reasoning_effort"}
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_TEXT_PART_TYPES = frozenset({"text", "input_text"})


@dataclass(frozen=True)
class Adaptation:
    """
    The adapted request.

    @ivar body: a new body dict; the input is never mutated.
    @ivar dropped: the names of removed parameters, in body order.
    @ivar renamed: C{(old, new)} parameter renames, such as
        C{("max_tokens", "max_completion_tokens")}.
    """

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()


def is_reasoning_model(model: str, pattern: re.Pattern[str] | None = None) -> bool:
    """
    Tell whether C{model} is a reasoning model.

    @param model: the bare upstream model name.
    @param pattern: the pattern to use (C{re.match} semantics), by default
        L{DEFAULT_REASONING_MODELS}.
    @return: whether the pattern matches at the start of C{model}.
    """
    chosen = DEFAULT_REASONING_MODELS if pattern is None else pattern
    return chosen.match(model) is not None


def _adapt_fields(
    body: Mapping[str, Any], unsupported: frozenset[str]
) -> Adaptation:
    """
    Drop unsupported fields and rename C{max_tokens}, keeping key order.

    A null field is not set: it is dropped without a report (a null
    C{max_tokens} is not renamed), and a null C{max_completion_tokens}
    leaves the place to C{max_tokens}.

    @param body: the request body.
    @param unsupported: the field names to drop.
    @return: the adapted top-level fields (values are shared, not copied).
    """
    result: dict[str, Any] = {}
    dropped: list[str] = []
    renamed: list[tuple[str, str]] = []
    capped = body.get("max_completion_tokens") is not None
    for key, value in body.items():
        if key in unsupported or key == "max_tokens":
            if value is None:
                continue
            if key in unsupported or capped:
                dropped.append(key)
            else:
                result["max_completion_tokens"] = value
                renamed.append(("max_tokens", "max_completion_tokens"))
        elif key == "max_completion_tokens" and not capped:
            continue
        else:
            result[key] = value
    return Adaptation(result, tuple(dropped), tuple(renamed))


def _content_text(content: object) -> str:
    """
    Extract the text of a message's content.

    @param content: a string, a list of content parts, or anything else.
    @return: the string, or the text parts joined by newlines; C{""} for
        anything without text.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        part["text"]
        for part in content
        if isinstance(part, Mapping)
        and part.get("type") in _TEXT_PART_TYPES
        and isinstance(part.get("text"), str)
    ]
    return "\n".join(texts)


def _role(message: object) -> object:
    """
    The role of a message, tolerating malformed messages.

    @param message: one element of C{messages}.
    @return: its C{role}, or L{None} if it is not a mapping.
    """
    return message.get("role") if isinstance(message, Mapping) else None


def _prefix_content(content: object, prefix: str) -> object:
    """
    Put C{prefix} and a blank line before a user message's content.

    @param content: the user message's content (string, parts or L{None}).
    @param prefix: the merged instruction text.
    @return: new content; the input is not mutated.
    """
    if isinstance(content, str):
        return f"{prefix}\n\n{content}" if content else prefix
    if not isinstance(content, list):
        return prefix
    first = content[0] if content else None
    if isinstance(first, Mapping) and first.get("type") == "text":
        text = first.get("text")
        merged = f"{prefix}\n\n{text}" if isinstance(text, str) and text else prefix
        return [{**first, "text": merged}, *content[1:]]
    return [{"type": "text", "text": prefix}, *content]


def _merged_text(messages: Sequence[Any], roles: Sequence[object]) -> str:
    """
    Join the text of all instruction messages.

    @param messages: the messages.
    @param roles: their roles, as given by L{_role}.
    @return: the non-empty texts separated by blank lines.
    """
    texts = (
        _content_text(message.get("content"))
        for message, role in zip(messages, roles)
        if role in _INSTRUCTION_ROLES
    )
    return "\n\n".join(text for text in texts if text)


def _merge_instructions(messages: Sequence[Any]) -> list[Any]:
    """
    Fold all C{system}/C{developer} text into the first C{user} message.

    If there is no user message, the merged text becomes a user message at
    the place of the first instruction message.

    @param messages: the original messages.
    @return: a new list; only the changed message is a new dict.
    """
    roles = [_role(m) for m in messages]
    merged = _merged_text(messages, roles)
    first_user = roles.index("user") if "user" in roles else None
    result: list[Any] = []
    for index, (message, role) in enumerate(zip(messages, roles)):
        if role in _INSTRUCTION_ROLES:
            if first_user is None and merged:
                result.append({"role": "user", "content": merged})
                merged = ""
        elif index == first_user and merged:
            content = _prefix_content(message.get("content"), merged)
            result.append({**message, "content": content})
        else:
            result.append(message)
    return result


def _rename_system(messages: Sequence[Any]) -> list[Any]:
    """
    Turn C{system} messages into C{developer} messages.

    @param messages: the original messages.
    @return: a new list; only the renamed messages are new dicts.
    """
    return [{**m, "role": "developer"} if _role(m) == "system" else m for m in messages]


def adapt_chat_for_reasoning(
    body: Mapping[str, Any],
    model: str,
    pattern: re.Pattern[str] | None = None,
) -> Adaptation:
    """
    Adapt a Chat Completions body for a reasoning model.

    For a reasoning model: C{max_tokens} becomes C{max_completion_tokens}
    (or is dropped if that is already present); C{temperature}, C{top_p},
    the penalties, C{logprobs}, C{top_logprobs} and C{logit_bias} are
    dropped.  For o1-preview and o1-mini, C{reasoning_effort} is dropped
    too and the text of all C{system}/C{developer} messages is merged into
    the first C{user} message; for newer models C{system} becomes
    C{developer}.  Null fields are not set: the ones it would drop go
    without a report, and a null C{max_tokens} is not renamed.

    @param body: the request body; never mutated.
    @param model: the bare upstream model name.
    @param pattern: what counts as a reasoning model, by default
        L{DEFAULT_REASONING_MODELS}.
    @return: the adapted body and what was dropped or renamed; for a model
        that is not a reasoning model, a shallow copy of C{body} and
        nothing dropped or renamed.
    """
    if not is_reasoning_model(model, pattern):
        return Adaptation(dict(body))
    legacy = LEGACY_REASONING_MODELS.match(model) is not None
    adapted = _adapt_fields(body, _LEGACY_UNSUPPORTED if legacy else _UNSUPPORTED)
    messages = adapted.body.get("messages")
    if isinstance(messages, list):
        rewrite = _merge_instructions if legacy else _rename_system
        adapted.body["messages"] = rewrite(messages)
    return adapted


def shape_for_reasoning(body: Mapping[str, Any], context: Context) -> Shaped:
    """
    L{adapt_chat_for_reasoning} as a pipeline step, for the target's model
    and its backend's C{reasoning_models} pattern.

    @return: unchanged unless the model is a reasoning model and the
        adaptation removed, renamed or rewrote something that was set: a
        body whose only unsupported fields are null goes as it came.
    """
    pattern = context.reasoning_models
    if not is_reasoning_model(context.model, pattern):
        return Shaped(body)
    adapted = adapt_chat_for_reasoning(body, context.model, pattern)
    if (adapted.dropped or adapted.renamed
            or adapted.body.get("messages") != body.get("messages")):
        return Shaped(adapted.body, adapted.dropped, True)
    return Shaped(body)


#: Reasoning models reject sampling parameters and, for the first ones,
#: instruction roles: adapt Chat bodies sent to them.
REASONING = Step("reasoning", shape_for_reasoning, dialects=frozenset({CHAT}))
