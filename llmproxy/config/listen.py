# -*- test-case-name: tests.test_config,tests.test_workers -*-
"""
Where llmproxy listens, and what that forbids: serving beyond loopback
without proxy keys, and backends that would forward to llmproxy itself.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.internet.endpoints import serverFromString

from llmproxy.config.error import ConfigError
from llmproxy.config.model import OPENAI_BACKEND, BackendConfig, BackendKind, Config
from llmproxy.config.reader import did_you_mean

_TCP = re.compile(r"^tcp6?:(?P<port>\d+)(?P<rest>(?::[^:]+=[^:]*)*)$")
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


@dataclass(frozen=True)
class TCPAddress:
    """
    Where a C{tcp:} endpoint string listens.
    """

    host: str
    port: int
    backlog: int = 1024

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def parse_tcp(description: str) -> TCPAddress | None:
    """
    The address of a plain C{tcp:PORT[:interface=HOST][:backlog=N]}
    endpoint string, or L{None} for any other kind.
    """
    match = _TCP.match(description.replace("\\:", "\x00"))
    if match is None:
        return None
    options = dict(
        part.split("=", 1) for part in match.group("rest").split(":") if part
    )
    default = "::" if description.startswith("tcp6:") else "0.0.0.0"
    host = options.get("interface", default).replace("\x00", ":")
    backlog = int(options.get("backlog", "1024"))
    return TCPAddress(host, int(match.group("port")), backlog)


MAX_PORT = 65535
_TCP_OPTIONS = ("interface", "backlog")


def port_problem(port: int) -> str | None:
    """
    What is wrong with a TCP port number, if anything.
    """
    if not 0 <= port <= MAX_PORT:
        return f"{port} is not a port number (0-{MAX_PORT})"
    return None


def listen_problem(description: str) -> str | None:
    """
    What is wrong with a Twisted server endpoint string, if anything:
    L{_tcp_problem} for C{tcp:}/C{tcp6:}, then whatever Twisted's own
    parser refuses (it builds the endpoint without touching a reactor; an
    C{ssl:} one reads its certificate files).
    """
    kind = description.partition(":")[0]
    problem = _tcp_problem(description) if kind in ("tcp", "tcp6") else None
    if problem is not None:
        return f"{description!r}: {problem}"
    try:
        serverFromString(None, description)
    except Exception as e:  # an endpoint parser (a plugin's too) may raise anything
        return f"{description!r} is not a valid endpoint: {e}"
    return None


def _tcp_problem(description: str) -> str | None:
    """
    The usual mistakes in a C{tcp:PORT[:interface=HOST][:backlog=N]}
    string, in plainer words than Twisted's parser has for them.
    """
    port, *options = description.replace("\\:", "\x00").split(":")[1:] or [""]
    if not (port.isascii() and port.isdigit()):
        return f"port {port!r} is not a number"
    if int(port) > MAX_PORT:
        return f"port {port} is out of range (0-{MAX_PORT})"
    for option in options:
        name, eq, value = option.partition("=")
        if eq and name not in _TCP_OPTIONS:
            return (f"unknown option {name!r} (known: {', '.join(_TCP_OPTIONS)})"
                    + did_you_mean(name, _TCP_OPTIONS))
        if name == "backlog" and not (value.isascii() and value.isdigit() and int(value) > 0):
            return f"backlog {value!r} is not a positive number"
    return None


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


def check_personal_accounts(
    config: Config, kinds: Mapping[str, BackendKind]
) -> tuple[str, ...]:
    """
    Refuse to serve a backend of personal subscription accounts
    (L{BackendKind.loopback_only}) beyond loopback unless the config allows
    it; when it does, the warning to log.
    """
    personal = sorted(n for n, b in config.backends.items() if kinds[b.type].loopback_only)
    if not personal or is_loopback_endpoint(config.listen):
        return ()
    names = ", ".join(repr(n) for n in personal)
    if not config.allow_remote_codex:
        raise ConfigError(
            f"refusing to listen on {config.listen!r}: backend {names} serves a ChatGPT "
            "subscription, and subscription accounts used by several people get banned; "
            "listen on 127.0.0.1, or set allow_remote_codex: true if only you reach it"
        )
    return (f"backend {names} serves a ChatGPT subscription beyond this machine "
            f"(allow_remote_codex: true, listening on {config.listen}): do not share it",)


def _points_at(url: str, listen: str) -> bool:
    """
    Whether C{url} would reach this llmproxy's own C{tcp:} listener.
    """
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


def without_self_loop(
    backends: Mapping[str, BackendConfig], listen: str, data: Mapping[str, Any],
    source: str, kinds: Mapping[str, BackendKind],
) -> tuple[Mapping[str, BackendConfig], tuple[str, ...]]:
    """
    No backend may forward to llmproxy itself.  The usual cause is the SDK's
    own C{OPENAI_BASE_URL}, pointed at llmproxy, seen by llmproxy too: that
    one is ignored with a warning (the backend keeps its type's default
    URL); a configured URL is an error.

    @param data: the YAML, to tell a configured URL from one the
        environment gave.
    @return: the backends, fixed, and the warnings to log.
    """
    warnings = []
    fixed = dict(backends)
    for name, backend in backends.items():
        kind = kinds[backend.type]
        if not kind.uses_url or not _points_at(backend.base_url, listen):
            continue
        raw = (data.get("backends") or {}).get(name) or {}
        configured = isinstance(raw, dict) and bool(raw.get("base_url") or raw.get("api_url"))
        if name == OPENAI_BACKEND and kind.openai_env and not configured:
            fixed[name] = replace(backend, base_url=kind.default_url)
            warnings.append(
                f"OPENAI_BASE_URL/OPENAI_API_BASE_URL ({backend.base_url}) is llmproxy's own "
                f"address {listen}; backend {name!r} uses {kind.default_url} instead"
            )
            continue
        raise ConfigError(
            f"{source}: backends.{name}.base_url: {backend.base_url} is llmproxy's own "
            f"address ({listen}); requests would loop"
        )
    return MappingProxyType(fixed), tuple(warnings)
