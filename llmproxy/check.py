# -*- test-case-name: tests.test_check -*-
"""
C{llmproxy check} (C{python -m llmproxy check --config FILE [--probe]}, or
C{twistd llmproxy --check}): validate a configuration before deploying it.

The configuration is read exactly as startup reads it (file, environment,
command line); every error found is printed with the file and line at
fault (after an error, the offending key is set aside and the rest read
again, so one run shows several mistakes), then the routes are tried
(failover route elements, alias targets, C{force_model}).  A valid
configuration is printed resolved, secrets masked, each value with its
source: C{file:line} (and the C{${VAR}}s it uses), an environment variable,
a flag, or the default.  The exit status is 0 when valid, 1 otherwise.

C{--probe} also asks each backend's C{/models} with each key
(L{llmproxy.probe}); a key that is not C{ok} makes the exit status 1.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, NoReturn, Sequence, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from llmproxy.config import BackendKind, Config, ConfigError, Overrides, build_config, load_yaml
from llmproxy.config.hybrid import HYBRID
from llmproxy.config.reader import did_you_mean
from llmproxy.config.sources import Position, flatten, variables, yaml_positions
from llmproxy.errors import ProxyError
from llmproxy.exchange.planning import check_strong_model
from llmproxy.probe import probe
from llmproxy.routing.aliases import alias_targets
from llmproxy.routing.resolve import Router

#: The most errors one run reports.
MAX_ERRORS = 20


@dataclass
class Report:
    """
    What a check found: errors (each one line), warnings, and the
    resolved configuration as (path, value, source) rows when it is valid.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    config: Config | None = None
    source: str = "<defaults>"

    def write(self, out: TextIO) -> None:
        for line in self.errors:
            out.write(f"error: {line}\n")
        for line in self.warnings:
            out.write(f"warning: {line}\n")
        if self.errors:
            out.write(f"{self.source}: {len(self.errors)} error(s)\n")
            return
        width = max((len(path) for path, _, _ in self.rows), default=0)
        for path, value, origin in self.rows:
            out.write(f"{path.ljust(width)}  {value}  ({origin})\n")
        out.write(f"{self.source}: OK\n")


def check(
    overrides: Overrides, environ: Mapping[str, str] | None = None, *,
    kinds: Sequence[BackendKind],
) -> Report:
    """
    Check the configuration C{overrides} name, as L{load_config} would
    read it.
    """
    env = os.environ if environ is None else environ
    path = overrides.config_file or env.get("CONFIG_FILE") or None
    report = Report(source=path or "<defaults>")
    data: Any = {}
    positions: dict[str, Position] = {}
    if path:
        try:
            data = copy.deepcopy(dict(load_yaml(path)))
            with open(path, encoding="utf-8-sig") as f:
                positions = yaml_positions(f.read())
        except ConfigError as e:
            report.errors.append(str(e))
            return report
    config = _build(data, overrides, env, kinds, report, positions)
    if config is None:
        return report
    report.errors += _route_problems(config, report.source, positions)
    report.warnings += list(config.warnings)
    if not report.errors:
        report.config = config
        report.rows = [(file_key(name), value,
                        _origin(name, config, overrides, env, positions, path))
                       for name, value in flatten(config) if name not in _DERIVED]
    return report


def _build(
    data: dict[str, Any], overrides: Overrides, env: Mapping[str, str],
    kinds: Sequence[BackendKind], report: Report, positions: Mapping[str, Position],
) -> Config | None:
    """
    The configuration, or L{None} after recording each error: an error at a
    key of the file sets that key aside and reads the rest again.
    """
    seen: set[str] = set()
    for _ in range(MAX_ERRORS):
        try:
            config = build_config(data, overrides, env, source=report.source, kinds=kinds)
            check_strong_model(config)
        except ConfigError as e:
            key, located = _locate(str(e), report.source, positions)
            if key not in seen:  # else a consequence of setting it aside
                report.errors.append(located)
            if key is None or not _set_aside(data, positions[key].keys):
                return None
            seen.add(key)
            continue
        return None if seen else config
    return None


def _set_aside(data: Any, keys: tuple[Any, ...]) -> bool:
    """
    Remove the value at C{keys}, or if it is gone already, the nearest
    enclosing one (not the whole file); whether anything was removed.
    """
    return any(_remove(data, keys[:end]) for end in range(len(keys), 0, -1))


def _locate(message: str, source: str, positions: Mapping[str, Position]) -> tuple[str | None, str]:
    """
    The file's key an error names (if it is one of the file's), and the
    error with that key's line.
    """
    prefix = f"{source}: "
    if not message.startswith(prefix):
        return None, message
    rest = message[len(prefix):]
    key = rest.split(": ", 1)[0]
    if key not in positions:
        return None, message
    return key, f"{source}:{positions[key].line}: {rest}"


def _remove(data: Any, keys: tuple[Any, ...]) -> bool:
    """
    Set the value at C{keys} aside; whether there was one.
    """
    *parents, last = keys
    for key in parents:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(data, dict) and last in data:
        del data[last]
        return True
    if isinstance(data, list) and isinstance(last, int) and last < len(data):
        del data[last]
        return True
    return False


def _route_problems(config: Config, source: str, positions: Mapping[str, Position]) -> list[str]:
    """
    A line for each selector of the configuration that does not route.
    """
    router = Router(replace(config, force_model=None))
    selectors: list[tuple[str, str]] = [
        (f"failover_routes.{name}.elements[{i}]", element)
        for name, route in config.failover_routes.items()
        for i, element in enumerate(route.elements)]
    selectors += [("model_aliases", target) for target in alias_targets(config.model_aliases)]
    selectors += [(f"backends.{name}.{phase}", backend.options[phase])
                  for name, backend in config.backends.items() if backend.type == HYBRID
                  for phase in ("reasoning", "execution")
                  if isinstance(backend.options.get(phase), str)]
    problems = []
    if config.force_model:
        selectors.append(("force_model", config.force_model))
    for key, selector in selectors:
        try:
            router.resolve({"model": selector})
        except ProxyError as e:
            where = f"{source}:{positions[key].line}" if key in positions else source
            named = selector.split("|")[0].split(":")[0] if ":" in selector else ""
            hint = did_you_mean(named, config.backends) if named not in config.backends else ""
            problems.append(f"{where}: {key}: {selector!r} does not route: {e.message}{hint}")
    return problems


#: Where a setting may come from besides its own key in the file, in
#: precedence order: C{("flag", Overrides field, shown as)},
#: C{("env", VARIABLE)}, C{("yaml", key path)}.
_RULES: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "listen": (("flag", "listen", "--listen"), ("flag", "host", "--host"),
               ("flag", "port", "--port"), ("env", "APP_HOST"), ("env", "APP_PORT"),
               ("yaml", "listen"), ("yaml", "host"), ("yaml", "port")),
    "default_backend": (("flag", "default_backend", "--default-backend"),
                        ("env", "LLM_BACKEND"), ("yaml", "default_backend")),
    "force_model": (("flag", "force_model", "--force-model"), ("env", "STATIC_ROUTE"),
                    ("yaml", "force_model")),
    "proxy_keys": (("flag", "proxy_keys", "--proxy-key"), ("env", "LLMPROXY_KEYS"),
                   ("yaml", "proxy_keys")),
    "disable_auth": (("flag", "disable_auth", "--disable-auth"), ("yaml", "disable_auth")),
    "log_level": (("flag", "log_level", "--log-level"), ("yaml", "log_level")),
    "workers": (("flag", "workers", "--workers"), ("yaml", "workers")),
    "model_aliases": (("flag", "model_aliases", "--model-alias"), ("env", "MODEL_ALIASES"),
                      ("yaml", "model_aliases")),
    "capture.file": (("flag", "capture_file", "--capture"), ("env", "CAPTURE_FILE"),
                     ("env", "WIRE_CAPTURE_FILE"), ("yaml", "capture.file")),
    "state.url": (("yaml", "state.url"), ("yaml", "state")),
    "access_log": (("yaml", "access_log.enabled"), ("yaml", "access_log")),
    "responses_store_size": (("yaml", "responses_store.max_items"),),
    "responses_store_ttl": (("yaml", "responses_store.max_age"),),
}
#: Configuration paths as the file spells them.
_RENAMES = ((r"^failure\.", "failure_handling."), (r"^session\.planning\.", "session.planning_phase."),
            (r"^(backends\.[^.]+)\.options\.", r"\1."),
            (r"^edit_precision\.exclude_agents$", "edit_precision.exclude_agents_regex"),
            (r"^responses_store_size$", "responses_store.max_items"),
            (r"^responses_store_ttl$", "responses_store.max_age"),
            (r"^access\.", "access_log."),
            (r"^hybrid\.probability$", "hybrid.reasoning_injection_probability"),
            (r"^hybrid\.force_turns$", "hybrid.hybrid_reasoning_force_initial_turns"),
            (r"^hybrid\.timeout$", "hybrid.hybrid_reasoning_model_timeout"),
            (r"^hybrid\.injection$", "hybrid.hybrid_injection"))
#: Values worked out from others (the state URL's parts, whether the file
#: named the access log), not set themselves.
_DERIVED = frozenset({"access.said", "state.kind", "state.path", "state.host", "state.port",
                      "state.db", "state.password", "state.tls"})


def file_key(name: str) -> str:
    """
    The configuration path C{name} (a frozen field's) as the file spells it.
    """
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _origin(
    name: str, config: Config, overrides: Overrides, env: Mapping[str, str],
    positions: Mapping[str, Position], path: str | None,
) -> str:
    """
    Where the value at C{name} came from.
    """
    where = os.path.basename(path) if path else ""
    for rule in _RULES.get(name, ()):
        if rule[0] == "flag" and getattr(overrides, rule[1]) not in (None, (), False):
            return f"flag {rule[2]}"
        if rule[0] == "env" and env.get(rule[1]):
            return f"env {rule[1]}"
        if rule[0] == "yaml" and rule[1] in positions:
            return _from_file(where, positions[rule[1]])
    key = file_key(name)
    backend = re.fullmatch(r"backends\.([^.]+)\.(keys|base_url)", name)
    if backend is not None:
        return _backend_origin(backend.group(1), backend.group(2), where, env, positions)
    if key in positions:
        return _from_file(where, positions[key])
    parent = re.match(r"backends\.([^.]+)\.", name)
    if parent and f"backends.{parent.group(1)}" not in positions:
        return "built-in"
    return "default"


def _backend_origin(
    name: str, part: str, where: str, env: Mapping[str, str], positions: Mapping[str, Position],
) -> str:
    base = f"backends.{name}"
    keys = ("api_key", "api_keys") if part == "keys" else ("base_url", "api_url")
    found = [_from_file(where, positions[f"{base}.{k}"], _item_variables(positions, f"{base}.{k}"))
             for k in keys if f"{base}.{k}" in positions]
    if found:
        return "; ".join(found)
    variables_ = ("OPENAI_API_KEY",) if part == "keys" else (
        "OPENAI_API_BASE_URL", "OPENAI_BASE_URL")
    for variable in variables_:
        if env.get(variable) and name == "openai":
            return f"env {variable}"
    return "built-in" if base not in positions else "default"


def _item_variables(positions: Mapping[str, Position], key: str) -> list[str]:
    """
    The variables the items of the list at C{key} refer to.
    """
    refs: list[str] = []
    i = 0
    while f"{key}[{i}]" in positions:
        refs += variables(positions[f"{key}[{i}]"])
        i += 1
    return refs


def _from_file(where: str, position: Position, more: Sequence[str] = ()) -> str:
    refs = list(dict.fromkeys([*variables(position), *more]))
    uses = f", {', '.join('${' + r + '}' for r in refs)}" if refs else ""
    return f"{where}:{position.line}{uses}"


def main(
    overrides: Overrides, probing: bool, kinds: Sequence[BackendKind],
    out: TextIO | None = None,
) -> NoReturn:
    """
    Check (and with C{probing}, probe), print the report, and exit 0 or 1.
    """
    stream = out or sys.stdout
    report = check(overrides, kinds=kinds)
    report.write(stream)
    config = report.config
    if config is None or not probing:
        sys.exit(0 if config is not None else 1)

    async def probe_and_exit(reactor: Any) -> None:
        assert config is not None
        probes = await probe(config, reactor, kinds, config.backends and min(
            b.connect_timeout for b in config.backends.values()) or 10.0)
        for result in probes:
            stream.write(result.line + "\n")
        stream.flush()
        raise SystemExit(1 if any(p.failed for p in probes) else 0)

    stream.flush()
    react(lambda reactor: Deferred.fromCoroutine(probe_and_exit(reactor)))
    raise AssertionError("react exits")  # pragma: no cover


__all__ = ["MAX_ERRORS", "Report", "check", "main"]
