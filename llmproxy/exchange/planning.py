# -*- test-case-name: tests.test_planning -*-
"""
The planning phase (behaviour.md section 11): a conversation's first
turns go to C{session.planning_phase.strong_model} with its C{overrides},
until C{max_turns} answers or C{max_file_writes} file-writing tool calls;
then the client's own route and parameters serve it again.

L{enter} decides a request's route before the exchange runs; L{Phase}
counts the answer's tool calls (a whole answer's through
C{Call.on_response}, a stream's through a tap on its transform) and, once
the answer went out whole, updates the conversation's state in one atomic
L{Sessions.update}.  Requests without a conversation, and conversations
whose phase is over, pay one check and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from llmproxy.config import Config, ConfigError
from llmproxy.config.session import PlanningConfig
from llmproxy.dialects import RESPONSES
from llmproxy.errors import ProxyError
from llmproxy.exchange.exchange import Call
from llmproxy.exchange.runtime import Runtime
from llmproxy.exchange.sessions import SessionState, Sessions
from llmproxy.state.base import StateUnavailable
from llmproxy.translate.transforms import Wrapped
from llmproxy.routing.resolve import Route, plan_model
from llmproxy.sse import parse_event
from llmproxy.translate.transforms import Transform

#: The tool names that write files (behaviour.md section 11), lower case.
WRITE_TOOLS = frozenset({
    "write_file", "edit_file", "patch_file", "apply_diff", "search_replace",
    "str_replace_editor", "write_to_file", "create_file", "modify_file", "apply_patch",
    "edit_notebook",
})
#: The Responses output items that call a tool by name (Codex's C{apply_patch}
#: is a custom tool).
CALL_ITEMS = frozenset({"function_call", "custom_tool_call"})
#: The response header that shows the phase.
HEADER = b"x-llmproxy-phase"

_NAME = b'"name"'
_ERROR = b'"error"'


def is_file_write(name: object) -> bool:
    """
    Whether a tool of this name writes files: one of L{WRITE_TOOLS}, in
    any (ASCII) case.
    """
    return isinstance(name, str) and name.isascii() and name.lower() in WRITE_TOOLS


def answer_writes(answer: Any) -> int:
    """
    The file-writing tool calls in a whole answer, Chat Completions
    (C{choices[].message.tool_calls}, the legacy C{function_call}) or
    Responses (C{output[]} call items).
    """
    if not isinstance(answer, dict):
        return 0
    count = 0
    for choice in _dicts(answer.get("choices")):
        message = _dict(choice.get("message"))
        count += sum(is_file_write(_dict(c.get("function")).get("name"))
                     for c in _dicts(message.get("tool_calls")))
        count += is_file_write(_dict(message.get("function_call")).get("name"))
    return count + sum(is_file_write(item.get("name")) for item in _dicts(answer.get("output"))
                       if item.get("type") in CALL_ITEMS)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class WriteTap(Wrapped):
    """
    A stream transform relaying through another while it counts the
    file-writing tool calls of the upstream's events (either dialect): a
    chat tool call when its name first shows, a Responses call item when
    it is done.  Only events that name something (or carry an error) are
    parsed.

    @ivar ended: the stream ended whole (its transform's C{end} passed).
    @ivar failed: it ended in an error (in-band, the upstream's or ours).
    """

    def __init__(self, inner: Transform) -> None:
        super().__init__(inner)
        self.writes = 0
        self.ended = False
        self.failed = False
        self._named: set[tuple[object, object]] = set()

    def events(self, raw: list[bytes]) -> bytes:
        for item in raw:
            if _NAME in item or _ERROR in item:
                self._look(item)
        return self.inner.events(raw)

    def _look(self, item: bytes) -> None:
        event = parse_event(item)
        try:
            data = event.json() if event is not None and not event.done else None
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind in ("response.failed", "error") or ("error" in data and "choices" not in data
                                                    and data["error"] is not None):
            self.failed = True
        elif kind == "response.output_item.done":
            item_data = _dict(data.get("item"))
            if item_data.get("type") in CALL_ITEMS:
                self.writes += is_file_write(item_data.get("name"))
        else:
            for choice in _dicts(data.get("choices")):
                self._chat_delta(choice.get("index", 0), _dict(choice.get("delta")))

    def _chat_delta(self, index: object, delta: Mapping[str, Any]) -> None:
        calls = [(c.get("index", 0), _dict(c.get("function")).get("name"))
                 for c in _dicts(delta.get("tool_calls"))]
        legacy = _dict(delta.get("function_call")).get("name")
        if legacy:
            calls.append((-1, legacy))
        for call, name in calls:
            if name and (index, call) not in self._named:
                self._named.add((index, call))
                self.writes += is_file_write(name)

    def end(self) -> bytes:
        out = self.inner.end()
        self.ended = True
        return out

    def error(self, error: ProxyError) -> bytes:
        self.failed = True
        return self.inner.error(error)


@dataclass
class Phase:
    """
    One request of a conversation in its planning phase.

    @ivar route: where the request goes (the strong model's route, or the
        client's own when it already asks for the strong model).
    @ivar state: the conversation's state when the request came.
    """

    sessions: Sessions
    key: str
    limits: PlanningConfig
    route: Route
    state: SessionState
    taps: list[WriteTap] = field(default_factory=list)
    whole: int | None = None
    log = Logger()

    @property
    def header(self) -> bytes:
        """
        C{planning (turn 3/10, writes 0/1)}; a limit of 0 (none) is left out.
        """
        turns, writes = self.limits.max_turns, self.limits.max_file_writes
        turn = f"turn {self.state.turns + 1}" + (f"/{turns}" if turns else "")
        wrote = f"writes {self.state.writes}" + (f"/{writes}" if writes else "")
        return f"planning ({turn}, {wrote})".encode("ascii")

    def tap(self, transform: Transform) -> Transform:
        """
        Count an attempt's streamed answer (for C{Call.tap}).
        """
        tap = WriteTap(transform)
        self.taps.append(tap)
        return tap

    def answered(self, data: bytes) -> None:
        """
        Count a whole answer (in the client's dialect).
        """
        try:
            self.whole = answer_writes(json.loads(data))
        except ValueError:
            self.whole = 0

    def writes(self) -> int | None:
        """
        The file writes of the answer that went out whole; L{None} when
        none did.
        """
        if self.whole is not None:
            return self.whole
        done = [t for t in self.taps if t.ended and not t.failed]
        return done[-1].writes if done else None

    async def finish(self) -> None:
        """
        After the request: one more turn and its writes, and the phase over
        once a limit is reached; nothing when no answer went out whole.
        """
        writes = self.writes()
        if writes is None:
            return
        limits = self.limits

        def change(state: SessionState) -> SessionState:
            turns, total = state.turns + 1, state.writes + writes
            over = (limits.max_turns > 0 and turns >= limits.max_turns) or (
                limits.max_file_writes > 0 and total >= limits.max_file_writes)
            return replace(state, turns=turns, writes=total,
                           planning_over=state.planning_over or over)

        try:
            await self.sessions.update(self.key, change)
        except CancelledError:
            raise
        except StateUnavailable:
            pass  # the answer went out; the store logged its outage once
        except Exception:
            # The answer went out; a store that failed must not fail it.
            self.log.failure("planning phase: the conversation's state was not updated")


async def enter(runtime: Runtime, call: Call) -> Phase | None:
    """
    The planning phase of C{call}, if its conversation is in one: its
    route, with C{call}'s taps set to count the answer.  L{None} (route as
    usual) otherwise.
    """
    limits = runtime.config.session.planning
    conversation = call.conversation
    if not limits.enabled or conversation is None:
        return None
    state = await runtime.sessions.get(conversation.key)
    if state.planning_over:
        return None
    router = runtime.router
    own = router.resolve(call.body, call.frontend)
    strong = router.resolve(planned_body(call.body, call.frontend, limits), call.frontend)
    route = own if _same_model(own, strong) else Route(
        tuple(replace(t, changed=True) for t in strong.targets), strong.policy)
    phase = Phase(runtime.sessions, conversation.key, limits, route, state)
    call.tap = phase.tap
    if not call.stream:
        before = call.on_response

        def on_response(data: bytes) -> None:
            if before is not None:
                before(data)
            phase.answered(data)

        call.on_response = on_response
    return phase


def planned_body(
    body: Mapping[str, Any], frontend: str, limits: PlanningConfig
) -> dict[str, Any]:
    """
    The client's body for the strong model: its selector as the model, the
    overrides on top (the selector's own URI parameters still win, as they
    do over any body).
    """
    out = dict(body)
    out["model"] = limits.strong_model
    for name, value in limits.overrides.items():
        if name == "reasoning_effort" and frontend == RESPONSES:
            out["reasoning"] = {**_dict(out.get("reasoning")), "effort": value}
        else:
            out[name] = value
    return out


def _same_model(own: Route, strong: Route) -> bool:
    a, b = own.targets[0], strong.targets[0]
    return (a.backend, a.model) == (b.backend, b.model)


def check_strong_model(config: Config) -> None:
    """
    Fail when the planning phase is on and its strong model does not route
    (an unknown backend, a bad selector or URI parameter).

    @raise ConfigError: naming the setting and the file.
    """
    limits = config.session.planning
    if not limits.enabled:
        return
    try:
        plan_model(config, limits.strong_model)
    except ProxyError as e:
        raise ConfigError(f"{limits.where}: {e.message}")


__all__ = ["CALL_ITEMS", "HEADER", "WRITE_TOOLS", "Phase", "WriteTap", "answer_writes",
           "check_strong_model", "enter", "is_file_write", "planned_body"]
