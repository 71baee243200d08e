# -*- test-case-name: tests.test_config,tests.test_routing_aliases -*-
"""
The frozen, typed configuration every other layer reads.

Nothing here reads a file or the environment (that is L{llmproxy.config.load})
and nothing here imports the rest of llmproxy: config is a leaf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from llmproxy.config.session import SessionConfig
from llmproxy.config.state import StateConfig
from llmproxy.config.edits import EditPrecisionConfig

if TYPE_CHECKING:
    from llmproxy.config.capture import CaptureConfig

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"
#: The name of the backend the OpenAI SDK's environment variables configure
#: (C{OPENAI_API_KEY}, C{OPENAI_BASE_URL}), and the default backend: an
#: instance name, not a type.
OPENAI_BACKEND = "openai"


@dataclass(frozen=True)
class ApiKey:
    """
    One upstream API key.

    @ivar name: how the key is shown, e.g. C{openai#1} or C{OPENAI_API_KEY_3}.
    @ivar value: the secret; never shown anywhere.
    """

    name: str
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"ApiKey({self.name!r})"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class BackendOption:
    """
    A setting that only one backend type reads, declared by that type.

    @ivar type: C{str}, C{int}, C{float}, C{bool} or C{tuple} (a YAML
        list of strings, each C{${VAR}}- and C{~}-expanded, read as a
        tuple); strings get C{${VAR}} expansion like every other string.
    @ivar default: the value when the setting is absent.
    @ivar choices: the values a C{str} setting may take, when limited.
    """

    name: str
    type: type[Any] = str
    default: Any = None
    choices: tuple[str, ...] = ()


#: A backend type's own keys: (backend name, its options, the environment)
#: -> its keys.
KeysHook = Callable[[str, Mapping[str, Any], Mapping[str, str]], tuple[ApiKey, ...]]


@dataclass(frozen=True)
class BackendKind:
    """
    The configuration schema of one backend type, as its registry entry
    declares it (the loader receives the kinds; config knows none itself).

    Every type accepts the common backend settings of L{BackendConfig}.

    @ivar uses_url: whether it talks to its C{base_url} (only then is that
        checked for pointing back at llmproxy).
    @ivar default_url: the base URL when none is configured.
    @ivar openai_env: whether the backend named L{OPENAI_BACKEND} of this
        type takes its keys and URL from the OpenAI SDK's environment
        variables when the file gives none.
    @ivar demo: whether the demo configuration (no backends configured) has
        a backend of this type, named after it.
    @ivar options: the type's own settings, stored in
        L{BackendConfig.options}.
    @ivar loopback_only: whether its accounts are a person's subscription,
        which llmproxy serves on loopback only unless the config says
        C{allow_remote_codex: true} (shared accounts get banned).
    @ivar keys: for a type whose credentials are not API keys in the file
        (C{api_key}, C{api_keys}: then not accepted), what its keys are,
        from the backend's name, its L{options} and the environment; they
        rotate, cool down and show in the status like API keys.
    """

    name: str
    uses_url: bool = True
    default_url: str = ""
    openai_env: bool = False
    demo: bool = False
    options: tuple[BackendOption, ...] = ()
    loopback_only: bool = False
    keys: KeysHook | None = None


@dataclass(frozen=True)
class BackendConfig:
    """
    One backend instance.

    @ivar type: the name of its L{BackendKind}.
    @ivar keys: the API keys, by name; values never appear in a repr.
    @ivar key_env: the environment variable a user should set when there is
        no key (named in the error a keyless request gets).
    @ivar options: the values of the type's L{BackendKind.options}, by name.
    """

    name: str
    type: str
    base_url: str = ""
    keys: tuple[ApiKey, ...] = ()
    key_env: str | None = None
    timeout: float = 600.0
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    models: tuple[str, ...] = ()
    reasoning_models: re.Pattern[str] | None = None
    max_connections: int = 64
    #: Per-backend overrides of L{FailureConfig}'s stream limits (L{None}:
    #: the global value).
    first_token_timeout: float | None = None
    reasoning_first_token_timeout: float | None = None
    stream_idle_timeout: float | None = None
    #: How a stream broken elsewhere is continued here: C{prefill} (the
    #: partial answer sent as a final assistant message) or C{restart}.
    continuation: str = "restart"
    #: Prompt-cache affinity: C{conversation} (a conversation sticks to
    #: one key while it is free, L{llmproxy.routing.affinity}) or C{off}.
    affinity: str = "conversation"
    #: Fields added to a prefill request (its top level), and to its final
    #: assistant message, as the server wants them (vLLM:
    #: C{continue_final_message}; DeepSeek, Mistral: C{prefix}).
    prefill_params: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    prefill_message: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )


@dataclass(frozen=True)
class FailoverRoute:
    """
    A named failover route: a policy and its ordered selector texts.
    """

    policy: str
    elements: tuple[str, ...]
    continuation: bool = True


@dataclass(frozen=True)
class FailureConfig:
    """
    Retry, cooldown and timeout budgets.
    """

    max_attempts: int = 5
    total_timeout_budget: float = 90.0
    max_wait: float = 10.0
    keepalive_after: float = 5.0
    keepalive_interval: float = 5.0
    default_cooldown: float = 5.0
    max_cooldown: float = 60.0
    auth_cooldown: float = 3600.0
    quota_cooldown: float = 3600.0
    circuit_threshold: int = 5
    circuit_cooldown: float = 30.0
    circuit_probe_interval: float = 5.0
    #: Streams: the longest wait from an attempt's send to its answer's
    #: first content event (0: off), for ordinary and for reasoning models,
    #: and the longest gap between events once content started.
    first_token_timeout: float = 15.0
    reasoning_first_token_timeout: float = 300.0
    stream_idle_timeout: float = 30.0
    #: Whether a stream broken after content reached the client is
    #: continued on the route's next target.
    continuation: bool = True
    #: Same-target retries (see L{llmproxy.exchange.retries}).
    retry_same_max_wait: float = 3.0
    retries_per_target: int = 1
    retry_backoff_base: float = 0.25
    #: 4xx statuses that fail over; error codes that move to the next element.
    extra_failover_statuses: tuple[int, ...] = ()
    extra_failover_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasRule:
    """
    One C{model_aliases} rewrite rule; build it with L{compile_alias}.

    @ivar pattern: the compiled pattern, applied with C{pattern.match}.
    @ivar replacement: the C{match.expand} template producing the new
        selector text.
    """

    pattern: re.Pattern[str]
    replacement: str


@dataclass(frozen=True)
class Config:
    """
    The whole, validated configuration of one llmproxy process.
    """

    listen: str = DEFAULT_LISTEN
    proxy_keys: tuple[str, ...] = field(default=(), repr=False)
    disable_auth: bool = False
    default_backend: str = OPENAI_BACKEND
    force_model: str | None = None
    backends: Mapping[str, BackendConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
    model_aliases: tuple[AliasRule, ...] = ()
    model_defaults: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    uri_params: str = "strict"
    failover_routes: Mapping[str, FailoverRoute] = field(
        default_factory=lambda: MappingProxyType({})
    )
    failure: FailureConfig = FailureConfig()
    max_body_bytes: int = 32 * 1024 * 1024
    log_level: str = "info"
    access_log: bool = False
    responses_store_size: int = 1000
    responses_store_ttl: float = 3600.0
    workers: int = 1
    allow_remote_codex: bool = False
    capture: CaptureConfig | None = None
    session: SessionConfig = SessionConfig()
    state: StateConfig = StateConfig()
    edit_precision: EditPrecisionConfig = EditPrecisionConfig()
    warnings: tuple[str, ...] = ()

    @property
    def auth_enabled(self) -> bool:
        """
        Whether clients must present one of L{proxy_keys}.
        """
        return bool(self.proxy_keys) and not self.disable_auth


@dataclass(frozen=True)
class Overrides:
    """
    What the command line says; L{None} means "not given".
    """

    config_file: str | None = None
    listen: str | None = None
    host: str | None = None
    port: int | None = None
    default_backend: str | None = None
    force_model: str | None = None
    proxy_keys: tuple[str, ...] = field(default=(), repr=False)
    disable_auth: bool = False
    log_level: str | None = None
    model_aliases: tuple[str, ...] = ()
    workers: int | None = None
    capture_file: str | None = None


def _check_template(compiled: re.Pattern[str], replacement: str) -> None:
    """
    Make sure C{replacement} is a valid template for C{compiled}: no
    reference to a missing group and no bad escape.  Substituting into an
    empty string parses the template without needing a match.

    @raise ValueError: if the template is invalid.
    """
    try:
        compiled.sub(replacement, "")
    except (re.error, IndexError) as e:
        raise ValueError(
            f"invalid model alias replacement {replacement!r} "
            f"for pattern {compiled.pattern!r}: {e}"
        ) from None


def compile_alias(pattern: str, replacement: str) -> AliasRule:
    """
    Compile one alias rule.

    @param pattern: the regular expression, matched at the start of the
        model name.
    @param replacement: the selector text to produce; may use C{\\1} and
        C{\\g<name>}.
    @raise ValueError: naming the bad pattern and the regex error, or the
        bad replacement; also for an empty pattern (use C{.*} to match
        everything) or an empty replacement.
    """
    if not pattern:
        raise ValueError("model alias pattern is empty (use '.*' to match any model)")
    if not replacement:
        raise ValueError(f"model alias replacement for pattern {pattern!r} is empty")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid model alias pattern {pattern!r}: {e}") from None
    _check_template(compiled, replacement)
    return AliasRule(pattern=compiled, replacement=replacement)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def parse_alias_flag(text: str) -> AliasRule:
    """
    Parse a C{--model-alias PATTERN=REPLACEMENT} command-line value.

    The separator is the first C{=} whose left side is a complete regular
    expression.  An C{=} inside a regex construct such as C{(?=...)},
    C{(?<=...)}, C{(?P=name)} or C{[=]} leaves an incomplete regex on its
    left and so is skipped, and the replacement may itself contain C{=}
    (C{gpt-4o=openai:gpt-4o?temperature=0.2}).  Write C{\\=} for a literal
    C{=} at the top level of a pattern.

    @raise ValueError: if there is no C{=}, no C{=} ends a valid pattern,
        or L{compile_alias} rejects the parts.
    """
    positions = [i for i, c in enumerate(text) if c == "="]
    if not positions:
        raise ValueError(f"expected PATTERN=REPLACEMENT, got {text!r}")
    for i in positions:
        if _compiles(text[:i]):
            return compile_alias(text[:i], text[i + 1 :])
    # No '=' ends a valid regex: report the regex error of the widest pattern.
    last = positions[-1]
    return compile_alias(text[:last], text[last + 1 :])
