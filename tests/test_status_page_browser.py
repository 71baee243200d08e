"""
The status page in a real browser: headless Chromium (the Debian package
C{chromium-headless-shell}, which C{.ci/run} installs) loads it from an
in-process llmproxy, takes a screenshot, in which each section's marker
colour must appear, and dumps its DOM, which must show each section and,
after the fake upstream answered 429 on a key, that key rate-limited with
its cooldown.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from llmproxy.frontends.status_page import MARKERS
from llmproxy.testing import Reply, openai_config
from tests.harness import post, start

CHROMIUM = shutil.which("chromium-headless-shell") or "/usr/bin/chromium-headless-shell"
WIDTH, HEIGHT = 1280, 2000
#: Seconds one browser run may take before it is killed.
BROWSER_TIMEOUT = 15.0
KEYS = ("sk-browser-a", "sk-browser-b")
#: The background of a warning state (rate_limited), as the page's style has it.
WARN = bytes.fromhex("fff1c2")
RATE_LIMITED = Reply(429, {"error": {"message": "Rate limit reached", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})


def browse(*arguments: str) -> bytes:
    """
    Run headless Chromium with C{arguments} in its own process group and a
    fresh profile; its standard output.  On a timeout or a failure the whole
    group is killed and the test fails.
    """
    with tempfile.TemporaryDirectory(prefix="llmproxy-chromium-") as profile:
        command = [CHROMIUM, "--no-sandbox", "--disable-gpu", "--force-color-profile=srgb",
                   "--hide-scrollbars", f"--user-data-dir={profile}", *arguments]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            out, err = process.communicate(timeout=BROWSER_TIMEOUT)
        finally:
            if process.poll() is None or process.returncode != 0:
                _kill_group(process)
        if process.returncode != 0:
            raise AssertionError(f"chromium exited {process.returncode}: {err[-2000:]!r}")
        return out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """
    The width, height and rows of RGB bytes of an 8-bit, non-interlaced
    RGB or RGBA PNG (what Chromium writes), its filters undone.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        crc, = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and colour in (2, 6), (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    assert len(raw) == height * (stride + 1), "truncated image data"
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        row = _unfilter(line[0], line[1:], previous, channels)
        rows.append(row if channels == 3 else
                    b"".join(row[i:i + 3] for i in range(0, stride, 4)))
        previous = row
    return width, height, rows


def _unfilter(kind: int, line: bytes, up: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:  # bytewise sums, eight bits at a time in one big integer
        n = len(line)
        a, b = int.from_bytes(line, "big"), int.from_bytes(up, "big")
        low, high = int("7f" * n, 16), int("80" * n, 16)
        return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(n, "big")
    out = bytearray(line)
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        if kind == 1:
            out[i] = (out[i] + left) & 255
        elif kind == 3:
            out[i] = (out[i] + ((left + up[i]) >> 1)) & 255
        else:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + up[i] - corner
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
            guess = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
            out[i] = (out[i] + guess) & 255
    return bytes(out)


def colours(rows: list[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    for row in rows:
        found.update(row[i:i + 3] for i in range(0, len(row), 3))
    return found


def section(dom: str, name: str) -> str:
    found = re.search(f'<section id="{name}">(.*?)</section>', dom, re.S)
    assert found, f"no section {name} in the DOM"
    return found.group(1)


class BrowserTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(f"{CHROMIUM} is not installed (Debian package "
                           "chromium-headless-shell; .ci/run installs it)")

    async def test_every_section_and_a_rate_limited_key(self) -> None:
        clock = Clock()  # llmproxy's timers and history: cooldowns and buckets hold still
        clock.advance(1_000_000.0)
        proxy = await start(self, lambda upstream: openai_config(upstream, KEYS), clock=clock)
        seen = await self.screenshot(proxy.url + "/status")
        self.assertGreater(len(seen), 20, "the screenshot is not blank")
        for name, rgb in MARKERS.items():
            self.assertIn(bytes(rgb), seen, f"section {name} is not drawn")
        self.assertNotIn(WARN, seen)

        # A real browser's Accept header gets the page at the JSON's address.
        dom = (await deferToThread(browse, "--dump-dom",
                                   proxy.url + "/v1/llmproxy/status")).decode("utf-8")
        for name in MARKERS:
            section(dom, name)
        self.assertRegex(section(dom, "keys"), r'<td>openai#1</td><td><span class="good">ok')

        proxy.fake.by_key[KEYS[0]] = [RATE_LIMITED]
        status, headers, _ = await post(self, proxy.url + "/v1/chat/completions", {
            "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
        dom = (await deferToThread(browse, "--dump-dom", proxy.url + "/status")).decode()
        keys = section(dom, "keys")
        self.assertIn('<td>openai#1</td><td><span class="warn">rate_limited</span></td>'
                      "<td>30 s</td>", keys)
        self.assertRegex(keys, r'<td>openai#2</td><td><span class="good">ok')
        self.assertIn("requests per second: latest 0.1 req/s", section(dom, "traffic"))
        for key in KEYS:
            self.assertNotIn(key, dom)
        self.assertIn(WARN, await self.screenshot(proxy.url + "/status"),
                      "the rate-limited key is drawn in the warning colour")

    async def screenshot(self, url: str) -> set[bytes]:
        """
        The colours of a screenshot of C{url}, of the expected size.
        """
        shot = Path(self.mktemp() + ".png")
        await deferToThread(browse, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                            url)
        width, height, rows = png_pixels(shot.read_bytes())
        self.assertEqual((width, height), (WIDTH, HEIGHT))
        return colours(rows)


class PNGTests(TestCase):
    def test_filters_undone(self) -> None:
        """
        The decoder against an image whose rows use each filter, made here.
        """
        pixels = [bytes([(x * 40 + y * 7) % 256, (x * y) % 256, 200 - x]) * 1
                  for y in range(5) for x in range(4)]
        rows = [b"".join(pixels[y * 4:(y + 1) * 4]) for y in range(5)]
        raw = b""
        previous = bytes(12)
        for kind, row in enumerate(rows):
            raw += bytes([kind]) + _filter(kind, row, previous)
            previous = row
        header = struct.pack(">IIBBBBB", 4, 5, 8, 2, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + \
            _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
        self.assertEqual(png_pixels(data), (4, 5, rows))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter(kind: int, row: bytes, up: bytes) -> bytes:
    out = bytearray()
    for i, value in enumerate(row):
        left = row[i - 3] if i >= 3 else 0
        corner = up[i - 3] if i >= 3 else 0
        p = left + up[i] - corner
        paeth = min((abs(p - left), 0, left), (abs(p - up[i]), 1, up[i]),
                    (abs(p - corner), 2, corner))[2]
        predicted = [0, left, up[i], (left + up[i]) >> 1, paeth][kind]
        out.append((value - predicted) & 255)
    return bytes(out)


__all__: list[Any] = []
