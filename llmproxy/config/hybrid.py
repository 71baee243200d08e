# -*- test-case-name: tests.test_hybrid_pure -*-
"""
The C{hybrid} section: the defaults of every hybrid route (behaviour.md
section 10), which a named C{type: hybrid} backend and a selector's
parameters may override one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from llmproxy.config.reader import Reader

#: The selector prefix C{hybrid:[...]}, and the backend type of named hybrids.
HYBRID = "hybrid"
#: Where the captured reasoning goes in the execution request.
INJECTIONS = ("system", "user")


@dataclass(frozen=True)
class HybridConfig:
    """
    How a hybrid route runs.

    @ivar probability: the chance that a request gets the reasoning phase
        (C{reasoning_injection_probability}).
    @ivar force_turns: a conversation's first turns always get it
        (C{hybrid_reasoning_force_initial_turns}).
    @ivar timeout: the reasoning phase's limit in seconds
        (C{hybrid_reasoning_model_timeout}).
    @ivar injection: C{system} (a system message) or C{user} (a prefix of
        the last user message) (C{hybrid_injection}).
    """

    probability: float = 1.0
    force_turns: int = 4
    timeout: float = 60.0
    injection: str = "system"


#: The YAML (and selector parameter) name of each setting.
SETTING_NAMES = {
    "reasoning_injection_probability": "probability",
    "hybrid_reasoning_force_initial_turns": "force_turns",
    "hybrid_reasoning_model_timeout": "timeout",
    "hybrid_injection": "injection",
}


def setting_value(name: str, value: Any) -> Any:
    """
    One setting's typed value; raises L{ValueError} saying what it takes.
    """
    field = SETTING_NAMES[name]
    if field == "injection":
        if value not in INJECTIONS:
            raise ValueError(f"one of {', '.join(INJECTIONS)}")
        return value
    kind, low, high, what = {
        "force_turns": (int, 0, None, "an integer of at least 0"),
        "probability": (float, 0.0, 1.0, "a number from 0 to 1"),
        "timeout": (float, 0.0, None, "a number above 0"),
    }[field]
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(what)
    if isinstance(value, bool) or number < low or (high is not None and number > high) \
            or (field == "timeout" and number == 0):
        raise ValueError(what)
    return number


def with_settings(base: HybridConfig, values: Mapping[str, Any]) -> HybridConfig:
    """
    C{base} with the settings C{values} names (YAML or selector names;
    L{None} values are not set).
    """
    changes = {SETTING_NAMES[name]: setting_value(name, value)
               for name, value in values.items() if name in SETTING_NAMES and value is not None}
    return replace(base, **changes) if changes else base


def hybrid_config(top: Reader) -> HybridConfig:
    """
    The C{hybrid} section (every setting optional).
    """
    reader = top.child("hybrid", top.mapping("hybrid"))
    d = HybridConfig()
    probability = reader.number("reasoning_injection_probability", d.probability)
    if probability > 1.0:
        raise reader.fail("reasoning_injection_probability", "must be from 0 to 1")
    injection = reader.get("hybrid_injection", str, d.injection)
    if injection not in INJECTIONS:
        raise reader.fail("hybrid_injection", f"expected one of {', '.join(INJECTIONS)}, "
                                              f"got {injection!r}")
    config = HybridConfig(
        probability=probability,
        force_turns=reader.integer("hybrid_reasoning_force_initial_turns", d.force_turns),
        timeout=reader.number("hybrid_reasoning_model_timeout", d.timeout, minimum=0.001),
        injection=injection,
    )
    reader.finish()
    return config


__all__ = [
    "HYBRID", "HybridConfig", "INJECTIONS", "SETTING_NAMES", "hybrid_config", "setting_value",
    "with_settings",
]
