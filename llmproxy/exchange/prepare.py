# -*- test-case-name: tests.test_proxy -*-
"""
What differs between the two frontends (Chat Completions and Responses) on
the way up and back: how a routed body becomes the backend's bytes, and how
a backend's whole answer becomes the client's.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from llmproxy.adapt.reasoning import adapt_chat_for_reasoning, is_reasoning_model
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import ProxyError
from llmproxy.routing.resolve import Target
from llmproxy.translate import (
    chat_completion_to_response,
    chat_to_responses_request,
    responses_to_chat_completion,
    responses_to_chat_request,
)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def prepare_chat(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: Any = None,
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a chat-frontend target, and the names
    of the parameters removed on the way.
    """
    body: Mapping[str, Any] = target.body
    dropped: tuple[str, ...] = ()
    changed = target.changed
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        if adapted.dropped or adapted.renamed or adapted.body != body:
            body, dropped, changed = adapted.body, adapted.dropped, True
    if backend_dialect == RESPONSES:
        translated = chat_to_responses_request(body)
        return _dumps(translated.body), dropped + translated.dropped
    return (_dumps(body) if changed else original), dropped


def prepare_responses(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: Any = None, history: Sequence[Mapping[str, Any]] | None = (),
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a responses-frontend target.

    @param history: the conversation C{previous_response_id} names, or
        L{None} when llmproxy does not know it (then only a Responses
        backend, which may have stored it, can serve the request).
    """
    if backend_dialect == RESPONSES:
        return (_dumps(target.body) if target.changed else original), ()
    if history is None:
        previous = target.body.get("previous_response_id")
        raise ProxyError(
            f"Previous response with id '{previous}' not found.", status=404,
            type="invalid_request_error", param="previous_response_id",
            code="previous_response_not_found",
        )
    translated = responses_to_chat_request(target.body, history)
    body = translated.body
    dropped = translated.dropped
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        body, dropped = adapted.body, dropped + adapted.dropped
    return _dumps(body), dropped


def convert_body(
    frontend: str, backend_dialect: str, body: bytes, *, response_id: str,
    request: Mapping[str, Any],
) -> bytes:
    """
    Convert a whole successful response body between dialects.
    """
    if frontend == backend_dialect:
        return body
    data = json.loads(body)
    if frontend == CHAT:
        return _dumps(responses_to_chat_completion(data))
    return _dumps(chat_completion_to_response(data, response_id=response_id, request=request))
