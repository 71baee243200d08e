"""
The capture writer and its file: flush by size, count and time (on a
L{Clock}), the bounded buffer (a stalled disk drops and counts, never
blocks), flush on stop, rotation and the file's mode.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.capture.entries import Record, render
from llmproxy.capture.rotate import CaptureFile
from llmproxy.capture.writer import FLUSH_BYTES, FLUSH_ENTRIES, FLUSH_SECONDS, CaptureWriter


class MemorySink:
    """
    A disk in memory: each write is one element of C{writes}; with
    C{gate} cleared, writes block until it is set (a stalled disk).
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False

    def open(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.gate.wait()
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for chunk in self.writes for line in chunk.splitlines()]


def record(body: bytes = b"{}") -> Record:
    return Record("inbound_request", 0.0, "client", "proxy", body=body)


class WriterTests(SynchronousTestCase):
    def writer(self, **kwargs: Any) -> tuple[CaptureWriter, MemorySink, Clock]:
        sink, clock = MemorySink(), Clock()
        writer = CaptureWriter(sink, clock, render, **kwargs)
        self.addCleanup(sink.gate.set)
        return writer, sink, clock

    def test_flush_by_count(self) -> None:
        writer, sink, clock = self.writer()
        for _ in range(FLUSH_ENTRIES - 1):
            writer.record(record())
        writer._queue.join()
        self.assertEqual(sink.writes, [])
        writer.record(record())
        writer._queue.join()
        self.assertEqual(len(sink.writes), 1)
        self.assertEqual(len(sink.entries()), FLUSH_ENTRIES)

    def test_flush_by_size(self) -> None:
        writer, sink, clock = self.writer()
        writer.record(record(b"x" * (FLUSH_BYTES // 2)))
        writer._queue.join()
        self.assertEqual(sink.writes, [])
        writer.record(record(b"x" * (FLUSH_BYTES // 2)))
        writer._queue.join()
        self.assertEqual(len(sink.entries()), 2)

    def test_flush_by_time(self) -> None:
        writer, sink, clock = self.writer()
        writer.record(record())
        clock.advance(FLUSH_SECONDS - 0.01)
        writer._queue.join()
        self.assertEqual(sink.writes, [])
        clock.advance(0.01)
        writer._queue.join()
        self.assertEqual(len(sink.entries()), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_seq_increasing(self) -> None:
        writer, sink, clock = self.writer()
        for _ in range(250):
            writer.record(record())
        writer.drain()
        seqs = [e["seq"] for e in sink.entries()]
        self.assertEqual(seqs, list(range(1, 251)))

    def test_flush_on_stop(self) -> None:
        writer, sink, clock = self.writer()
        writer.startService()
        writer.record(record())
        writer.stopService()
        self.assertEqual(len(sink.entries()), 1)
        self.assertTrue(sink.closed)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stalled_disk(self) -> None:
        """
        While the disk blocks, recording never does: past the buffer,
        records are dropped and counted, and once the disk moves again a
        C{dropped} entry says how many.
        """
        writer, sink, clock = self.writer(buffer_bytes=64 * 1024, join_timeout=1.0)
        sink.gate.clear()
        for _ in range(1000):
            writer.record(record(b"y" * 1000))  # returns at once: the disk is stalled
        self.assertGreater(writer.dropped_total, 900)
        dropped = writer.dropped_total
        sink.gate.set()
        writer.drain()
        writer.record(record())
        writer.drain()
        entries = sink.entries()
        notes = [e for e in entries if e["direction"] == "dropped"]
        self.assertEqual(notes[0]["metadata"], {"dropped": dropped})
        self.assertEqual(len(entries), 1000 - dropped + 2)
        seqs = [e["seq"] for e in entries]
        self.assertEqual(seqs, sorted(set(seqs)))


class FileTests(SynchronousTestCase):
    def path(self) -> str:
        folder = self.mktemp()
        return os.path.join(folder, "capture.jsonl")

    def test_private_and_header(self) -> None:
        path = self.path()
        f = CaptureFile(path, lambda: b'{"direction":"header"}\n')
        f.write(b'{"a":1}\n')
        f.close()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as r:
            self.assertEqual(r.read(), b'{"direction":"header"}\n{"a":1}\n')

    def test_no_rotation_by_default(self) -> None:
        path = self.path()
        f = CaptureFile(path, lambda: b"h\n", max_bytes=0)
        for _ in range(100):
            f.write(b"x" * 100 + b"\n")
        f.close()
        self.assertEqual(os.listdir(os.path.dirname(path)), ["capture.jsonl"])

    def test_rotation_keeps_n_files(self) -> None:
        path = self.path()
        f = CaptureFile(path, lambda: b"h\n", max_bytes=250, max_files=3, rotates=True)
        for i in range(20):
            f.write(b"%03d" % i + b"x" * 100 + b"\n")
        f.close()
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))),
                         ["capture.jsonl", "capture.jsonl.1", "capture.jsonl.2",
                          "capture.jsonl.3"])
        with open(path + ".1", "rb") as r:
            older = r.read()
        with open(path, "rb") as r:
            newer = r.read()
        self.assertTrue(older.startswith(b"h\n") and newer.startswith(b"h\n"))
        self.assertLess(older.split(b"\n")[1][:3], newer.split(b"\n")[1][:3])
        for name in os.listdir(os.path.dirname(path)):
            full = os.path.join(os.path.dirname(path), name)
            self.assertEqual(stat.S_IMODE(os.stat(full).st_mode), 0o600)

    def test_rotation_by_age(self) -> None:
        path = self.path()
        now = [0.0]
        f = CaptureFile(path, lambda: b"h\n", max_files=2, interval=10.0, rotates=True,
                        now=lambda: now[0])
        f.write(b"a\n")
        now[0] = 5.0
        f.write(b"b\n")
        self.assertFalse(os.path.exists(path + ".1"))
        now[0] = 10.0
        f.write(b"c\n")
        f.close()
        with open(path + ".1", "rb") as r:
            self.assertEqual(r.read(), b"h\na\nb\n")

    def test_total_max_bytes(self) -> None:
        path = self.path()
        f = CaptureFile(path, lambda: b"h\n", max_bytes=1100, max_files=10,
                        total_max_bytes=2500, rotates=True)
        for _ in range(10):
            f.write(b"z" * 1000 + b"\n")
        f.close()
        rotated = [n for n in os.listdir(os.path.dirname(path)) if n != "capture.jsonl"]
        self.assertEqual(sorted(rotated), ["capture.jsonl.1", "capture.jsonl.2"])
