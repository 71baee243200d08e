"""
The servers under test ("arms") and how to start them against an upstream:

  - C{direct}: no server; clients talk to the upstream itself.
  - C{floor}: L{bench.floor}, the bare twisted.web + Agent pass-through.
  - C{llmproxy}: llmproxy with a realistic config (auth on, an alias
    route, a pool of 3 keys), one process.
  - C{llmproxy-w2}: the same with C{--workers 2}, when llmproxy has it.

Not run unless named (C{--arms}), to measure what a feature costs:
C{llmproxy-nometrics} (C{metrics: false}) and C{llmproxy-access} (the
access log on, as in the foreground by default; the others run with
C{access_log: false}, as a daemon does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import PROXY_KEY, REPO_ROOT
from bench.client import probe_chat
from bench.payloads import request_body
from bench.procs import ProcessSet, Server, free_port, process_tree, wait_until

#: Environment variables llmproxy reads that must not leak into the bench.
_SCRUB_PREFIXES = ("OPENAI_", "LLMPROXY_", "LLM_")
_SCRUB = ("APP_HOST", "APP_PORT", "CONFIG_FILE", "STATIC_ROUTE")

CONFIG_TEMPLATE = """\
listen: "tcp:{port}:interface=127.0.0.1"
proxy_keys: ["{key}"]
default_backend: openai
backends:
  openai:
    type: openai
    base_url: http://127.0.0.1:{upstream}/v1
    api_keys: ["sk-bench-1", "sk-bench-2", "sk-bench-3"]
model_aliases:
  - {{pattern: "^gpt-4$", replacement: "openai:gpt-4o-mini"}}
access_log: false
"""


@dataclass(frozen=True)
class Arm:
    """
    One server under test.

    @ivar kind: C{direct}, C{floor} or C{llmproxy}.
    @ivar workers: the C{--workers} value for llmproxy (None: not passed).
    @ivar extra: YAML lines that replace the config's last ones (C{access_log}).
    """

    name: str
    kind: str
    label: str
    workers: int | None = None
    extra: str = ""


ARMS = (
    Arm("direct", "direct", "direct to upstream"),
    Arm("floor", "floor", "floor (twisted.web + Agent)"),
    Arm("llmproxy", "llmproxy", "llmproxy, 1 process"),
    Arm("llmproxy-w2", "llmproxy", "llmproxy --workers 2", workers=2),
)
#: Arms run only when named with C{--arms}.
EXTRA_ARMS = (
    Arm("llmproxy-nometrics", "llmproxy", "llmproxy, metrics off",
        extra="access_log: false\nmetrics: false\n"),
    Arm("llmproxy-access", "llmproxy", "llmproxy, access log on", extra="access_log: true\n"),
)


@dataclass
class Running:
    """
    An arm serving on a port (C{server} is None for the direct arm).
    """

    arm: Arm
    port: int
    server: Server | None
    startup_s: float | None
    processes: int
    pid: int | None = None

    def __post_init__(self) -> None:
        if self.pid is None and self.server is not None:
            self.pid = self.server.pid


def bench_env() -> dict[str, str]:
    """
    The environment of every subprocess: this one without llmproxy's
    variables, with the repository on the import path.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB}
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def llmproxy_help() -> str:
    """
    The text of C{python -m llmproxy --help} (empty when it fails).
    """
    try:
        out = subprocess.run([sys.executable, "-m", "llmproxy", "--help"], capture_output=True,
                             text=True, timeout=60, cwd=str(REPO_ROOT), env=bench_env())
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def workers_available(help_text: str) -> bool:
    """
    Whether llmproxy's command line lists C{--workers}.
    """
    return "--workers" in help_text


def write_config(workdir: Path, port: int, upstream: int, extra: str = "") -> Path:
    """
    The realistic llmproxy config for a run on C{port} against C{upstream}
    (with C{extra} for its C{access_log} line).
    """
    path = workdir / f"llmproxy-{port}.yaml"
    text = CONFIG_TEMPLATE.format(port=port, upstream=upstream, key=PROXY_KEY)
    if extra:
        text = text.removesuffix("access_log: false\n") + extra
    path.write_text(text)
    return path


def server_argv(arm: Arm, port: int, upstream: int, workdir: Path) -> list[str]:
    """
    The command line serving C{arm} on C{port}.
    """
    if arm.kind == "floor":
        return [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream",
                f"http://127.0.0.1:{upstream}/v1/chat/completions"]
    argv = [sys.executable, "-m", "llmproxy", "--config", str(write_config(workdir, port, upstream,
                                                                         arm.extra))]
    if arm.workers is not None:
        argv += ["--workers", str(arm.workers)]
    return argv


def start(arm: Arm, upstream: int, procs: ProcessSet, workdir: Path,
          upstream_pid: int | None = None, timeout: float = 30.0) -> Running:
    """
    Start C{arm} forwarding to the upstream port and wait until it serves
    a chat completion; the time that took is its startup time.  The
    direct arm is the upstream itself (C{upstream_pid}).
    """
    if arm.kind == "direct":
        return Running(arm, upstream, None, None, 0, upstream_pid)
    port = free_port()
    argv = server_argv(arm, port, upstream, workdir)
    body = request_body(False)
    began = time.perf_counter()
    server = procs.spawn(arm.name, argv, port, cwd=REPO_ROOT)
    wait_until(lambda: probe_chat(port, body) == 200, timeout, server)
    startup = time.perf_counter() - began
    return Running(arm, port, server, startup, len(process_tree(server.pid)))


__all__ = ["ARMS", "EXTRA_ARMS", "Arm", "Running", "bench_env", "llmproxy_help", "server_argv", "start",
           "workers_available", "write_config"]
