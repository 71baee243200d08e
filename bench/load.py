"""
Throughput load at a given concurrency: wrk when it is installed (a Lua
script sets the POST body and headers), else the built-in asyncio load
generator in a subprocess (L{bench.loadgen}).  Either way the result is a
dict with at least C{tool}, C{rps}, C{requests}, C{errors}, C{p50_ms},
C{p99_ms}.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import CHAT_PATH, PROXY_KEY, REPO_ROOT
from bench.payloads import request_body

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_binary() -> str | None:
    """
    The wrk executable, if installed.
    """
    return shutil.which("wrk")


def wrk_script(path: Path, stream: bool) -> Path:
    """
    Write the Lua script that makes wrk POST the chat body.
    """
    body = request_body(stream).decode("utf-8")
    if "]]" in body:
        raise ValueError("request body cannot hold ']]' in a Lua long string")
    accept = "text/event-stream" if stream else "application/json"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Accept"] = "{accept}"\n'
        f'wrk.headers["Authorization"] = "Bearer {PROXY_KEY}"\n'
    )
    return path


def _duration_ms(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """
    The numbers of a C{wrk --latency} report.
    """
    result: dict[str, Any] = {"tool": "wrk", "errors": 0}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", output):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+)", output):
        result["requests"] = int(m.group(1))
        result["seconds"] = (_duration_ms(m.group(2) + m.group(3)) or 0.0) / 1000.0
    for pct in (50, 99):
        if m := re.search(rf"^\s*{pct}%\s+(\S+)", output, re.M):
            result[f"p{pct}_ms"] = _duration_ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output):
        result["errors"] += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      output):
        result["socket_errors"] = sum(int(g) for g in m.groups())
        result["errors"] += int(m.group(1)) + int(m.group(4))
    return result


def run_wrk(binary: str, port: int, conns: int, duration: float, stream: bool,
            workdir: Path) -> dict[str, Any]:
    """
    One wrk run against 127.0.0.1:port.
    """
    script = wrk_script(workdir / f"wrk-{'stream' if stream else 'json'}.lua", stream)
    threads = max(1, min(2, conns))
    argv = [binary, "-t", str(threads), "-c", str(conns), "-d", f"{max(1, round(duration))}s",
            "--timeout", "10s", "--latency", "-s", str(script),
            f"http://127.0.0.1:{port}{CHAT_PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    result = parse_wrk(out.stdout)
    if "rps" not in result:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}{out.stderr}")
    return result


def run_loadgen(port: int, conns: int, duration: float, stream: bool) -> dict[str, Any]:
    """
    One run of the built-in generator in its own process.
    """
    argv = [sys.executable, "-m", "bench.loadgen", "--mode", "throughput", "--port", str(port),
            "--conns", str(conns), "--duration", str(duration)]
    if stream:
        argv.append("--stream")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 90,
                         cwd=str(REPO_ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def run_streams(port: int, conns: int, events_per_stream: int, timeout: float) -> dict[str, Any]:
    """
    The many-concurrent-streams test (always the built-in generator).
    """
    argv = [sys.executable, "-m", "bench.loadgen", "--mode", "streams", "--port", str(port),
            "--conns", str(conns), "--events-per-stream", str(events_per_stream),
            "--timeout", str(timeout)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 120,
                         cwd=str(REPO_ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


class Loader:
    """
    Picks wrk or the built-in generator once, then runs loads with it.
    """

    def __init__(self, workdir: Path, use_wrk: bool = True) -> None:
        self.workdir = workdir
        self.wrk = wrk_binary() if use_wrk else None

    @property
    def tool(self) -> str:
        """
        A description of the load generator in use.
        """
        if self.wrk:
            return f"wrk ({self.wrk}, -t2, Lua POST script)"
        return "built-in asyncio generator (python -m bench.loadgen, own process)"

    def run(self, port: int, conns: int, duration: float, stream: bool) -> dict[str, Any]:
        """
        Keep C{conns} connections busy against the port for C{duration} s.
        """
        if self.wrk:
            return run_wrk(self.wrk, port, conns, duration, stream, self.workdir)
        return run_loadgen(port, conns, duration, stream)


__all__ = ["Loader", "parse_wrk", "run_loadgen", "run_streams", "run_wrk", "wrk_binary",
           "wrk_script"]
