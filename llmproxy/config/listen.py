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

from llmproxy.config.model import OPENAI_BACKEND, BackendConfig, BackendKind, Config, ConfigError

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
