# -*- test-case-name: tests.test_edit_precision -*-
"""
Edit precision tuning, the exchange's part: whether a request is tuned
(decided once, before its first attempt: a failure in its newest turn, or
the one-shot flag its conversation's previous answer set), what
C{x-llmproxy-tuned} says of the attempt that answered, and the answer
watched for a failure that tunes the conversation's next request.

The body work is the L{EDITS} step's (L{llmproxy.adapt.edits}); this
module only feeds it (L{Context.edit}) and keeps the flag in the
conversation's state (L{Sessions}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from llmproxy.adapt.edits import (
    EditTuning, answer_failure, answer_text, describe, find_failure, tuned,
)
from llmproxy.config.edits import EditPrecisionConfig
from llmproxy.exchange.sessions import SessionState, Sessions
from llmproxy.state.base import StateUnavailable
from llmproxy.exchange.transform import Recorder
from llmproxy.routing.conversation import Conversation
from llmproxy.translate.splice import partial_from
from llmproxy.translate.transforms import Transform

__all__ = ["EditWatch", "TUNED_HEADER"]

TUNED_HEADER = b"x-llmproxy-tuned"


@dataclass
class EditWatch:
    """
    One request's edit precision tuning.

    @ivar tuning: the request is tuned, and why; L{None}: it is not.
    @ivar conversation: the conversation whose next request a failing
        answer tunes; L{None}: answers are not watched.
    """

    settings: EditPrecisionConfig
    sessions: Sessions
    frontend: str
    conversation: Conversation | None
    tuning: EditTuning | None = None
    _tap: Recorder | None = field(default=None, repr=False)

    log = Logger()

    @classmethod
    async def start(
        cls, body: Mapping[str, Any], frontend: str, conversation: Conversation | None,
        sessions: Sessions, settings: EditPrecisionConfig, request: IRequest,
    ) -> EditWatch | None:
        """
        The watch of a request; takes the conversation's one-shot flag.
        L{None} when there is nothing to do: its agent is excluded
        (C{exclude_agents_regex}), or it is not tuned and has no
        conversation to watch its answer for.
        """
        excluded = settings.exclude_agents
        if excluded is not None and _excluded(excluded, request):
            return None
        failure = find_failure(body, frontend, settings)
        if failure is None and conversation is None:
            return None
        watch = cls(settings, sessions, frontend, conversation)
        if conversation is not None:
            flagged = await watch._take_flag(conversation.key)
            if failure is None and flagged:
                failure = f"{flagged}, in the previous answer"
        if failure is not None:
            watch.tuning = EditTuning(failure, settings)
        return watch

    async def _take_flag(self, key: str) -> str | None:
        """
        Clear the conversation's one-shot flag atomically; what set it, if
        it was set (one read, and a write only then).
        """
        if not (await self.sessions.get(key)).tune_next:
            return None
        taken: list[SessionState] = []

        def take(state: SessionState) -> SessionState:
            taken.append(state)
            return replace(state, tune_next=False, tune_reason="")

        await self.sessions.update(key, take)
        old = taken[-1] if taken else None  # a store may run the change again
        return (old.tune_reason or "edit failure") if old and old.tune_next else None

    def tuned_text(
        self, body: Mapping[str, Any], model: str, reasoning: re.Pattern[str] | None
    ) -> str | None:
        """
        What C{x-llmproxy-tuned} says of an attempt at C{model} with
        C{body} (the routed body, as the step gets it), or L{None}.
        """
        if self.tuning is None:
            return None
        changes = tuned(body, model, reasoning, self.tuning)
        return describe(changes, self.tuning) if changes else None

    def report(self, request: IRequest, route: str, text: str | None) -> None:
        """
        Say on the reply (and in the log) how the answering attempt was
        tuned; a failed attempt's header does not stay.
        """
        if text is None:
            request.responseHeaders.removeHeader(TUNED_HEADER)
            return
        request.setHeader(TUNED_HEADER, text.encode("ascii", "replace"))
        self.log.info("{route}: tuned {tuned}", route=route, tuned=text)

    def tap(self, transform: Transform) -> Transform:
        """
        C{transform}, keeping what it relays when answers are watched.
        """
        if self.conversation is None:
            return transform
        self._tap = Recorder(transform)
        return self._tap

    async def streamed(self) -> None:
        """
        The stream relayed through the last L{tap} ended well: watch it.
        """
        if self._tap is not None:
            text = partial_from(self.frontend, b"".join(self._tap.sent)).text
            self._tap = None
            await self._answered(text)

    async def whole(self, data: Mapping[str, Any], dialect: str) -> None:
        """
        A whole answer (parsed, in C{dialect}): watch it.
        """
        if self.conversation is not None:
            await self._answered(answer_text(data, dialect))

    async def _answered(self, text: str) -> None:
        failure = answer_failure(text, self.settings) if text else None
        if failure is None or self.conversation is None:
            return

        def flag(state: SessionState) -> SessionState:
            return replace(state, tune_next=True, tune_reason=failure)

        try:
            await self.sessions.update(self.conversation.key, flag)
        except StateUnavailable:
            pass  # the answer stands; the store shows its outage


def _excluded(pattern: re.Pattern[str], request: IRequest) -> bool:
    agent = request.getHeader(b"user-agent")
    return agent is not None and pattern.search(agent.decode("latin-1")) is not None
