# -*- test-case-name: tests.test_store,tests.test_responses_api -*-
"""
Recent Responses-API conversations, so C{previous_response_id} works on
backends that store nothing (chat backends, or C{store: false}).

Each produced response id maps to the whole conversation up to and
including that response, as Chat Completions messages, and to the first
response of its chain.  The records live in the shared state store
(L{llmproxy.state}: this process's memory by default), bounded by count
and by age; a request that names one awaits it (a store that does not
answer is a 503, L{llmproxy.state.StateUnavailable}).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmproxy.errors import ProxyError
from llmproxy.state import Bounds, MemoryState, StateStore, StateUnavailable, StoredResponse
from llmproxy.translate import responses_to_chat_completion, responses_to_chat_request

Messages = tuple[Mapping[str, Any], ...]


class ResponseStore:
    """
    Responses by id, in a L{StateStore}.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, max_items: int = 1000, max_age: float = 3600.0,
                 state: StateStore | None = None) -> None:
        self.clock = clock
        self.bounds = Bounds(max_items, max_age)
        self.state: StateStore = state if state is not None else MemoryState(clock)

    async def find(self, response_id: str) -> StoredResponse | None:
        """
        The response C{response_id}: its conversation and its chain's root;
        L{None} when it is unknown or expired.

        @raise StateUnavailable: the store does not answer.
        """
        return await self.state.get_response(response_id, self.bounds)

    def remember(self, request: Mapping[str, Any], previous: StoredResponse | None,
                 response: bytes) -> Deferred[None] | None:
        """
        Record a finished response: the earlier history (C{previous}'s), this
        request's input and the response's output.  A store that fails
        loses it (and says so in its status).

        @return: the write still under way, for a whole answer to wait for
            (never failing, bounded by the store's wait), so that the
            client cannot name the response to another process before it
            is there; L{None} when there is nothing to wait for (written
            already, nothing to write, or the store is down).
        """
        if self.bounds.max_items <= 0:
            return None
        try:
            data = json.loads(response)
            response_id = data["id"]
            answer = responses_to_chat_completion(data)["choices"][0]["message"]
            asked = responses_to_chat_request(
                {k: v for k, v in request.items() if k in ("input", "messages")}
            ).body["messages"]
        except (ProxyError, ValueError, KeyError, IndexError, TypeError):
            return None  # a failed or malformed response starts no conversation
        if not isinstance(response_id, str):
            return None
        assistant = {k: v for k, v in answer.items() if k in ("role", "content", "tool_calls")}
        earlier = request.get("previous_response_id")
        root = previous.root if previous is not None else (
            earlier if isinstance(earlier, str) else response_id)
        history = previous.messages if previous is not None else ()
        record = StoredResponse(history + tuple(asked) + (assistant,), root,
                                self.clock.seconds())
        written = Deferred.fromCoroutine(self._put(response_id, record))
        return None if written.called or not self.state.status().up else written

    async def _put(self, response_id: str, record: StoredResponse) -> None:
        try:
            await self.state.put_response(response_id, record, self.bounds)
        except CancelledError:
            raise
        except StateUnavailable:
            pass  # the store logged its outage and shows it in its status
        except Exception:
            self.log.failure("the response {id} was not stored", id=response_id)


__all__ = ["Messages", "ResponseStore"]
