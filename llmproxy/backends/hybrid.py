# -*- test-case-name: tests.test_hybrid -*-
"""
C{type: hybrid}: a named hybrid route (behaviour.md section 10).  Its
C{reasoning} and C{execution} selectors and its settings are options; the
router expands a selector naming it into its two phases
(L{llmproxy.routing.resolve}), and the exchange runs them
(L{llmproxy.exchange.hybrid}).  Nothing is ever sent to the backend
itself: it has no upstream of its own.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.web.iweb import IResponse

from llmproxy.backends.registry import BackendContext, BackendType
from llmproxy.config import ApiKey, BackendConfig, BackendKind, BackendOption
from llmproxy.config.error import ConfigError
from llmproxy.config.hybrid import HYBRID, INJECTIONS, SETTING_NAMES, HybridConfig, with_settings
from llmproxy.dialects import CHAT

__all__ = ["HYBRID_TYPE", "HybridBackend"]


class HybridBackend:
    """
    The backend instance of a named hybrid: it lists its C{models}, and
    refuses to send (its routes go to its phases' backends).
    """

    dialect = CHAT
    streams_only = False

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        return fail(RuntimeError(f"hybrid backend {self.config.name!r} sends nothing itself"))

    async def models(self) -> list[str]:
        return list(self.config.models)

    def close(self) -> None:
        pass


def build(config: BackendConfig, context: BackendContext) -> HybridBackend:
    for name in ("reasoning", "execution"):
        if not config.options.get(name):
            raise ConfigError(f"backends.{config.name}.{name}: required for a hybrid backend "
                              "(a selector such as openai:o3-mini)")
    for name in SETTING_NAMES:
        try:
            with_settings(HybridConfig(), {name: config.options.get(name)})
        except ValueError as e:
            raise ConfigError(f"backends.{config.name}.{name}: must be {e}")
    return HybridBackend(config)


_NUMBERS = {"reasoning_injection_probability": float,
            "hybrid_reasoning_force_initial_turns": int,
            "hybrid_reasoning_model_timeout": float}

#: C{type: hybrid}: no URL, no key; the settings default to the C{hybrid}
#: section's.
HYBRID_TYPE = BackendType(BackendKind(HYBRID, uses_url=False, options=(
    BackendOption("reasoning"),
    BackendOption("execution"),
    *(BackendOption(name, _NUMBERS[name]) for name in SETTING_NAMES if name in _NUMBERS),
    BackendOption("hybrid_injection", str, None, choices=INJECTIONS),
)), build)
