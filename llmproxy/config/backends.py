# -*- test-case-name: tests.test_config -*-
"""
The C{backends} section: one L{BackendConfig} per entry, each of a type
the backend registry declares (a L{BackendKind}), and the default backend.
"""

from __future__ import annotations

import os
import re
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from llmproxy.config.error import ConfigError
from llmproxy.config.model import (
    OPENAI_BACKEND,
    ApiKey,
    BackendConfig,
    BackendKind,
    Overrides,
)
from llmproxy.config.reader import Reader, did_you_mean, env_refs, unset_refs

MAX_ENV_KEYS = 99


def backends_and_default(
    top: Reader, overrides: Overrides, env: Mapping[str, str],
    kinds: Mapping[str, BackendKind],
) -> tuple[Mapping[str, BackendConfig], str]:
    """
    The backends, and the default backend selector, which must name one of
    them.
    """
    sections, nested_default = _backend_sections(top)
    requested = _requested_default(top, nested_default, overrides, env)
    backends = _backends(top, sections, env, kinds, requested)
    default_backend = _default_backend(requested, backends, top.source, demo=not sections)
    return MappingProxyType(backends), default_backend


def _backend_sections(top: Reader) -> tuple[dict[Any, Any], str | None]:
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
    top: Reader, nested_default: str | None, overrides: Overrides, env: Mapping[str, str]
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
    top: Reader, sections: Mapping[Any, Any], env: Mapping[str, str],
    kinds: Mapping[str, BackendKind], requested: str | None,
) -> dict[str, BackendConfig]:
    """
    The configured backends, in file order; an empty section is a backend
    with every default.  With none configured, L{_demo_backends}.
    """
    if not sections:
        return _demo_backends(top, env, kinds, requested)
    backends: dict[str, BackendConfig] = {}
    for name, body in sections.items():
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise top.fail(f"backends.{name}", "expected a mapping")
        backends[str(name)] = _backend(str(name), top.child(f"backends.{name}", body), env, kinds)
    return backends


def _demo_backends(
    top: Reader, env: Mapping[str, str], kinds: Mapping[str, BackendKind],
    requested: str | None,
) -> dict[str, BackendConfig]:
    """
    The backends when none are configured: one per L{BackendKind.demo}
    type, named after it, with every default (so the L{OPENAI_BACKEND} one
    is keyed from the environment, if at all); and when the default backend
    asked for names a type (C{--default-backend openai-codex}), one of that
    type too, named after it.
    """
    wanted = _backend_name(requested) if requested is not None else None
    return {
        name: _backend(name, top.child(f"backends.{name}", {}), env, kinds)
        for name, kind in kinds.items() if kind.demo or name == wanted
    }


def _backend_name(selector: str) -> str:
    """
    The backend a default backend selector (C{name[:model][|...]}) names.
    """
    return selector.split("|")[0].split(":")[0]


def _missing_key(backend: BackendConfig) -> bool:
    """
    Whether the backend has no key while it asks for one.
    """
    return not backend.keys and backend.key_env is not None


def _default_backend(
    requested: str | None, backends: Mapping[str, BackendConfig], source: str, demo: bool
) -> str:
    """
    The default backend selector: the one requested; else, for the demo
    backends, the first that is not missing its key (the mock, when OpenAI
    has no key); else L{OPENAI_BACKEND} when it exists, else the first
    backend.  Its backend must exist.
    """
    if requested is None:
        ready = [n for n, b in backends.items() if not _missing_key(b)]
        if demo and ready:
            requested = ready[0]
        else:
            requested = OPENAI_BACKEND if OPENAI_BACKEND in backends else next(iter(backends))
    name = _backend_name(requested)
    if name not in backends:
        raise ConfigError(
            f"{source}: default_backend: unknown backend {name!r} "
            f"(known: {', '.join(sorted(backends))}){did_you_mean(name, backends)}"
        )
    return requested


def _backend(
    name: str, reader: Reader, environ: Mapping[str, str], kinds: Mapping[str, BackendKind]
) -> BackendConfig:
    """
    Build one backend from its C{backends.NAME} section: the settings
    every type shares, then its type's own L{BackendKind.options}.
    """
    kind = _backend_kind(name, reader, kinds)
    base_url = _base_url(name, kind, reader, environ)
    options = _options(kind, reader, environ)
    if kind.keys is not None:
        keys, key_env = kind.keys(name, options, environ), None
    else:
        keys, key_env = _keys(name, reader, environ,
                              implicit=name == OPENAI_BACKEND and kind.openai_env)
    reasoning_models = _reasoning_models(reader)
    backend = BackendConfig(
        name=name,
        type=kind.name,
        base_url=base_url,
        keys=keys,
        key_env=key_env,
        timeout=reader.number("timeout", 600.0),
        connect_timeout=reader.number("connect_timeout", 10.0),
        idle_timeout=reader.number("idle_timeout", 300.0),
        models=reader.strings("models"),
        reasoning_models=reasoning_models,
        max_connections=reader.integer("max_connections", 64, minimum=1),
        continuation=_continuation(reader),
        affinity=_affinity(reader),
        prefill_params=MappingProxyType(dict(reader.mapping("prefill_params"))),
        prefill_message=MappingProxyType(dict(reader.mapping("prefill_message"))),
        options=options,
        **_stream_limits(reader),
    )
    reader.finish()
    return backend


def _backend_kind(name: str, reader: Reader, kinds: Mapping[str, BackendKind]) -> BackendKind:
    """
    The backend's type: C{type}, or its synonym C{connector}, else the
    backend's own name when that is a known type, else the first type
    (the registry's first entry).
    """
    raw_type = reader.get("type", str)
    connector = reader.get("connector", str)
    if raw_type and connector and raw_type != connector:
        raise reader.fail("type", f"conflicts with connector {connector!r}")
    btype = raw_type or connector or (name if name in kinds else next(iter(kinds)))
    if btype not in kinds:
        raise reader.fail("type", f"unknown type {btype!r} (known: {', '.join(kinds)})"
                          + did_you_mean(btype, kinds))
    return kinds[btype]


def _base_url(
    name: str, kind: BackendKind, reader: Reader, environ: Mapping[str, str]
) -> str:
    """
    The backend's base URL without a trailing slash: C{base_url}, or its
    synonym C{api_url}.  Without one, the type's default URL; but the
    backend named L{OPENAI_BACKEND} of a type that reads the OpenAI
    environment takes C{OPENAI_API_BASE_URL} (else C{OPENAI_BASE_URL})
    first.
    """
    base_url = reader.get("base_url", str)
    api_url = reader.get("api_url", str)
    if base_url and api_url and base_url != api_url:
        raise reader.fail("api_url", "conflicts with base_url")
    url, setting = (base_url, "base_url") if base_url else (api_url, "api_url")
    if not url and name == OPENAI_BACKEND and kind.openai_env:
        setting = "OPENAI_API_BASE_URL" if environ.get("OPENAI_API_BASE_URL") else "OPENAI_BASE_URL"
        url = environ.get(setting)
    if not url:
        return kind.default_url.rstrip("/")
    if kind.uses_url and not _is_http_url(url):
        problem = f"expected an http:// or https:// URL, got {url!r}"
        if setting in ("base_url", "api_url"):
            raise reader.fail(setting, problem)
        raise ConfigError(f"{setting} (for backend {name!r}): {problem}")
    return url.rstrip("/")


def _is_http_url(url: str) -> bool:
    """
    Whether C{url} is an absolute C{http} or C{https} URL with a host.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


def _options(
    kind: BackendKind, reader: Reader, environ: Mapping[str, str]
) -> Mapping[str, Any]:
    """
    The values of the settings only this backend's type reads.
    """
    values: dict[str, Any] = {}
    for option in kind.options:
        if option.type is tuple:
            listed = tuple(expand_user(s, environ) for s in reader.strings(option.name))
            value: Any = listed if reader.data.get(option.name) is not None else option.default
        else:
            value = reader.get(option.name, option.type, option.default)
        if option.choices and value is not None and value not in option.choices:
            raise reader.fail(option.name, f"expected one of {', '.join(option.choices)}, "
                                           f"got {value!r}")
        values[option.name] = float(value) if option.type is float and value is not None else value
    return MappingProxyType(values)


def expand_user(path: str, environ: Mapping[str, str]) -> str:
    """
    C{path} with a leading C{~} (alone or before C{/}) replaced by the
    environment's C{HOME} (the process's home when it has none).
    """
    if path != "~" and not path.startswith("~/"):
        return path
    home = environ.get("HOME") or os.path.expanduser("~")
    return home + path[1:]


def _stream_limits(reader: Reader) -> dict[str, float | None]:
    """
    The backend's overrides of C{failure_handling}'s stream limits (the
    ones it sets; at least 0).
    """
    names = ("first_token_timeout", "reasoning_first_token_timeout", "stream_idle_timeout")
    return {name: None if reader.get(name, float) is None else reader.number(name, 0.0)
            for name in names}


def _continuation(reader: Reader) -> str:
    """
    C{continuation}: how this backend continues a stream broken elsewhere.
    """
    value = reader.get("continuation", str, "restart")
    if value not in ("prefill", "restart"):
        raise reader.fail("continuation", f"expected prefill or restart, not {value!r}")
    return value


def _affinity(reader: Reader) -> str:
    """
    C{affinity}: whether a conversation sticks to one of the backend's keys
    (an unquoted C{off} is YAML's C{false}).
    """
    value = reader.get("affinity", (str, bool), "conversation")
    if value is False:
        return "off"
    if value not in ("conversation", "off"):
        raise reader.fail("affinity", f"expected conversation or off, not {value!r}")
    return value


def _reasoning_models(reader: Reader) -> re.Pattern[str] | None:
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
    name: str, reader: Reader, environ: Mapping[str, str], implicit: bool
) -> tuple[tuple[ApiKey, ...], str | None]:
    """
    Collect a backend's keys: C{api_key}, C{api_keys}, and when C{implicit}
    and there are none, the C{OPENAI_API_KEY_1..N} variables (or, when none
    of those exist, C{OPENAI_API_KEY}).

    @return: the keys, and the environment variable to name when there are
        none.
    """
    texts, values = _key_entries(reader)
    if implicit and not texts:
        return _openai_env_keys(environ), "OPENAI_API_KEY"
    _warn_unset_keys(reader, environ)
    return _named_keys(name, texts, values), _first_env_ref(texts)


def _key_entries(reader: Reader) -> tuple[list[str], list[str]]:
    """
    Read C{api_key} then C{api_keys}.  An entry whose variable is unset is
    no key (several backends may share a file whose keys each environment
    sets only in part), not an error.

    @return: each entry as written (with its C{${VAR}} references), and the
        same entries expanded.
    """
    raw_one = reader.data.get("api_key")
    one = reader.get("api_key", str, allow_unset=True)
    many = reader.strings("api_keys", allow_unset=True)
    raw_many = reader.data.get("api_keys") or []
    if one is None:
        return list(raw_many), list(many)
    return [raw_one, *raw_many], [one, *many]


def _warn_unset_keys(reader: Reader, environ: Mapping[str, str]) -> None:
    """
    Note, for the startup log, the key variables that are not set: those
    keys are left out (and a backend left with none answers each request
    with an error naming its variable).
    """
    for setting in ("api_key", "api_keys"):
        raw = reader.data.get(setting)
        texts = raw if isinstance(raw, list) else [raw]
        unset = [n for t in texts if isinstance(t, str) for n in unset_refs(t, environ)]
        if len(unset) == 1:
            reader.warn(setting, f"${{{unset[0]}}} is not set: that key is left out")
        elif unset:
            names = ", ".join(f"${{{name}}}" for name in dict.fromkeys(unset))
            reader.warn(setting, f"{names} are not set: those keys are left out")


def _named_keys(name: str, texts: list[str], values: list[str]) -> tuple[ApiKey, ...]:
    """
    The non-empty keys, each named after its variable when it is the only
    key and comes from exactly one variable, else C{NAME#i}; a key's name
    never holds its value.
    """
    keys: list[ApiKey] = []
    for i, (text, value) in enumerate(zip(texts, values), start=1):
        refs = env_refs(text)
        key_name = refs[0] if len(refs) == 1 and len(values) == 1 else f"{name}#{i}"
        if value:
            keys.append(ApiKey(key_name, value))
    return tuple(keys)


def _first_env_ref(texts: list[str]) -> str | None:
    """
    The first variable any of the key entries refers to, if any.
    """
    refs = [r for t in texts for r in env_refs(t)]
    return refs[0] if refs else None


def _openai_env_keys(environ: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """
    The keys of the L{OPENAI_BACKEND} backend from the environment: the
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
