# -*- test-case-name: tests.test_state_config -*-
"""
The C{state:} setting: where state shared by several processes lives.

  - C{memory} (the default for one process): in this process only;
  - C{sqlite:///path/to/state.db} (one host; relative with two slashes,
    C{sqlite://state.db}): the default when C{workers} is above 1, as
    C{llmproxy-state.db} in the directory llmproxy runs in;
  - C{redis://[:password@]host[:port][/db]} (many hosts), C{rediss://} for
    TLS; the password from the URL, else from C{REDIS_PASSWORD}.

C{state:} is either that URL or a mapping with C{url}, C{timeout} (the
longest a request waits for the store, seconds) and C{poll} (how often
SQLite is read for other processes' facts, seconds, at most 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from llmproxy.config.reader import Reader

#: The SQLite file C{--workers N} uses when no C{state:} is set.
DEFAULT_SQLITE = "llmproxy-state.db"


@dataclass(frozen=True)
class StateConfig:
    """
    The store shared state lives in.

    @ivar kind: C{memory}, C{sqlite} or C{redis}.
    @ivar url: as configured, without a password (for status and logs).
    @ivar path: the SQLite file.
    @ivar host: Redis host; C{port}, C{db}, C{password}, C{tls} likewise.
    @ivar timeout: the longest a request waits for the store (seconds).
    @ivar poll: how often SQLite is read for others' facts (seconds).
    """

    kind: str = "memory"
    url: str = "memory"
    path: str = ""
    host: str = ""
    port: int = 6379
    db: int = 0
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    timeout: float = 2.0
    poll: float = 0.1


def parse_state_url(url: str, environ: Mapping[str, str]) -> StateConfig:
    """
    The store C{url} names.

    @raise ValueError: with the problem, for a URL that names no store.
    """
    text = url.strip()
    if text == "memory":
        return StateConfig()
    scheme, _, rest = text.partition("://")
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") and rest[1:2] == "/" else rest
        if not path:
            raise ValueError("sqlite:// needs a file, e.g. sqlite:///var/lib/llmproxy/state.db")
        return StateConfig("sqlite", text, path=path)
    if scheme in ("redis", "rediss"):
        return _redis(text, environ)
    raise ValueError("expected memory, sqlite:///path/to/state.db or redis://host:port/db, "
                     f"not {_masked(text)!r}")


def _redis(text: str, environ: Mapping[str, str]) -> StateConfig:
    parts = urlsplit(text)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{_masked(text)!r}: the port is not a number") from None
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"{_masked(text)!r}: the database must be a number, not {path!r}")
    if not parts.hostname:
        raise ValueError(f"{_masked(text)!r}: no host")
    query = set(parse_qs(parts.query, keep_blank_values=True))
    if parts.fragment or query - {"ssl_ca_certs"} or (query and parts.scheme != "rediss"):
        raise ValueError(f"{_masked(text)!r}: no fragment, and no query but ssl_ca_certs "
                         "(with rediss://)")
    password = unquote(parts.password) if parts.password else environ.get("REDIS_PASSWORD")
    return StateConfig("redis", _masked(text), host=parts.hostname, port=port, db=int(path),
                       password=password or None, tls=parts.scheme == "rediss")


def _masked(url: str) -> str:
    """
    C{url} with any password replaced by C{***}.
    """
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}{sep}{auth.partition(':')[0]}:***@{host}"


def state_config(top: Reader, workers: int) -> StateConfig:
    """
    The C{state} setting (see the module), SQLite in the working directory
    when unset and C{workers} is above 1.
    """
    raw = top.get("state", (str, dict))
    if raw is None:
        return parse_state_url(f"sqlite://{DEFAULT_SQLITE}", {}) if workers > 1 \
            else StateConfig()
    reader = top.child("state", raw) if isinstance(raw, dict) else None
    url = raw if reader is None else reader.get("url", str, "memory")
    try:
        config = parse_state_url(url, top.environ or {})
    except ValueError as e:
        raise top.fail("state" if reader is None else "state.url", str(e))
    if reader is not None:
        config = _tuning(reader, config)
    return config


def _tuning(reader: Reader, config: StateConfig) -> StateConfig:
    timeout = reader.number("timeout", config.timeout, minimum=0.05)
    poll = reader.number("poll", config.poll, minimum=0.01)
    reader.finish()
    if poll > 0.25:
        raise reader.fail("poll", "must be at most 0.25 (other processes' facts arrive late)")
    return replace(config, timeout=timeout, poll=poll)


__all__ = ["DEFAULT_SQLITE", "StateConfig", "parse_state_url", "state_config"]
