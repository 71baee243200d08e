# -*- test-case-name: tests.test_config -*-
"""
Configuration: parsed once, from YAML, the environment and the command line,
into the frozen types of L{llmproxy.config.model}.

Precedence is field by field: command line > environment > YAML > defaults.
Every key is optional; an unknown key or a value of the wrong type is a
L{ConfigError} naming the key and the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import yaml

from llmproxy.config.backends import backends_and_default
from llmproxy.config.capture import capture_config
from llmproxy.config.edits import edit_precision_config
from llmproxy.config.listen import (
    check_exposure, check_personal_accounts, listen_problem, port_problem, without_self_loop,
)
from llmproxy.config.error import ConfigError
from llmproxy.config.model import (
    AliasRule,
    BackendKind,
    Config,
    FailoverRoute,
    FailureConfig,
    Overrides,
    compile_alias,
    parse_alias_flag,
)
from llmproxy.config.reader import Reader
from llmproxy.config.session import session_config
from llmproxy.config.state import state_config


def _failure(reader: Reader) -> FailureConfig:
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
        circuit_probe_interval=reader.number("circuit_probe_interval",
                                             d.circuit_probe_interval, 0.1),
        first_token_timeout=reader.number("first_token_timeout", d.first_token_timeout),
        reasoning_first_token_timeout=reader.number("reasoning_first_token_timeout",
                                                    d.reasoning_first_token_timeout),
        stream_idle_timeout=reader.number("stream_idle_timeout", d.stream_idle_timeout),
        continuation=reader.get("continuation", bool, d.continuation),
        retry_same_max_wait=reader.number("retry_same_max_wait", d.retry_same_max_wait),
        retries_per_target=reader.integer("retries_per_target", d.retries_per_target),
        retry_backoff_base=reader.number("retry_backoff_base", d.retry_backoff_base),
        extra_failover_statuses=_failover_statuses(reader),
        extra_failover_codes=tuple(c.lower() for c in reader.strings("extra_failover_codes")),
    )
    reader.finish()
    return result


def _failover_statuses(reader: Reader) -> tuple[int, ...]:
    """
    C{extra_failover_statuses}: 4xx statuses that fail over (5xx already do).
    """
    value = reader.get("extra_failover_statuses", list, [])
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 400 <= item <= 499:
            raise reader.fail("extra_failover_statuses",
                              f"expected a list of 4xx statuses, got {item!r}")
    return tuple(value)


def _routes(reader: Reader, data: Mapping[str, Any]) -> Mapping[str, FailoverRoute]:
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
        continuation = sub.get("continuation", bool, True)
        sub.finish()
        if not elements:
            raise sub.fail("elements", "needs at least one selector")
        routes[str(key)] = FailoverRoute(policy, elements, continuation)
    return MappingProxyType(routes)


def _aliases(reader: Reader, raw: list[Any]) -> list[AliasRule]:
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
    Read a YAML config file; an empty file is an empty mapping.  Every
    problem is a one-line L{ConfigError} naming the file (and the line).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 (byte 0x{raw[e.start]:02x})")
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "cannot parse").split())
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}")
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply")
    except (yaml.YAMLError, ValueError) as e:
        # ValueError: from a constructor, for a timestamp like 2024-13-45.
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split()) or type(e).__name__}")
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


def _top_level(top: Reader) -> _TopLevel:
    """
    Read every overridable top-level YAML value up front, so that a key
    overridden by the command line or the environment still counts as
    known.
    """
    port = top.get("port", int)
    if port is not None and (problem := port_problem(port)):
        raise top.fail("port", problem)
    return _TopLevel(
        host=top.get("host", str),
        port=port,
        listen=top.get("listen", str),
        force_model=top.get("force_model", str),
        log_level=top.get("log_level", str, "info"),
        disable_auth=bool(top.get("disable_auth", bool, False)),
        workers=top.integer("workers", 1, minimum=1),
    )


def _listen(
    top: Reader, yaml_values: _TopLevel, overrides: Overrides, env: Mapping[str, str]
) -> str:
    """
    The endpoint to listen on: C{--listen}, else YAML C{listen}, unless host
    or port come from the command line or there is no C{listen}; then
    C{tcp:PORT:interface=HOST} from host and port (command line >
    C{APP_HOST}/C{APP_PORT} > YAML > 127.0.0.1 and 8000).  Whichever
    setting gave it is named if the endpoint is not valid.
    """
    if overrides.listen and (overrides.host or overrides.port is not None):
        raise ConfigError("--listen cannot be combined with --host/--port")
    if overrides.listen:
        return _checked_listen(overrides.listen, "--listen")
    if yaml_values.listen and not (overrides.host or overrides.port is not None):
        return _checked_listen(yaml_values.listen, f"{top.source}: listen")
    host, host_setting = _first_set(
        (overrides.host, "--host"), (env.get("APP_HOST"), "APP_HOST"),
        (yaml_values.host, f"{top.source}: host"), ("127.0.0.1", "the default host"))
    port = _port(overrides, env, yaml_values)
    # Twisted's endpoint syntax needs an IPv6 address's colons escaped.
    interface = re.sub(r"(?<!\\):", r"\\:", host.removeprefix("[").removesuffix("]"))
    return _checked_listen(f"tcp:{port}:interface={interface}", host_setting)


def _first_set(*candidates: tuple[str | None, str]) -> tuple[str, str]:
    """
    The first candidate value that is set, and the setting it came from.
    """
    for value, setting in candidates:
        if value:
            return value, setting
    raise AssertionError("the last candidate is a default")


def _port(overrides: Overrides, env: Mapping[str, str], yaml_values: _TopLevel) -> int:
    """
    The port: C{--port}, else C{APP_PORT}, else YAML C{port}, else 8000;
    C{0} (any free port) counts as set.
    """
    if overrides.port is not None:
        if problem := port_problem(overrides.port):
            raise ConfigError(f"--port: {problem}")
        return overrides.port
    env_port = env.get("APP_PORT")
    if env_port:
        if not (env_port.isascii() and env_port.isdigit()):
            raise ConfigError(f"APP_PORT: expected a port number, got {env_port!r}")
        if problem := port_problem(int(env_port)):
            raise ConfigError(f"APP_PORT: {problem}")
        return int(env_port)
    return 8000 if yaml_values.port is None else yaml_values.port


def _checked_listen(listen: str, setting: str) -> str:
    """
    C{listen}, if it is a valid endpoint string; else a L{ConfigError}
    naming the C{setting} it came from.
    """
    problem = listen_problem(listen)
    if problem is not None:
        raise ConfigError(f"{setting}: {problem}")
    return listen


def _model_aliases(
    top: Reader, overrides: Overrides, env: Mapping[str, str]
) -> tuple[AliasRule, ...]:
    """
    The alias rules: those from C{--model-alias} first, then those of the
    C{MODEL_ALIASES} environment variable (a JSON list of
    C{{"pattern", "replacement"}}), then the file's.
    """
    rules = [_alias_flag(text) for text in overrides.model_aliases]
    rules += _env_aliases(env.get("MODEL_ALIASES"), env)
    rules += _aliases(top, top.get("model_aliases", list, []))
    return tuple(rules)


def _alias_flag(text: str) -> AliasRule:
    """
    Parse a C{--model-alias PATTERN=REPLACEMENT} flag.
    """
    try:
        return parse_alias_flag(text)
    except ValueError as e:
        raise ConfigError(f"--model-alias: {e}")


def _env_aliases(text: str | None, env: Mapping[str, str]) -> list[AliasRule]:
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
    return _aliases(Reader({"model_aliases": data}, "", "MODEL_ALIASES", env), data)


def _model_defaults(top: Reader) -> Mapping[str, Mapping[str, Any]]:
    """
    C{model_defaults}: per model, read-only default request fields.
    """
    model_defaults: dict[str, Mapping[str, Any]] = {}
    for model, values in top.mapping("model_defaults").items():
        if not isinstance(values, dict):
            raise top.fail(f"model_defaults.{model}", "expected a mapping of fields")
        model_defaults[str(model)] = MappingProxyType(dict(values))
    return MappingProxyType(model_defaults)


def _uri_params(top: Reader) -> str:
    """
    C{uri_params}: C{strict} (the default) or C{lenient}.
    """
    uri_params = top.get("uri_params", str, "strict")
    if uri_params not in ("strict", "lenient"):
        raise top.fail("uri_params", "must be strict or lenient")
    return uri_params


def _proxy_keys(top: Reader, overrides: Overrides, env: Mapping[str, str]) -> tuple[str, ...]:
    """
    The proxy keys from YAML, C{LLMPROXY_KEYS} (comma-separated) and the
    command line, all combined, in that order, without duplicates.

    An empty key, from any of them, is an error: it can only come from a
    mistake (an unset variable, a stray comma), and dropping it could
    leave no key at all, turning auth off.
    """
    proxy_keys = list(top.strings("proxy_keys"))
    for i, key in enumerate(proxy_keys):
        if problem := _proxy_key_problem(key):
            raise top.fail(f"proxy_keys[{i}]", problem)
    env_text = env.get("LLMPROXY_KEYS", "")
    env_keys = [k.strip() for k in env_text.split(",")] if env_text.strip() else []
    for i, key in enumerate(env_keys, start=1):
        if not key:
            raise ConfigError(f"LLMPROXY_KEYS: key {i} of {len(env_keys)} is empty")
    for key in overrides.proxy_keys:
        if problem := _proxy_key_problem(key):
            raise ConfigError(f"--proxy-key: {problem}")
    return tuple(dict.fromkeys(proxy_keys + env_keys + list(overrides.proxy_keys)))


def _proxy_key_problem(key: str) -> str | None:
    """
    What makes C{key} a key no client can send, if anything.
    """
    if not key:
        return "the key is empty"
    if key != key.strip():
        return "a key cannot start or end with whitespace (a client's token is stripped)"
    return None


def _log_level(top: Reader, overrides: Overrides, yaml_level: str) -> str:
    """
    The log level, from the command line or else YAML; either way it must
    be a known level.
    """
    log_level = overrides.log_level or yaml_level
    if log_level not in ("debug", "info", "warn", "error"):
        problem = "must be one of debug, info, warn, error"
        if overrides.log_level:
            raise ConfigError(f"--log-level: {problem}, not {log_level!r}")
        raise top.fail("log_level", problem)
    return log_level


def _workers(overrides: Overrides, yaml_workers: int) -> int:
    """
    The number of processes: C{--workers}, else YAML C{workers}.
    """
    if overrides.workers is None:
        return yaml_workers
    if overrides.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, not {overrides.workers}")
    return overrides.workers


def _responses_store(top: Reader) -> tuple[int, float]:
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
    *,
    kinds: Sequence[BackendKind],
) -> Config:
    """
    Validate YAML data, apply the environment and the command line, and
    return a frozen L{Config}.

    The helpers run in a fixed order, so that of several errors the same
    one is always reported first.

    @param source: the file name the errors name.
    @param kinds: the backend types and their settings, from the backend
        registry (C{llmproxy.backends.REGISTRY.kinds}); the first is the
        type of a backend that names none.
    """
    env = os.environ if environ is None else environ
    by_name = {kind.name: kind for kind in kinds}
    top = Reader(data, "", source, env)
    backends, default_backend = backends_and_default(top, overrides, env, by_name)
    yaml_values = _top_level(top)
    listen = _listen(top, yaml_values, overrides, env)
    model_aliases = _model_aliases(top, overrides, env)
    model_defaults = _model_defaults(top)
    uri_params = _uri_params(top)
    proxy_keys = _proxy_keys(top, overrides, env)
    log_level = _log_level(top, overrides, yaml_values.log_level)
    store_size, store_ttl = _responses_store(top)
    backends, warnings = without_self_loop(backends, listen, data, source, by_name)
    config = Config(
        listen=listen,
        proxy_keys=proxy_keys,
        disable_auth=overrides.disable_auth or yaml_values.disable_auth,
        default_backend=default_backend,
        force_model=(overrides.force_model or env.get("STATIC_ROUTE") or yaml_values.force_model
                     or None),
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
        workers=_workers(overrides, yaml_values.workers),
        allow_remote_codex=bool(top.get("allow_remote_codex", bool, False)),
        capture=capture_config(top, overrides.capture_file, env),
        session=session_config(top),
        state=state_config(top, _workers(overrides, yaml_values.workers)),
        edit_precision=edit_precision_config(top),
        warnings=(*top.warnings, *warnings),
    )
    top.finish()
    check_exposure(config)
    remote = check_personal_accounts(config, by_name)
    return replace(config, warnings=config.warnings + remote) if remote else config


def load_config(
    overrides: Overrides, environ: Mapping[str, str] | None = None, *,
    kinds: Sequence[BackendKind],
) -> Config:
    """
    Load the file named by the overrides (or C{CONFIG_FILE}) and build the
    L{Config}; C{kinds} as for L{build_config}.
    """
    env = os.environ if environ is None else environ
    path = overrides.config_file or env.get("CONFIG_FILE")
    data = load_yaml(path) if path else {}
    return build_config(data, overrides, env, source=path or "<defaults>", kinds=kinds)


__all__ = ["build_config", "load_config", "load_yaml"]
