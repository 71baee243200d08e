# -*- test-case-name: tests.test_planning -*-
"""
The C{session} section: the bounds of the per-conversation state
(C{max_conversations}, C{max_idle}) and the planning phase
(C{session.planning_phase}, behaviour.md section 11).

The strong model's selector is only read here; whether it routes (its
backend, aliases and URI parameters) is checked above the config layer,
at startup (L{llmproxy.exchange.planning.check_strong_model}).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from llmproxy.config.reader import Reader

#: What C{overrides} may set, and the range each number takes.
OVERRIDE_RANGES: Mapping[str, tuple[float, float | None]] = MappingProxyType({
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "thinking_budget": (0, None),
})


@dataclass(frozen=True)
class PlanningConfig:
    """
    The planning phase: a conversation's first turns go to C{strong_model}
    with C{overrides}, until either limit is reached.

    @ivar max_turns: answered requests that end the phase; 0: no limit.
    @ivar max_file_writes: file-writing tool calls that end it; 0: no limit.
    @ivar overrides: body fields set on the strong model's requests
        (C{temperature}, C{top_p}, C{reasoning_effort}, C{thinking_budget}).
    @ivar where: how errors name the strong model's setting (file and key).
    """

    enabled: bool = False
    strong_model: str = ""
    max_turns: int = 10
    max_file_writes: int = 1
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    where: str = field(default="session.planning_phase.strong_model", compare=False)


@dataclass(frozen=True)
class SessionConfig:
    """
    Per-conversation state: at most C{max_conversations}, each forgotten
    after C{max_idle} seconds without a request; and the planning phase.
    """

    max_conversations: int = 10_000
    max_idle: float = 86_400.0
    planning: PlanningConfig = PlanningConfig()


def session_config(top: Reader) -> SessionConfig:
    """
    The C{session} section.
    """
    reader = top.child("session", top.mapping("session"))
    config = SessionConfig(
        max_conversations=reader.integer("max_conversations", 10_000, minimum=1),
        max_idle=reader.number("max_idle", 86_400.0, minimum=1.0),
        planning=_planning(reader.child("planning_phase", reader.mapping("planning_phase"))),
    )
    reader.finish()
    return config


def _planning(reader: Reader) -> PlanningConfig:
    enabled = bool(reader.get("enabled", bool, False))
    strong = reader.get("strong_model", str, "").strip()
    max_turns = reader.integer("max_turns", 10)
    max_writes = reader.integer("max_file_writes", 1)
    overrides = _overrides(reader.child("overrides", reader.mapping("overrides")))
    reader.finish()
    if enabled and not strong:
        raise reader.fail("strong_model", "is required when the planning phase is enabled")
    if max_turns == 0 and max_writes == 0:
        raise reader.fail(f"max_turns and {reader.where}max_file_writes",
                          "both 0, so the phase would never end (0 means no limit; "
                          "set one of them)")
    where = f"{reader.source}: {reader.where}strong_model"
    return PlanningConfig(enabled, strong, max_turns, max_writes, overrides, where)


def _overrides(reader: Reader) -> Mapping[str, Any]:
    values: dict[str, Any] = {}
    for name, (low, high) in OVERRIDE_RANGES.items():
        kind: type = int if name == "thinking_budget" else float
        value = reader.get(name, kind)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            upto = f" to {high:g}" if high is not None else " or more"
            raise reader.fail(name, f"must be from {low:g}{upto}")
        values[name] = value
    effort = reader.get("reasoning_effort", str)
    if effort is not None:
        values["reasoning_effort"] = effort
    reader.finish()
    return MappingProxyType(values)


__all__ = ["OVERRIDE_RANGES", "PlanningConfig", "SessionConfig", "session_config"]
