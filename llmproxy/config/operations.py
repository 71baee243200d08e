# -*- test-case-name: tests.test_metrics -*-
"""
The operations sections: C{metrics} (the Prometheus endpoint) and
C{access_log} (one line per reply, text or JSON, to the main log, standard
output or a file rotated by size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmproxy.config.reader import Reader

#: The values C{access_log.format} takes.
ACCESS_FORMATS = ("text", "json")


@dataclass(frozen=True)
class MetricsConfig:
    """
    C{metrics}: C{/metrics} for Prometheus.

    @ivar listen: a Twisted endpoint serving C{/metrics} alone, without a
        proxy key; L{None}: on the main listener, behind the proxy key.
    @ivar max_models: how many models outside the configuration get a
        label of their own; the rest are counted as C{other}.
    """

    enabled: bool = True
    listen: str | None = None
    max_models: int = 50


@dataclass(frozen=True)
class AccessLogConfig:
    """
    C{access_log}: C{true}/C{false}, or a mapping of these.

    @ivar said: whether the file said anything (unsaid, the log is on in
        the foreground: C{twistd -n}, C{python -m llmproxy}).
    @ivar path: a file, C{-} for standard output, or L{None} for the main
        log.
    @ivar max_bytes: a file is rotated past this size (C{FILE.1}, ...).
    @ivar max_files: rotated files kept; 0 keeps them all.
    """

    said: bool = False
    format: str = "text"
    path: str | None = None
    max_bytes: int = 100 * 1024 * 1024
    max_files: int = 5


def metrics_config(top: Reader) -> MetricsConfig:
    """
    The C{metrics} section (C{metrics: false} turns it off).
    """
    raw = top.get("metrics", (bool, dict), True)
    if isinstance(raw, bool):
        return MetricsConfig(enabled=raw)
    reader = top.child("metrics", raw)
    config = MetricsConfig(
        enabled=bool(reader.get("enabled", bool, True)),
        listen=reader.get("listen", str) or None,
        max_models=reader.integer("max_models", 50),
    )
    reader.finish()
    return config


def access_log_config(top: Reader) -> tuple[bool, AccessLogConfig]:
    """
    The C{access_log} section: whether it is on, and how it writes.  A
    mapping turns it on unless it says C{enabled: false}.
    """
    raw: Any = top.get("access_log", (bool, dict))
    if raw is None:
        return False, AccessLogConfig()
    if isinstance(raw, bool):
        return raw, AccessLogConfig(said=True)
    reader = top.child("access_log", raw)
    enabled = bool(reader.get("enabled", bool, True))
    form = reader.get("format", str, "text")
    if form not in ACCESS_FORMATS:
        raise reader.fail("format", "must be text or json")
    config = AccessLogConfig(
        said=True, format=form, path=reader.get("path", str) or None,
        max_bytes=reader.integer("max_bytes", 100 * 1024 * 1024, minimum=1),
        max_files=reader.integer("max_files", 5),
    )
    reader.finish()
    return enabled, config


__all__ = ["ACCESS_FORMATS", "AccessLogConfig", "MetricsConfig", "access_log_config",
           "metrics_config"]
