# -*- test-case-name: tests.test_proxy -*-
"""
What differs between the two frontends (Chat Completions and Responses) on
the way up and back: how a routed body becomes the backend's bytes (the
adapt pipeline, translation included, L{llmproxy.adapt.pipeline}), and how
a backend's whole answer becomes the client's.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from llmproxy.adapt.edits import EditTuning
from llmproxy.adapt.pipeline import Context, Pipeline, Shaped, Translate
from llmproxy.adapt.usage import needs_usage, with_usage
from llmproxy.adapt.steps import DEFAULT_PIPELINE
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import ProxyError
from llmproxy.routing.resolve import Target
from llmproxy.translate import (
    Translated,
    chat_completion_to_response,
    chat_to_responses_request,
    responses_to_chat_completion,
    responses_to_chat_request,
)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _shaped(translated: Translated) -> Shaped:
    return Shaped(translated.body, translated.dropped, True)


def _to_responses(body: Mapping[str, Any]) -> Shaped:
    return _shaped(chat_to_responses_request(body))


def _to_chat(history: Sequence[Mapping[str, Any]]) -> Translate:
    return lambda body: _shaped(responses_to_chat_request(body, history))


def _bytes(target: Target, original: bytes, shaped: Shaped) -> tuple[bytes, tuple[str, ...]]:
    """
    The client's own bytes when neither routing nor the pipeline changed
    the body, else the shaped body's.
    """
    if target.changed or shaped.changed:
        return _dumps(shaped.body), shaped.dropped
    return original, shaped.dropped


def prepare_chat(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: re.Pattern[str] | None = None, pipeline: Pipeline | None = None,
    backend_type: str = "", edit: EditTuning | None = None,
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a chat-frontend target, and the names
    of the parameters removed on the way.

    @param reasoning: the backend's C{reasoning_models} pattern.
    @param pipeline: the adapt steps, by default L{DEFAULT_PIPELINE}.
    @param backend_type: the backend's C{type}, for connector steps.
    @param edit: the request's edit precision tuning, if any.
    """
    steps = DEFAULT_PIPELINE if pipeline is None else pipeline
    context = Context(target.backend, target.model, CHAT, backend_dialect, reasoning,
                      backend_type, edit=edit)
    translate = _to_responses if backend_dialect == RESPONSES else None
    shaped = steps.run(target.body, context, translate)
    if translate is None and needs_usage(shaped.body):
        # Streamed usage is asked for on the client's behalf (and stripped
        # from its stream: see llmproxy.adapt.usage).
        changed = target.changed or shaped.changed
        return with_usage(shaped.body, None if changed else original), shaped.dropped
    return _bytes(target, original, shaped)


def prepare_responses(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: re.Pattern[str] | None = None,
    history: Sequence[Mapping[str, Any]] | None = (), pipeline: Pipeline | None = None,
    backend_type: str = "", edit: EditTuning | None = None,
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a responses-frontend target.

    @param history: the conversation C{previous_response_id} names, or
        L{None} when llmproxy does not know it (then only a Responses
        backend, which may have stored it, can serve the request).
    @param pipeline: the adapt steps, by default L{DEFAULT_PIPELINE}.
    @param backend_type: the backend's C{type}, for connector steps.
    @param edit: the request's edit precision tuning, if any.
    """
    steps = DEFAULT_PIPELINE if pipeline is None else pipeline
    context = Context(target.backend, target.model, RESPONSES, backend_dialect, reasoning,
                      backend_type, edit=edit)
    if backend_dialect == RESPONSES:
        shaped = steps.run(target.body, context)
        if shaped.body.get("store") is False and "previous_response_id" in shaped.body:
            shaped = _with_history(shaped, _known(history, target.body))
        return _bytes(target, original, shaped)
    return _bytes(target, original,
                  steps.run(target.body, context, _to_chat(_known(history, target.body))))


def _known(
    history: Sequence[Mapping[str, Any]] | None, body: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """
    The conversation C{previous_response_id} names, which llmproxy must
    know to send it to an upstream that keeps none.
    """
    if history is None:
        previous = body.get("previous_response_id")
        raise ProxyError(
            f"Previous response with id '{previous}' not found.", status=404,
            type="invalid_request_error", param="previous_response_id",
            code="previous_response_not_found",
        )
    return history


def _with_history(shaped: Shaped, history: Sequence[Mapping[str, Any]]) -> Shaped:
    """
    A Responses body for an upstream that stores nothing (C{store: false}):
    the conversation C{previous_response_id} names, written out in front of
    the new input, instead of the id.
    """
    body = dict(shaped.body)
    del body["previous_response_id"]
    earlier = chat_to_responses_request({"messages": list(history)}).body.get("input") or []
    new = body.get("input")
    if isinstance(new, str):
        new = [{"role": "user", "content": new}]
    body["input"] = [*earlier, *(new or [])]
    return Shaped(body, shaped.dropped, True)


def convert_body(
    frontend: str, backend_dialect: str, body: bytes, *, response_id: str,
    request: Mapping[str, Any], parsed: Mapping[str, Any] | None = None,
) -> bytes:
    """
    Convert a whole successful response body between dialects.

    @param parsed: C{body} already parsed, if it was.
    """
    if frontend == backend_dialect:
        return body
    data = json.loads(body) if parsed is None else parsed
    if frontend == CHAT:
        return _dumps(responses_to_chat_completion(data))
    return _dumps(chat_completion_to_response(data, response_id=response_id, request=request))
