"""
The instant upstream: an OpenAI-shaped canned chat completion for
non-streaming requests and a canned SSE stream of N chunks paced M ms
apart for streaming ones.

Two implementations:
  - nginx (when installed): C{return 200 '<canned JSON>'} for any POST;
    fastest, so the direct arm measures the load generator, not the
    upstream.  Non-streaming only.
  - a minimal Twisted server (always available; the only one used for
    streams): C{python -m bench.upstream --serve PORT:CHUNKS:GAP_MS ...}
    listens on each PORT, the stream pacing being per port.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.payloads import completion, is_stream_request, sse_events


# the Twisted upstream


def make_site(chunks: int, gap: float) -> Any:
    """
    A twisted.web Site answering every POST with the canned completion,
    or with a paced canned stream when the body asks for one.
    """
    from twisted.internet import reactor
    from twisted.web import resource, server

    body = completion()
    length = str(len(body)).encode()
    events = sse_events(chunks)

    class Canned(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}'

        def render_POST(self, request: Any) -> Any:
            if is_stream_request(request.content.read()):
                return _start_stream(request, events, gap, reactor)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", length)
            return body

    class QuietSite(server.Site):
        noisy = False

        def log(self, request: Any) -> None:
            pass

    try:
        return QuietSite(Canned(), parsePOSTFormSubmission=False)
    except TypeError:  # Twisted without the option
        return QuietSite(Canned())


def _start_stream(request: Any, events: list[bytes], gap: float, clock: Any) -> Any:
    """
    Write C{events[0]} now and the rest C{gap} seconds apart; stop if the
    client goes away.
    """
    from twisted.web.server import NOT_DONE_YET

    request.setHeader(b"content-type", b"text/event-stream")
    request.setHeader(b"cache-control", b"no-cache")
    state: dict[str, Any] = {"next": 0, "call": None, "gone": False}

    def gone(_: object) -> None:
        state["gone"] = True
        call = state["call"]
        if call is not None and call.active():
            call.cancel()

    def tick() -> None:
        state["call"] = None
        if state["gone"]:
            return
        i = state["next"]
        request.write(events[i])
        state["next"] = i + 1
        if i + 1 < len(events):
            state["call"] = clock.callLater(gap, tick)
        else:
            request.finish()

    request.notifyFinish().addErrback(gone)
    tick()
    return NOT_DONE_YET


def parse_serve(spec: str) -> tuple[int, int, float]:
    """
    C{PORT:CHUNKS:GAP_MS} as (port, chunks, gap in seconds).
    """
    port, chunks, gap_ms = spec.split(":")
    return int(port), int(chunks), float(gap_ms) / 1000.0


def main(argv: list[str] | None = None) -> None:
    """
    Serve the canned upstream on each C{--serve PORT:CHUNKS:GAP_MS}.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--serve", action="append", required=True,
                        help="PORT:CHUNKS:GAP_MS (repeatable)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    for spec in args.serve:
        port, chunks, gap = parse_serve(spec)
        reactor.listenTCP(port, make_site(chunks, gap), backlog=4096, interface="127.0.0.1")
    reactor.run()


# nginx


def nginx_binary() -> str | None:
    """
    The nginx executable, if installed (also looked for in /usr/sbin,
    which is often not on a user's PATH).
    """
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _nginx_literal(data: bytes) -> str:
    text = data.decode("utf-8")
    for bad in ("'", "\\", "$"):
        if bad in text:
            raise ValueError(f"canned body cannot contain {bad!r} for nginx")
    return text


def nginx_config(workdir: Path, port: int) -> Path:
    """
    Write an nginx.conf in C{workdir} that answers every request on
    C{port} with the canned completion, and return its path.
    """
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(0).pw_name};\n"
    conf = f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{_nginx_literal(completion())}';
        }}
    }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_argv(binary: str, workdir: Path, port: int) -> list[str]:
    """
    The command line running nginx in the foreground on C{port}.
    """
    conf = nginx_config(workdir, port)
    return [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]


def twisted_argv(serves: list[tuple[int, int, float]]) -> list[str]:
    """
    The command line running the Twisted upstream.
    """
    argv = [sys.executable, "-m", "bench.upstream"]
    for port, chunks, gap in serves:
        argv += ["--serve", f"{port}:{chunks}:{gap * 1000:g}"]
    return argv


if __name__ == "__main__":
    main()
