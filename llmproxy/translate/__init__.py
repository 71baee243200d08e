# -*- test-case-name: tests.test_translate_chat_request -*-
"""
Translation between the Chat Completions and Responses APIs.

  - L{chat_request} and L{responses_request}: request bodies, one module per
    direction (L{chat_to_responses_request}, L{responses_to_chat_request}),
    on the field tables of L{requests} (which also holds L{Translated}).
  - L{responses}: whole answers, both ways
    (L{responses_to_chat_completion}, L{chat_completion_to_response}) and
    usage objects.
  - L{chat_to_responses} and L{responses_to_chat}: streams, one state
    machine per direction (L{ChatToResponsesStream},
    L{ResponsesToChatStream}).
  - L{aggregate}: a Responses event stream made into one whole response
    (L{aggregate_responses}, L{ResponsesAggregator}, L{StreamFailed}), for
    upstreams that only stream.
  - L{transforms}: the SSE-level stream transforms built on them, per
    dialect pair, and the in-band error of each dialect.

Everything here is pure: no I/O, no clock, inputs are never modified.
"""

from __future__ import annotations

from llmproxy.translate.aggregate import ResponsesAggregator, StreamFailed, aggregate_responses
from llmproxy.translate.chat_request import chat_to_responses_request
from llmproxy.translate.chat_to_responses import ChatToResponsesStream
from llmproxy.translate.requests import Translated
from llmproxy.translate.responses import (
    chat_completion_to_response,
    chat_usage_to_responses,
    responses_to_chat_completion,
    responses_usage_to_chat,
)
from llmproxy.translate.responses_request import responses_to_chat_request
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
    "ResponsesAggregator",
    "StreamFailed",
    "aggregate_responses",
]
