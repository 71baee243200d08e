"""
llmproxy under attack: its config (auth on, a small time budget, one
backend per fault), its process (started and stopped with the bench's
helpers), and the tracebacks in its log.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from pathlib import Path

from bench import REPO_ROOT
from bench.adversary import (
    BODY_LIMIT, BUDGET, GOOD, IDLE_TIMEOUT, PROXY_KEY, STALL, TIMEOUT,
)
from bench.adversary.faults import FAULTS, backend_name
from bench.arms import bench_env
from bench.procs import ProcessSet, Server, free_port, wait_until


def config_text(port: int, upstream: int) -> str:
    """
    The YAML config: C{good} (the default) and C{stall} are healthy, each
    C{f-<fault>} backend reaches the upstream's C{/<fault>} prefix.
    """
    def backend(name: str, prefix: str) -> str:
        return (f"  {name}:\n    type: openai\n"
                f"    base_url: http://127.0.0.1:{upstream}/{prefix}/v1\n"
                f"    api_key: sk-adversary\n    timeout: {TIMEOUT:g}\n"
                f"    connect_timeout: {TIMEOUT:g}\n    idle_timeout: {IDLE_TIMEOUT:g}\n")

    return (
        f'listen: "tcp:{port}:interface=127.0.0.1"\n'
        f'proxy_keys: ["{PROXY_KEY}"]\n'
        f"default_backend: {GOOD}\n"
        f"max_body_bytes: {BODY_LIMIT}\n"
        "failure_handling:\n"
        f"  total_timeout_budget: {BUDGET:g}\n"
        "  max_wait: 1\n"
        "  keepalive_after: 1\n"
        "  keepalive_interval: 1\n"
        "  circuit_threshold: 5\n"
        "  circuit_cooldown: 30\n"
        "backends:\n"
        + backend(GOOD, "ok") + backend(STALL, "ok")
        + "".join(backend(backend_name(f), f.name) for f in FAULTS)
    )


def healthz(port: int, timeout: float = 1.0) -> bool:
    """
    Whether C{GET /healthz} answers 200 right now.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                piece = sock.recv(4096)
                if not piece:
                    break
                data += piece
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200")


def start_proxy(procs: ProcessSet, workdir: Path, upstream: int,
                timeout: float = 30.0) -> Server:
    """
    Start llmproxy against the upstream and wait until it serves.
    """
    port = free_port()
    config = workdir / "adversary.yaml"
    config.write_text(config_text(port, upstream))
    server = procs.spawn("llmproxy", [sys.executable, "-m", "llmproxy", "--config", str(config)],
                         port, cwd=REPO_ROOT)
    wait_until(lambda: healthz(port), timeout, server, interval=0.05)
    return server


def env() -> dict[str, str]:
    """
    The proxy's environment: the bench's (no llmproxy variables leak in).
    """
    return bench_env()


_TRACEBACK = "Traceback (most recent call last):"


def tracebacks(log: str) -> tuple[int, Counter[str]]:
    """
    How many tracebacks C{log} holds, and their exception types (the first
    line after the frames; Twisted indents a logged failure by one tab).
    """
    count = 0
    kinds: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if _TRACEBACK not in line:
            continue
        count += 1
        kind = "?"
        for later in lines[i + 1:i + 400]:
            text = later[1:] if later.startswith("\t") else later
            if not text.strip() or text.startswith((" ", "---")):
                continue
            kind = text.split(":", 1)[0].strip()[:120]
            break
        kinds[kind] += 1
    return count, kinds


__all__ = ["config_text", "env", "healthz", "start_proxy", "tracebacks"]
