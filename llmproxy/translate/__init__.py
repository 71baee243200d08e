# -*- test-case-name: tests.test_translate_requests -*-
"""
Translation between the Chat Completions and Responses APIs.

  - L{requests}: request bodies, both ways (L{chat_to_responses_request},
    L{responses_to_chat_request}).
  - L{responses}: whole answers, both ways
    (L{responses_to_chat_completion}, L{chat_completion_to_response}) and
    usage objects.
  - L{chat_to_responses} and L{responses_to_chat}: streams, one state
    machine per direction (L{ChatToResponsesStream},
    L{ResponsesToChatStream}).

Everything here is pure: no I/O, no clock, inputs are never modified.
"""

from __future__ import annotations

from llmproxy.translate.requests import (
    Translated,
    chat_to_responses_request,
    responses_to_chat_request,
)
from llmproxy.translate.responses import (
    chat_completion_to_response,
    chat_usage_to_responses,
    responses_to_chat_completion,
    responses_usage_to_chat,
)
from llmproxy.translate.chat_to_responses import ChatToResponsesStream
from llmproxy.translate.responses_to_chat import ResponsesToChatStream

__all__ = [
    "Translated",
    "chat_to_responses_request",
    "responses_to_chat_request",
    "chat_completion_to_response",
    "responses_to_chat_completion",
    "chat_usage_to_responses",
    "responses_usage_to_chat",
    "ChatToResponsesStream",
    "ResponsesToChatStream",
]
