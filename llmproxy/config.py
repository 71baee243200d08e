# -*- test-case-name: tests.test_config -*-
"""
Configuration: parsed once, from YAML, the environment and the command line,
into frozen, typed objects.

Precedence is field by field: command line > environment > YAML > defaults.
Every key is optional; an unknown key or a value of the wrong type is a
L{ConfigError} naming the key and the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from llmproxy.backends.keypool import ApiKey
from llmproxy.routing.aliases import AliasRule, compile_alias

BACKEND_TYPES = ("openai", "openai-responses", "mock")
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"
MAX_ENV_KEYS = 99
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """
    The configuration is invalid; the message names the key and the file.
    """


@dataclass(frozen=True)
class BackendConfig:
    """
    One backend instance.

    @ivar keys: the API keys, by name; values never appear in a repr.
    @ivar key_env: the environment variable a user should set when there is
        no key (named in the error a keyless request gets).
    """

    name: str
    type: str
    base_url: str = DEFAULT_OPENAI_URL
    keys: tuple[ApiKey, ...] = ()
    key_env: str | None = None
    timeout: float = 600.0
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0
    models: tuple[str, ...] = ()
    reasoning_models: re.Pattern[str] | None = None
    max_connections: int = 64


@dataclass(frozen=True)
class FailoverRoute:
    """
    A named failover route: a policy and its ordered selector texts.
    """

    policy: str
    elements: tuple[str, ...]


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


@dataclass(frozen=True)
class Config:
    """
    The whole, validated configuration of one llmproxy process.
    """

    listen: str = DEFAULT_LISTEN
    proxy_keys: tuple[str, ...] = field(default=(), repr=False)
    disable_auth: bool = False
    default_backend: str = "openai"
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


class _Reader:
    """
    Typed access to one YAML mapping, with errors naming key and file.
    """

    def __init__(
        self, data: Mapping[str, Any], where: str, source: str,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.data = data
        self.where = where
        self.source = source
        self.environ = environ
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.fail(key, f"expected a number, got {value!r}")
        if kind is float:
            kind = (int, float)
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        if isinstance(value, str):
            value = expand_env(value, self.environ)
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(key, float, default)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}")
        return int(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "expected a list of strings")
        return tuple(expand_env(item, self.environ) for item in value)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.get(key, dict, {})
        return value

    def child(self, key: str, data: Mapping[str, Any]) -> _Reader:
        return _Reader(data, f"{self.where}{key}.", self.source, self.environ)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """
    Expand C{${VAR}} and C{${VAR:-default}} references from the environment.
    An unset variable expands to the empty string (or its default).
    """
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        value = env.get(match.group(1), "")
        if not value and match.group(2) is not None:
            return match.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def _env_refs(text: str) -> list[str]:
    return [m.group(1) for m in _ENV_REF.finditer(text)]


def _backend(
    name: str, reader: _Reader, environ: Mapping[str, str]
) -> BackendConfig:
    raw_type = reader.get("type", str)
    connector = reader.get("connector", str)
    if raw_type and connector and raw_type != connector:
        raise reader.fail("type", f"conflicts with connector {connector!r}")
    btype = raw_type or connector or (name if name in BACKEND_TYPES else "openai")
    if btype not in BACKEND_TYPES:
        raise reader.fail("type", f"unknown type {btype!r}; known: {', '.join(BACKEND_TYPES)}")
    base_url = reader.get("base_url", str)
    api_url = reader.get("api_url", str)
    if base_url and api_url and base_url != api_url:
        raise reader.fail("api_url", "conflicts with base_url")
    url = base_url or api_url
    is_default_openai = name == "openai"
    if not url and btype != "mock":
        url = DEFAULT_OPENAI_URL
        if is_default_openai:
            url = (environ.get("OPENAI_API_BASE_URL") or environ.get("OPENAI_BASE_URL")
                   or DEFAULT_OPENAI_URL)
    keys, key_env = _keys(name, reader, environ, implicit=is_default_openai and btype != "mock")
    pattern_text = reader.get("reasoning_models", str)
    pattern = None
    if pattern_text is not None:
        try:
            pattern = re.compile(pattern_text)
        except re.error as e:
            raise reader.fail("reasoning_models", f"invalid regex {pattern_text!r}: {e}")
    backend = BackendConfig(
        name=name,
        type=btype,
        base_url=(url or "").rstrip("/"),
        keys=keys,
        key_env=key_env,
        timeout=reader.number("timeout", 600.0),
        connect_timeout=reader.number("connect_timeout", 10.0),
        idle_timeout=reader.number("idle_timeout", 300.0),
        models=reader.strings("models"),
        reasoning_models=pattern,
        max_connections=reader.integer("max_connections", 64, minimum=1),
    )
    reader.finish()
    return backend


def _keys(
    name: str, reader: _Reader, environ: Mapping[str, str], implicit: bool
) -> tuple[tuple[ApiKey, ...], str | None]:
    """
    Collect a backend's keys: C{api_key}, C{api_keys}, and for the default
    C{openai} backend the C{OPENAI_API_KEY_1..N} variables (or, when none of
    those exist, C{OPENAI_API_KEY}).
    """
    raw_one = reader.data.get("api_key")
    one = reader.get("api_key", str)
    many = reader.strings("api_keys")
    raw_many = reader.data.get("api_keys") or []
    keys: list[ApiKey] = []
    texts = ([raw_one] if one is not None else []) + list(raw_many)
    values = ([one] if one is not None else []) + list(many)
    for i, (raw, value) in enumerate(zip(texts, values), start=1):
        refs = _env_refs(str(raw))
        key_name = refs[0] if len(refs) == 1 and len(values) == 1 else f"{name}#{i}"
        if value:
            keys.append(ApiKey(key_name, value))
    key_env = None
    if texts:
        refs = [r for t in texts for r in _env_refs(str(t))]
        key_env = refs[0] if refs else None
    if implicit and not texts:
        numbered = [
            ApiKey(f"OPENAI_API_KEY_{i}", environ[f"OPENAI_API_KEY_{i}"])
            for i in range(1, MAX_ENV_KEYS + 1)
            if environ.get(f"OPENAI_API_KEY_{i}")
        ]
        if numbered:
            keys = numbered
        elif environ.get("OPENAI_API_KEY"):
            keys = [ApiKey("OPENAI_API_KEY", environ["OPENAI_API_KEY"])]
        key_env = "OPENAI_API_KEY"
    return tuple(keys), key_env


def _failure(reader: _Reader) -> FailureConfig:
    d = FailureConfig()
    result = FailureConfig(
        max_attempts=reader.integer("max_attempts", d.max_attempts, minimum=1),
        total_timeout_budget=reader.number("total_timeout_budget", d.total_timeout_budget),
        max_wait=reader.number("max_wait", d.max_wait),
        keepalive_after=reader.number("keepalive_after", d.keepalive_after),
        keepalive_interval=reader.number("keepalive_interval", d.keepalive_interval, 0.1),
        default_cooldown=reader.number("default_cooldown", d.default_cooldown),
        max_cooldown=reader.number("max_cooldown", d.max_cooldown),
        auth_cooldown=reader.number("auth_cooldown", d.auth_cooldown),
        quota_cooldown=reader.number("quota_cooldown", d.quota_cooldown),
        circuit_threshold=reader.integer("circuit_threshold", d.circuit_threshold, 1),
        circuit_cooldown=reader.number("circuit_cooldown", d.circuit_cooldown),
    )
    reader.finish()
    return result


def _routes(reader: _Reader, data: Mapping[str, Any]) -> Mapping[str, FailoverRoute]:
    routes: dict[str, FailoverRoute] = {}
    for key, value in data.items():
        if isinstance(value, str):
            routes[str(key)] = FailoverRoute("m", (value,))
            continue
        if not isinstance(value, dict):
            raise reader.fail(f"failover_routes.{key}", "expected a selector or a mapping")
        sub = reader.child(f"failover_routes.{key}", value)
        policy = sub.get("policy", str, "ordered")
        if policy not in ("k", "m", "km", "mk", "ordered"):
            raise sub.fail("policy", f"unknown policy {policy!r}; known: k, m, km, mk, ordered")
        elements = sub.strings("elements")
        if not elements:
            raise sub.fail("elements", "needs at least one selector")
        sub.finish()
        routes[str(key)] = FailoverRoute(policy, elements)
    return MappingProxyType(routes)


def _aliases(reader: _Reader, raw: list[Any]) -> list[AliasRule]:
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise reader.fail(f"model_aliases[{i}]", "expected {pattern, replacement}")
        sub = reader.child(f"model_aliases[{i}]", item)
        pattern = sub.get("pattern", str)
        replacement = sub.get("replacement", str)
        sub.finish()
        if pattern is None or replacement is None:
            raise sub.fail("pattern", "both pattern and replacement are required")
        try:
            rules.append(compile_alias(pattern, replacement))
        except ValueError as e:
            raise sub.fail("pattern", str(e))
    return rules


def load_yaml(path: str) -> Mapping[str, Any]:
    """
    Read a YAML config file; an empty file is an empty mapping.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}")
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def build_config(
    data: Mapping[str, Any],
    overrides: Overrides = Overrides(),
    environ: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> Config:
    """
    Validate YAML data, apply the environment and the command line, and
    return a frozen L{Config}.
    """
    env = os.environ if environ is None else environ
    top = _Reader(data, "", source, env)
    backends_raw = dict(top.mapping("backends"))
    nested_default = backends_raw.pop("default_backend", None)
    if nested_default is not None and not isinstance(nested_default, str):
        raise top.fail("backends.default_backend",
                       f"expected a string, got {type(nested_default).__name__}")
    top_default = top.get("default_backend", str)
    if nested_default is not None and top_default is not None and nested_default != top_default:
        raise top.fail("default_backend", f"conflicts with backends.default_backend {nested_default!r}")
    default_backend = (overrides.default_backend or env.get("LLM_BACKEND") or top_default
                       or nested_default)

    backends: dict[str, BackendConfig] = {}
    for name, body in backends_raw.items():
        if not isinstance(body, dict):
            body = {} if body is None else body
            if not isinstance(body, dict):
                raise top.fail(f"backends.{name}", "expected a mapping")
        backends[str(name)] = _backend(str(name), top.child(f"backends.{name}", body), env)
    if not backends:
        # No backends configured: OpenAI when a key is set, else the demo.
        backends["openai"] = _backend("openai", _Reader({}, "backends.openai.", source, env), env)
        backends["mock"] = BackendConfig(name="mock", type="mock", base_url="")
        if default_backend is None and not backends["openai"].keys:
            default_backend = "mock"
    if default_backend is None:
        default_backend = "openai" if "openai" in backends else next(iter(backends))
    default_name = default_backend.split("|")[0].split(":")[0]
    if default_name not in backends:
        raise ConfigError(
            f"{source}: default_backend: unknown backend {default_name!r}; "
            f"known: {', '.join(sorted(backends))}"
        )

    # Read every YAML value first, so that a key overridden by the command
    # line or the environment still counts as known.
    yaml_host = top.get("host", str)
    yaml_port = top.get("port", int)
    yaml_listen = top.get("listen", str)
    yaml_force_model = top.get("force_model", str)
    yaml_log_level = top.get("log_level", str, "info")
    yaml_disable_auth = bool(top.get("disable_auth", bool, False))
    yaml_workers = top.integer("workers", 1, minimum=1)
    env_port = env.get("APP_PORT")
    if env_port and not env_port.isdigit():
        raise ConfigError(f"APP_PORT: expected a port number, got {env_port!r}")

    host = overrides.host or env.get("APP_HOST") or yaml_host
    port = overrides.port or (int(env_port) if env_port else None) or yaml_port
    listen = overrides.listen or yaml_listen
    if listen and (overrides.host or overrides.port) and overrides.listen:
        raise ConfigError("--listen cannot be combined with --host/--port")
    if overrides.host or overrides.port or not listen:
        if host or port or not listen:
            listen = f"tcp:{port or 8000}:interface={host or '127.0.0.1'}"

    aliases = [compile_or_fail(text) for text in overrides.model_aliases]
    aliases += _aliases(top, top.get("model_aliases", list, []))

    defaults_raw = top.mapping("model_defaults")
    model_defaults: dict[str, Mapping[str, Any]] = {}
    for model, values in defaults_raw.items():
        if not isinstance(values, dict):
            raise top.fail(f"model_defaults.{model}", "expected a mapping of fields")
        model_defaults[str(model)] = MappingProxyType(dict(values))

    uri_params = top.get("uri_params", str, "strict")
    if uri_params not in ("strict", "lenient"):
        raise top.fail("uri_params", "must be strict or lenient")

    # An entry whose variable is unset expands to "": never a valid key.
    proxy_keys = [k for k in top.strings("proxy_keys") if k]
    proxy_keys += [k.strip() for k in env.get("LLMPROXY_KEYS", "").split(",") if k.strip()]
    proxy_keys += list(overrides.proxy_keys)

    log_level = overrides.log_level or yaml_log_level
    if log_level not in ("debug", "info", "warn", "error"):
        raise top.fail("log_level", "must be one of debug, info, warn, error")

    store = top.child("responses_store", top.mapping("responses_store"))
    store_size = store.integer("max_items", 1000)
    store_ttl = store.number("max_age", 3600.0)
    store.finish()

    config = Config(
        listen=listen,
        proxy_keys=tuple(dict.fromkeys(proxy_keys)),
        disable_auth=overrides.disable_auth or yaml_disable_auth,
        default_backend=default_backend,
        force_model=overrides.force_model or env.get("STATIC_ROUTE") or yaml_force_model,
        backends=MappingProxyType(backends),
        model_aliases=tuple(aliases),
        model_defaults=MappingProxyType(model_defaults),
        uri_params=uri_params,
        failover_routes=_routes(top, top.mapping("failover_routes")),
        failure=_failure(top.child("failure_handling", top.mapping("failure_handling"))),
        max_body_bytes=top.integer("max_body_bytes", 32 * 1024 * 1024, minimum=1024),
        log_level=log_level,
        access_log=bool(top.get("access_log", bool, False)),
        responses_store_size=store_size,
        responses_store_ttl=store_ttl,
        workers=overrides.workers or yaml_workers,
    )
    top.finish()
    check_exposure(config)
    return config


def compile_or_fail(text: str) -> AliasRule:
    """
    Parse a C{--model-alias PATTERN=REPLACEMENT} flag.
    """
    from llmproxy.routing.aliases import parse_alias_flag

    try:
        return parse_alias_flag(text)
    except ValueError as e:
        raise ConfigError(f"--model-alias: {e}")


def _is_loopback_address(iface: str) -> bool:
    if iface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(iface.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(description: str) -> bool:
    """
    Whether a Twisted server endpoint string only listens on this machine.
    """
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    iface = None
    for part in rest.replace("\\:", "\x00").split(":"):
        if part.startswith("interface="):
            # The last one wins, as in Twisted's own parser.
            iface = part[len("interface="):].replace("\x00", ":")
    return iface is not None and _is_loopback_address(iface)


def check_exposure(config: Config) -> None:
    """
    Refuse to serve beyond loopback with no proxy keys, unless the user
    explicitly disabled auth.
    """
    if config.proxy_keys or config.disable_auth:
        return
    if not is_loopback_endpoint(config.listen):
        raise ConfigError(
            f"refusing to listen on {config.listen!r} without proxy keys: "
            "set proxy_keys (or LLMPROXY_KEYS, or --proxy-key), listen on "
            "127.0.0.1, or pass --disable-auth to serve without client keys"
        )


def load_config(overrides: Overrides, environ: Mapping[str, str] | None = None) -> Config:
    """
    Load the file named by the overrides (or C{CONFIG_FILE}) and build the
    L{Config}.
    """
    env = os.environ if environ is None else environ
    path = overrides.config_file or env.get("CONFIG_FILE")
    data = load_yaml(path) if path else {}
    return build_config(data, overrides, env, source=path or "<defaults>")


__all__ = [
    "BACKEND_TYPES", "BackendConfig", "Config", "ConfigError", "FailoverRoute",
    "FailureConfig", "Overrides", "build_config", "check_exposure", "expand_env",
    "is_loopback_endpoint", "load_config", "load_yaml",
]
