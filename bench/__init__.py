"""
The llmproxy benchmark harness.

C{python -m bench} (or C{bench/run}) starts an instant upstream, the servers
under test (direct, a bare Twisted pass-through "floor", llmproxy, llmproxy
with C{--workers 2}), drives them with interleaved rounds of load, and
reports a Markdown table plus JSON in C{bench/results/}.

Module map:
  - L{bench.payloads}: the canned request and response bytes.
  - L{bench.httpwire}: HTTP/1.1 request bytes and an incremental response
    reader shared by every client.
  - L{bench.upstream}: the Twisted canned upstream and the nginx launcher.
  - L{bench.floor}: the bare twisted.web + Agent pass-through.
  - L{bench.procs}: subprocesses, readiness, RSS, cleanup.
  - L{bench.client}: precise single-connection latency / streaming timers.
  - L{bench.loadgen}: the asyncio load generator (run as a subprocess).
  - L{bench.load}: wrk when installed, else L{bench.loadgen}.
  - L{bench.arms}: the servers under test.
  - L{bench.report}: targets, Markdown and JSON.
"""

from __future__ import annotations

from pathlib import Path

#: The proxy key clients of the bench send.
PROXY_KEY = "bench-key"
#: Where llmproxy is (the repository root).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where results go.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The path every arm serves chat completions on.
CHAT_PATH = "/v1/chat/completions"
