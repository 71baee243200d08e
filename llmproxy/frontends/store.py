# -*- test-case-name: tests.test_store,tests.test_responses_api -*-
"""
Recent Responses-API conversations, so C{previous_response_id} works on
backends that store nothing (chat backends, or C{store: false}).

Each produced response id maps to the whole conversation up to and
including that response, as Chat Completions messages.  The store is
bounded by count and by age.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Mapping

from twisted.internet.interfaces import IReactorTime

from llmproxy.errors import ProxyError
from llmproxy.translate import responses_to_chat_completion, responses_to_chat_request

Messages = tuple[Mapping[str, Any], ...]


class ResponseStore:
    """
    A bounded, expiring map from response id to conversation.
    """

    def __init__(self, clock: IReactorTime, max_items: int = 1000, max_age: float = 3600.0) -> None:
        self.clock = clock
        self.max_items = max_items
        self.max_age = max_age
        self._items: OrderedDict[str, tuple[float, Messages]] = OrderedDict()
        self._roots: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._items)

    def history(self, response_id: str) -> Messages | None:
        """
        The conversation that ended with C{response_id}, or L{None} when it
        is unknown or expired.
        """
        self._expire()
        item = self._items.get(response_id)
        return None if item is None else item[1]

    def remember(self, request: Mapping[str, Any], history: Messages, response: bytes) -> None:
        """
        Record a finished response: the earlier history, this request's
        input and the response's output.
        """
        if self.max_items <= 0:
            return
        try:
            data = json.loads(response)
            response_id = data["id"]
            answer = responses_to_chat_completion(data)["choices"][0]["message"]
            asked = responses_to_chat_request(
                {k: v for k, v in request.items() if k in ("input", "messages")}
            ).body["messages"]
        except (ProxyError, ValueError, KeyError, IndexError, TypeError):
            return  # a failed or malformed response starts no conversation
        assistant = {k: v for k, v in answer.items() if k in ("role", "content", "tool_calls")}
        self._items[response_id] = (
            self.clock.seconds(), tuple(history) + tuple(asked) + (assistant,)
        )
        previous = request.get("previous_response_id")
        if isinstance(previous, str):
            self._roots[response_id] = self.root(previous)
        self._items.move_to_end(response_id)
        while len(self._items) > self.max_items:
            self._forget(self._items.popitem(last=False)[0])

    def root(self, response_id: str) -> str:
        """
        The first response of the chain C{response_id} ends (itself, when it
        started one or is unknown).
        """
        return self._roots.get(response_id, response_id)

    def _forget(self, response_id: str) -> None:
        self._roots.pop(response_id, None)

    def _expire(self) -> None:
        limit = self.clock.seconds() - self.max_age
        while self._items:
            first = next(iter(self._items.values()))
            if first[0] >= limit:
                break
            self._forget(self._items.popitem(last=False)[0])
