# -*- test-case-name: tests.test_capture_config -*-
"""
The C{capture} section: wire capture to a JSONL file (off unless a file is
named by C{capture.file}, C{--capture FILE} or C{CAPTURE_FILE}, with
C{WIRE_CAPTURE_FILE} as an alias), its filters, buffer and rotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from llmproxy.config.reader import Reader

#: The values C{capture.bodies} takes.
BODIES = ("full", "headers-only")


@dataclass(frozen=True)
class CaptureConfig:
    """
    Where and what to capture.

    @ivar backends: capture only the attempts to these backends (and the
        client side of the requests that made one); empty: all.
    @ivar models: the same for models, the client's or an attempt's.
    @ivar sessions: capture only the requests of these sessions.
    @ivar bodies: C{full}, or C{headers-only} (no payloads).
    @ivar buffer_bytes: what may wait for the disk; past it, entries are
        dropped and counted.
    @ivar max_bytes: rotate once the file passes this size; 0: rotation
        off (unless C{max_files} is set).
    @ivar max_files: rotated files kept (C{.1} ... C{.N}).
    """

    file: str
    backends: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    bodies: str = "full"
    buffer_bytes: int = 16 * 1024 * 1024
    max_bytes: int = 0
    max_files: int = 0
    rotate_interval_seconds: float = 86400.0
    total_max_bytes: int = 100 * 1024 * 1024

    @property
    def rotates(self) -> bool:
        """
        Whether rotation is on (a size or a file count is set).
        """
        return bool(self.max_bytes or self.max_files)


def capture_config(
    top: Reader, flag: str | None, env: Mapping[str, str]
) -> CaptureConfig | None:
    """
    The C{capture} section, with the file from C{flag} (C{--capture}) >
    C{CAPTURE_FILE} > C{WIRE_CAPTURE_FILE} > C{capture.file}; L{None} when
    no file is named (capture off).
    """
    reader = top.child("capture", top.mapping("capture"))
    yaml_file = reader.get("file", str)
    file = flag or env.get("CAPTURE_FILE") or env.get("WIRE_CAPTURE_FILE") or yaml_file
    bodies = reader.get("bodies", str, "full")
    if bodies not in BODIES:
        raise reader.fail("bodies", "must be full or headers-only")
    config = CaptureConfig(
        file=file or "",
        backends=reader.strings("backends"),
        models=reader.strings("models"),
        sessions=reader.strings("sessions"),
        bodies=bodies,
        buffer_bytes=reader.integer("buffer_bytes", 16 * 1024 * 1024, minimum=1024),
        max_bytes=reader.integer("max_bytes", 0),
        max_files=reader.integer("max_files", 0),
        rotate_interval_seconds=reader.number("rotate_interval_seconds", 86400.0, 1.0),
        total_max_bytes=reader.integer("total_max_bytes", 100 * 1024 * 1024, minimum=1024),
    )
    reader.finish()
    return config if file else None


__all__ = ["BODIES", "CaptureConfig", "capture_config"]
