# -*- test-case-name: tests.test_capture_writer -*-
"""
The capture file, written by the writer thread only: created 0600, a
header entry first, and when rotation is on, shifted current -> C{.1} ->
C{.2} ... past a size or an age, the oldest deleted past a count or a
total size.
"""

from __future__ import annotations

import os
import time
from typing import BinaryIO, Callable

#: Rotated files kept when rotation is on and C{max_files} is not set.
DEFAULT_MAX_FILES = 5


def open_private(path: str) -> BinaryIO:
    """
    Open C{path} for appending, creating it (and its folder) readable by
    its owner only.
    """
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab")


class CaptureFile:
    """
    The current capture file and its rotated predecessors.

    @param header: the bytes each new file starts with.
    @param opener: opens a path for appending (tests pass a fake disk).
    @param now: the wall clock, for the rotation interval.
    """

    def __init__(
        self, path: str, header: Callable[[], bytes], *, max_bytes: int = 0,
        max_files: int = 0, interval: float = 86400.0, total_max_bytes: int = 100 << 20,
        rotates: bool = False, opener: Callable[[str], BinaryIO] = open_private,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._header = header
        self.max_bytes = max_bytes
        self.max_files = (max_files or DEFAULT_MAX_FILES) if rotates else 0
        self.interval = interval
        self.total_max_bytes = total_max_bytes
        self.rotates = rotates
        self._opener = opener
        self._now = now
        self._file: BinaryIO | None = None
        self._size = 0
        self._opened = 0.0
        self._fresh = True

    def open(self) -> None:
        """
        Open the current file (appending, a header first), if not open.
        """
        if self._file is not None:
            return
        self._file = self._opener(self.path)
        self._opened = self._now()
        try:
            self._size = os.path.getsize(self.path)
        except OSError:
            self._size = 0
        self._write(self._header())
        self._fresh = True

    def write(self, data: bytes) -> None:
        """
        Append C{data} (whole lines), rotating first if it is time.
        """
        self.open()
        if self.rotates and self._due(len(data)):
            self.rotate()
        self._write(data)
        self._fresh = False

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _due(self, incoming: int) -> bool:
        if self._fresh:
            return False  # a file holds at least one batch, however big
        if self.max_bytes and self._size + incoming > self.max_bytes:
            return True
        return self._now() - self._opened >= self.interval

    def rotate(self) -> None:
        """
        Shift the files by one and start a new current file.
        """
        self.close()
        for n in range(self.max_files, 0, -1):
            older = f"{self.path}.{n}"
            if n == self.max_files:
                _remove(older)
            elif os.path.exists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        if os.path.exists(self.path):
            os.replace(self.path, f"{self.path}.1")
        self._trim()
        self.open()

    def _trim(self) -> None:
        """
        Delete the oldest rotated files while all of them together pass
        C{total_max_bytes}.
        """
        rotated = [f"{self.path}.{n}" for n in range(1, self.max_files + 1)]
        existing = [p for p in rotated if os.path.exists(p)]
        total = sum(os.path.getsize(p) for p in existing)
        while existing and total > self.total_max_bytes:
            oldest = existing.pop()
            total -= os.path.getsize(oldest)
            _remove(oldest)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


__all__ = ["DEFAULT_MAX_FILES", "CaptureFile", "open_private"]
