"""
The adversarial run of issue #10: C{python -m bench.adversary}.

It starts llmproxy with a small time budget against a fault-injecting
upstream run in this process, then tries, bounded in count and time and on
loopback only:

  - bad requests (L{bench.adversary.cases}): each must get an
    OpenAI-shaped 4xx or a clean close within a second;
  - upstream faults (L{bench.adversary.faults}): none may hang past the
    budget or reach the client as a success;
  - stalled readers: clients that stop reading must not open the circuit
    of a healthy backend;
  - a burst of connects: all must be served.

Module map: L{wire} (parsing what came back), L{client} (raw sockets),
L{verdicts}, L{cases}, L{faults} (what the upstream does),
L{upstream} (the asyncio server that does it), L{proxy} (llmproxy's
config and process), L{runner} (the phases), L{report}, L{__main__}.
"""

from __future__ import annotations

#: The proxy key of the run (auth is on).
PROXY_KEY = "adversary-key"
#: The healthy default backend.
GOOD = "good"
#: The healthy backend the stalled readers stream from (its own breaker).
STALL = "stall"
#: The proxy's request body limit (C{max_body_bytes}).
BODY_LIMIT = 1024 * 1024
#: The proxy's total time budget per request (C{total_timeout_budget}).
BUDGET = 4.0
#: The backends' first-byte C{timeout}.
TIMEOUT = 2.0
#: The backends' C{idle_timeout}.
IDLE_TIMEOUT = 2.0
#: How long a bad request may take to be answered.
ANSWER_WITHIN = 1.0
