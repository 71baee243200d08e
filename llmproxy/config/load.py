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
import json
import os
import re
from dataclasses import dataclass, field, replace
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
    """
    Build one backend from its C{backends.NAME} section.
    """
    btype = _backend_type(name, reader)
    base_url = _base_url(name, btype, reader, environ)
    keys, key_env = _keys(name, reader, environ, implicit=name == "openai" and btype != "mock")
    reasoning_models = _reasoning_models(reader)
    backend = BackendConfig(
        name=name,
        type=btype,
        base_url=base_url,
        keys=keys,
        key_env=key_env,
        timeout=reader.number("timeout", 600.0),
        connect_timeout=reader.number("connect_timeout", 10.0),
        idle_timeout=reader.number("idle_timeout", 300.0),
        models=reader.strings("models"),
        reasoning_models=reasoning_models,
        max_connections=reader.integer("max_connections", 64, minimum=1),
    )
    reader.finish()
    return backend


def _backend_type(name: str, reader: _Reader) -> str:
    """
    The backend's connector: C{type}, or its synonym C{connector}, else the
    backend's own name when that is a known type, else C{openai}.
    """
    raw_type = reader.get("type", str)
    connector = reader.get("connector", str)
    if raw_type and connector and raw_type != connector:
        raise reader.fail("type", f"conflicts with connector {connector!r}")
    btype = raw_type or connector or (name if name in BACKEND_TYPES else "openai")
    if btype not in BACKEND_TYPES:
        raise reader.fail("type", f"unknown type {btype!r}; known: {', '.join(BACKEND_TYPES)}")
    return btype


def _base_url(
    name: str, btype: str, reader: _Reader, environ: Mapping[str, str]
) -> str:
    """
    The backend's base URL without a trailing slash: C{base_url}, or its
    synonym C{api_url}.  Without one, a non-mock backend talks to OpenAI,
    and the default C{openai} backend takes C{OPENAI_API_BASE_URL} (else
    C{OPENAI_BASE_URL}) first.
    """
    base_url = reader.get("base_url", str)
    api_url = reader.get("api_url", str)
    if base_url and api_url and base_url != api_url:
        raise reader.fail("api_url", "conflicts with base_url")
    url = base_url or api_url
    if not url and btype != "mock":
        url = DEFAULT_OPENAI_URL
        if name == "openai":
            url = (environ.get("OPENAI_API_BASE_URL") or environ.get("OPENAI_BASE_URL")
                   or DEFAULT_OPENAI_URL)
    return (url or "").rstrip("/")


def _reasoning_models(reader: _Reader) -> re.Pattern[str] | None:
    """
    The compiled C{reasoning_models} regex, if any.
    """
    pattern_text = reader.get("reasoning_models", str)
    if pattern_text is None:
        return None
    try:
        return re.compile(pattern_text)
    except re.error as e:
        raise reader.fail("reasoning_models", f"invalid regex {pattern_text!r}: {e}")


def _keys(
    name: str, reader: _Reader, environ: Mapping[str, str], implicit: bool
) -> tuple[tuple[ApiKey, ...], str | None]:
    """
    Collect a backend's keys: C{api_key}, C{api_keys}, and for the default
    C{openai} backend the C{OPENAI_API_KEY_1..N} variables (or, when none of
    those exist, C{OPENAI_API_KEY}).

    @return: the keys, and the environment variable to name when there are
        none.
    """
    texts, values = _key_entries(reader)
    if implicit and not texts:
        return _openai_env_keys(environ), "OPENAI_API_KEY"
    return _named_keys(name, texts, values), _first_env_ref(texts)


def _key_entries(reader: _Reader) -> tuple[list[str], list[str]]:
    """
    Read C{api_key} then C{api_keys}.

    @return: each entry as written (with its C{${VAR}} references), and the
        same entries expanded.
    """
    raw_one = reader.data.get("api_key")
    one = reader.get("api_key", str)
    many = reader.strings("api_keys")
    raw_many = reader.data.get("api_keys") or []
    if one is None:
        return list(raw_many), list(many)
    return [raw_one, *raw_many], [one, *many]


def _named_keys(name: str, texts: list[str], values: list[str]) -> tuple[ApiKey, ...]:
    """
    The non-empty keys, each named after its variable when it is the only
    key and comes from exactly one variable, else C{NAME#i}; a key's name
    never holds its value.
    """
    keys: list[ApiKey] = []
    for i, (text, value) in enumerate(zip(texts, values), start=1):
        refs = _env_refs(text)
        key_name = refs[0] if len(refs) == 1 and len(values) == 1 else f"{name}#{i}"
        if value:
            keys.append(ApiKey(key_name, value))
    return tuple(keys)


def _first_env_ref(texts: list[str]) -> str | None:
    """
    The first variable any of the key entries refers to, if any.
    """
    refs = [r for t in texts for r in _env_refs(t)]
    return refs[0] if refs else None


def _openai_env_keys(environ: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """
    The keys of the default C{openai} backend from the environment: the
    numbered C{OPENAI_API_KEY_1..N} when any is set, else C{OPENAI_API_KEY}.
    """
    numbered = tuple(
        ApiKey(f"OPENAI_API_KEY_{i}", environ[f"OPENAI_API_KEY_{i}"])
        for i in range(1, MAX_ENV_KEYS + 1)
        if environ.get(f"OPENAI_API_KEY_{i}")
    )
    if numbered:
        return numbered
    if environ.get("OPENAI_API_KEY"):
        return (ApiKey("OPENAI_API_KEY", environ["OPENAI_API_KEY"]),)
    return ()


def _failure(reader: _Reader) -> FailureConfig:
    """
    C{failure_handling}: retry, cooldown and timeout budgets.
    """
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
    """
    C{failover_routes}: each a bare selector, or a policy and its elements.
    """
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
    """
    The file's C{model_aliases} rules, in order.
    """
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


@dataclass(frozen=True)
class _TopLevel:
    """
    The top-level YAML values that the environment or the command line may
    override, as the file gives them.
    """

    host: str | None
    port: int | None
    listen: str | None
    force_model: str | None
    log_level: str
    disable_auth: bool
    workers: int


def _top_level(top: _Reader) -> _TopLevel:
    """
    Read every overridable top-level YAML value up front, so that a key
    overridden by the command line or the environment still counts as
    known.
    """
    return _TopLevel(
        host=top.get("host", str),
        port=top.get("port", int),
        listen=top.get("listen", str),
        force_model=top.get("force_model", str),
        log_level=top.get("log_level", str, "info"),
        disable_auth=bool(top.get("disable_auth", bool, False)),
        workers=top.integer("workers", 1, minimum=1),
    )


def _backends_and_default(
    top: _Reader, overrides: Overrides, env: Mapping[str, str]
) -> tuple[Mapping[str, BackendConfig], str]:
    """
    The backends, and the default backend selector, which must name one of
    them.
    """
    sections, nested_default = _backend_sections(top)
    requested = _requested_default(top, nested_default, overrides, env)
    backends = _backends(top, sections, env)
    default_backend = _default_backend(requested, backends, top.source, demo=not sections)
    return MappingProxyType(backends), default_backend


def _backend_sections(top: _Reader) -> tuple[dict[Any, Any], str | None]:
    """
    Split C{backends} into the backend sections and the
    C{backends.default_backend} it may hold.
    """
    sections = dict(top.mapping("backends"))
    nested_default = sections.pop("default_backend", None)
    if nested_default is not None and not isinstance(nested_default, str):
        raise top.fail("backends.default_backend",
                       f"expected a string, got {type(nested_default).__name__}")
    return sections, nested_default


def _requested_default(
    top: _Reader, nested_default: str | None, overrides: Overrides, env: Mapping[str, str]
) -> str | None:
    """
    The default backend selector asked for, if any: the command line, else
    C{LLM_BACKEND}, else the top-level or nested C{default_backend} (which
    must agree).
    """
    top_default = top.get("default_backend", str)
    if nested_default is not None and top_default is not None and nested_default != top_default:
        raise top.fail("default_backend",
                       f"conflicts with backends.default_backend {nested_default!r}")
    return overrides.default_backend or env.get("LLM_BACKEND") or top_default or nested_default


def _backends(
    top: _Reader, sections: Mapping[Any, Any], env: Mapping[str, str]
) -> dict[str, BackendConfig]:
    """
    The configured backends, in file order; an empty section is a backend
    with every default.  With none configured, L{_demo_backends}.
    """
    if not sections:
        return _demo_backends(top, env)
    backends: dict[str, BackendConfig] = {}
    for name, body in sections.items():
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise top.fail(f"backends.{name}", "expected a mapping")
        backends[str(name)] = _backend(str(name), top.child(f"backends.{name}", body), env)
    return backends


def _demo_backends(top: _Reader, env: Mapping[str, str]) -> dict[str, BackendConfig]:
    """
    The backends when none are configured: the default C{openai} backend
    (keyed from the environment, if at all) and C{mock}.
    """
    return {
        "openai": _backend("openai", top.child("backends.openai", {}), env),
        "mock": BackendConfig(name="mock", type="mock", base_url=""),
    }


def _default_backend(
    requested: str | None, backends: Mapping[str, BackendConfig], source: str, demo: bool
) -> str:
    """
    The default backend selector: the one requested, else C{mock} for the
    demo backends when OpenAI has no key, else C{openai} when it exists,
    else the first backend.  Its backend must exist.
    """
    if requested is None:
        if demo and not backends["openai"].keys:
            requested = "mock"
        else:
            requested = "openai" if "openai" in backends else next(iter(backends))
    name = requested.split("|")[0].split(":")[0]
    if name not in backends:
        raise ConfigError(
            f"{source}: default_backend: unknown backend {name!r}; "
            f"known: {', '.join(sorted(backends))}"
        )
    return requested


def _listen(yaml_values: _TopLevel, overrides: Overrides, env: Mapping[str, str]) -> str:
    """
    The endpoint to listen on: C{--listen}, else YAML C{listen}, unless host
    or port come from the command line or there is no C{listen}; then
    C{tcp:PORT:interface=HOST} from host and port (command line >
    C{APP_HOST}/C{APP_PORT} > YAML > 127.0.0.1 and 8000).
    """
    env_port = env.get("APP_PORT")
    if env_port and not (env_port.isascii() and env_port.isdigit()):
        raise ConfigError(f"APP_PORT: expected a port number, got {env_port!r}")
    host = overrides.host or env.get("APP_HOST") or yaml_values.host
    port = overrides.port or (int(env_port) if env_port else None) or yaml_values.port
    if overrides.listen and (overrides.host or overrides.port):
        raise ConfigError("--listen cannot be combined with --host/--port")
    listen = overrides.listen or yaml_values.listen
    if listen and not (overrides.host or overrides.port):
        return listen
    return f"tcp:{port or 8000}:interface={host or '127.0.0.1'}"


def _model_aliases(
    top: _Reader, overrides: Overrides, env: Mapping[str, str]
) -> tuple[AliasRule, ...]:
    """
    The alias rules: those from C{--model-alias} first, then those of the
    C{MODEL_ALIASES} environment variable (a JSON list of
    C{{"pattern", "replacement"}}), then the file's.
    """
    rules = [compile_or_fail(text) for text in overrides.model_aliases]
    rules += _env_aliases(env.get("MODEL_ALIASES"))
    rules += _aliases(top, top.get("model_aliases", list, []))
    return tuple(rules)


def _env_aliases(text: str | None) -> list[AliasRule]:
    """
    Rules from C{MODEL_ALIASES}; a malformed value stops startup.
    """
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"MODEL_ALIASES: not JSON: {e}")
    if not isinstance(data, list):
        raise ConfigError("MODEL_ALIASES: expected a JSON list of {pattern, replacement}")
    return _aliases(_Reader({"model_aliases": data}, "", "MODEL_ALIASES"), data)


def _model_defaults(top: _Reader) -> Mapping[str, Mapping[str, Any]]:
    """
    C{model_defaults}: per model, read-only default request fields.
    """
    model_defaults: dict[str, Mapping[str, Any]] = {}
    for model, values in top.mapping("model_defaults").items():
        if not isinstance(values, dict):
            raise top.fail(f"model_defaults.{model}", "expected a mapping of fields")
        model_defaults[str(model)] = MappingProxyType(dict(values))
    return MappingProxyType(model_defaults)


def _uri_params(top: _Reader) -> str:
    """
    C{uri_params}: C{strict} (the default) or C{lenient}.
    """
    uri_params = top.get("uri_params", str, "strict")
    if uri_params not in ("strict", "lenient"):
        raise top.fail("uri_params", "must be strict or lenient")
    return uri_params


def _proxy_keys(top: _Reader, overrides: Overrides, env: Mapping[str, str]) -> tuple[str, ...]:
    """
    The proxy keys from YAML, C{LLMPROXY_KEYS} (comma-separated) and the
    command line, all combined, in that order, without duplicates.
    """
    # An entry whose variable is unset expands to "": never a valid key.
    proxy_keys = [k for k in top.strings("proxy_keys") if k]
    proxy_keys += [k.strip() for k in env.get("LLMPROXY_KEYS", "").split(",") if k.strip()]
    proxy_keys += list(overrides.proxy_keys)
    return tuple(dict.fromkeys(proxy_keys))


def _log_level(top: _Reader, overrides: Overrides, yaml_level: str) -> str:
    """
    The log level, from the command line or else YAML; either way it must
    be a known level.
    """
    log_level = overrides.log_level or yaml_level
    if log_level not in ("debug", "info", "warn", "error"):
        raise top.fail("log_level", "must be one of debug, info, warn, error")
    return log_level


def _responses_store(top: _Reader) -> tuple[int, float]:
    """
    C{responses_store}: its C{max_items} and C{max_age}.
    """
    store = top.child("responses_store", top.mapping("responses_store"))
    size = store.integer("max_items", 1000)
    ttl = store.number("max_age", 3600.0)
    store.finish()
    return size, ttl


def build_config(
    data: Mapping[str, Any],
    overrides: Overrides = Overrides(),
    environ: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> Config:
    """
    Validate YAML data, apply the environment and the command line, and
    return a frozen L{Config}.

    The helpers run in a fixed order, so that of several errors the same
    one is always reported first.
    """
    env = os.environ if environ is None else environ
    top = _Reader(data, "", source, env)
    backends, default_backend = _backends_and_default(top, overrides, env)
    yaml_values = _top_level(top)
    listen = _listen(yaml_values, overrides, env)
    model_aliases = _model_aliases(top, overrides, env)
    model_defaults = _model_defaults(top)
    uri_params = _uri_params(top)
    proxy_keys = _proxy_keys(top, overrides, env)
    log_level = _log_level(top, overrides, yaml_values.log_level)
    store_size, store_ttl = _responses_store(top)
    backends, warnings = _without_self_loop(backends, listen, data, env, source)
    config = Config(
        listen=listen,
        proxy_keys=proxy_keys,
        disable_auth=overrides.disable_auth or yaml_values.disable_auth,
        default_backend=default_backend,
        force_model=overrides.force_model or env.get("STATIC_ROUTE") or yaml_values.force_model,
        backends=backends,
        model_aliases=model_aliases,
        model_defaults=model_defaults,
        uri_params=uri_params,
        failover_routes=_routes(top, top.mapping("failover_routes")),
        failure=_failure(top.child("failure_handling", top.mapping("failure_handling"))),
        max_body_bytes=top.integer("max_body_bytes", 32 * 1024 * 1024, minimum=1024),
        log_level=log_level,
        access_log=bool(top.get("access_log", bool, False)),
        responses_store_size=store_size,
        responses_store_ttl=store_ttl,
        workers=overrides.workers or yaml_values.workers,
        warnings=warnings,
    )
    top.finish()
    check_exposure(config)
    return config


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


def _points_at(url: str, listen: str) -> bool:
    """
    Whether C{url} would reach this llmproxy's own C{tcp:} listener.
    """
    from urllib.parse import urlsplit

    from llmproxy.workers import parse_tcp

    address = parse_tcp(listen)
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    if address is None or address.port == 0 or port != address.port:
        return False
    host = parts.hostname or ""
    return host == address.host or (host in _LOCAL_HOSTS and address.host in _LOCAL_HOSTS)


def _without_self_loop(
    backends: Mapping[str, BackendConfig], listen: str, data: Mapping[str, Any],
    env: Mapping[str, str], source: str,
) -> tuple[Mapping[str, BackendConfig], tuple[str, ...]]:
    """
    No backend may forward to llmproxy itself.  The usual cause is the SDK's
    own C{OPENAI_BASE_URL}, pointed at llmproxy, seen by llmproxy too: that
    one is ignored with a warning; a configured URL is an error.
    """
    warnings = []
    fixed = dict(backends)
    for name, backend in backends.items():
        if backend.type == "mock" or not _points_at(backend.base_url, listen):
            continue
        raw = (data.get("backends") or {}).get(name) or {}
        configured = isinstance(raw, dict) and bool(raw.get("base_url") or raw.get("api_url"))
        if name == "openai" and not configured:
            fixed[name] = replace(backend, base_url=DEFAULT_OPENAI_URL)
            warnings.append(
                f"OPENAI_BASE_URL/OPENAI_API_BASE_URL ({backend.base_url}) is llmproxy's own "
                f"address {listen}; backend 'openai' uses {DEFAULT_OPENAI_URL} instead"
            )
            continue
        raise ConfigError(
            f"{source}: backends.{name}.base_url: {backend.base_url} is llmproxy's own "
            f"address ({listen}); requests would loop"
        )
    return MappingProxyType(fixed), tuple(warnings)


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
