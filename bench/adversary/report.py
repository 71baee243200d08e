"""
The targets of issue #10 checked against a run's results, the Markdown
summary (the figures the closing note needs, then what failed), and the
JSON file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.adversary import ANSWER_WITHIN, BUDGET, IDLE_TIMEOUT
from bench.adversary.cases import ACCEPT, REJECT
from bench.adversary.runner import SLOW_CONNECT, Results
from bench.adversary.verdicts import HANG, LEAK, PASS


@dataclass(frozen=True)
class Target:
    """
    One target: what was measured, the goal, whether it holds.
    """

    name: str
    measured: str
    goal: str
    ok: bool


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def targets(results: Results) -> list[Target]:
    """
    The targets of the phases that ran.
    """
    out: list[Target] = []
    rejects = [c for c in results.cases if c.expect == REJECT]
    accepts = [c for c in results.cases if c.expect == ACCEPT]
    if rejects:
        passed = sum(1 for c in rejects if c.verdict == PASS)
        out.append(Target(
            "bad requests: OpenAI-shaped 4xx or clean close within "
            f"{ANSWER_WITHIN:g} s", f"{passed}/{len(rejects)} ({_pct(passed, len(rejects))})",
            "100%", passed == len(rejects)))
    if accepts:
        passed = sum(1 for c in accepts if c.verdict == PASS)
        out.append(Target("valid requests (null optional fields, ...) served",
                          f"{passed}/{len(accepts)}", "all", passed == len(accepts)))
    out.append(Target("tracebacks in the proxy log", str(results.tracebacks), "0",
                      results.tracebacks == 0))
    if results.faults:
        total = len(results.faults)
        faults = len({f.fault for f in results.faults})
        hangs = sum(1 for f in results.faults if f.verdict == HANG)
        leaks = sum(1 for f in results.faults if f.verdict == LEAK)
        out.append(Target(f"upstream faults: hangs past the budget + 1 s ({BUDGET + 1:g} s)",
                          f"{hangs} of {total} requests ({faults} faults x 2)", "0", hangs == 0))
        out.append(Target("upstream faults: reaching the client as success",
                          f"{leaks} of {total} requests", "0", leaks == 0))
    if results.stall is not None:
        s = results.stall
        out.append(Target(
            f"stalled readers ({s.clients}): circuit after {2 * IDLE_TIMEOUT:g} s, then a "
            "normal request", f"circuit {s.circuit} ({s.consecutive_failures} failures); "
            f"normal request: {s.normal}", "closed; served", s.ok))
    if results.burst is not None:
        b = results.burst
        out.append(Target("burst of connects served",
                          f"{b.served}/{b.connects} in {b.seconds:.2f} s", "all",
                          b.served == b.connects))
        out.append(Target(f"burst: connects that waited for a SYN retransmission "
                          f"(> {SLOW_CONNECT:g} s: the listen queue overflowed)",
                          str(b.slow_connects), "0", b.slow_connects == 0))
    out.append(Target("proxy still running at the end", "yes" if results.proxy_alive else "no",
                      "yes", results.proxy_alive))
    return out


def exit_status(results: Results) -> int:
    """
    0 when every target holds, 1 when one does not, 2 when the run itself
    failed (the proxy did not start, the control failed).
    """
    if results.errors:
        return 2
    return 0 if all(t.ok for t in targets(results)) else 1


def markdown(results: Results, verbose: bool = False) -> str:
    """
    The summary: figures and targets first, then the failing cases.
    """
    lines = ["# llmproxy adversarial run", "",
             f"Budget {BUDGET:g} s, idle timeout {IDLE_TIMEOUT:g} s, answer within "
             f"{ANSWER_WITHIN:g} s; run took {results.seconds:.1f} s.", ""]
    for error in results.errors:
        lines.append(f"**RUN FAILED**: {error}")
    for c in results.control:
        if c.verdict != PASS:
            lines.append(f"- control {c.name}: {c.detail}")
    lines += ["## Targets", ""]
    for t in targets(results):
        lines.append(f"- **{'PASS' if t.ok else 'FAIL'}** {t.name}: {t.measured} (target {t.goal})")
    if results.traceback_kinds:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(results.traceback_kinds.items()))
        lines.append(f"- tracebacks by exception: {kinds}")
    if results.burst is not None and results.burst.failures:
        failures = ", ".join(f"{k} x{n}" for k, n in sorted(results.burst.failures.items()))
        lines.append(f"- burst failures: {failures}")
    if results.log_dir:
        lines.append(f"- logs kept in {results.log_dir}")
    lines += _cases_section(results, verbose) + _faults_section(results, verbose)
    return "\n".join(lines) + "\n"


def _cases_section(results: Results, verbose: bool) -> list[str]:
    if not results.cases:
        return []
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    for c in results.cases:
        tally[c.group][c.verdict] += 1
    lines = ["", "## Bad requests by class", "", "| class | cases | pass | fail |",
             "|---|---:|---:|---:|"]
    for group, counts in tally.items():
        total = sum(counts.values())
        lines.append(f"| {group} | {total} | {counts[PASS]} | {total - counts[PASS]} |")
    shown = [c for c in results.cases if verbose or c.verdict != PASS]
    if shown:
        lines += ["", "### " + ("All requests" if verbose else "Failing requests"), ""]
        lines += [f"- {c.verdict} `{c.name}`: {c.detail}" for c in shown]
    return lines


def _faults_section(results: Results, verbose: bool) -> list[str]:
    if not results.faults:
        return []
    by_fault: dict[str, dict[bool, str]] = defaultdict(dict)
    details: dict[str, dict[bool, str]] = defaultdict(dict)
    for f in results.faults:
        by_fault[f.fault][f.stream] = f.verdict
        details[f.fault][f.stream] = f.detail
    lines = ["", "## Upstream faults", "", "| fault | non-streaming | streaming | upstream hits |",
             "|---|---|---|---:|"]
    for name, verdicts in by_fault.items():
        lines.append(f"| {name} | {verdicts.get(False, '-')} | {verdicts.get(True, '-')} | "
                     f"{results.upstream_hits.get(name, 0)} |")
    shown = [f for f in results.faults if verbose or f.verdict != PASS]
    if shown:
        lines += ["", "### " + ("All fault requests" if verbose else "Hangs and leaks"), ""]
        lines += [f"- {f.verdict} `{f.fault}` ({'stream' if f.stream else 'plain'}; {f.about}): "
                  f"{f.detail}" for f in shown]
    return lines


def write_json(results: Results, path: Path) -> None:
    """
    Write everything, with the targets, to C{path}.
    """
    data = results.to_json()
    data["targets"] = [t.__dict__ for t in targets(results)]
    data["exit_status"] = exit_status(results)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


__all__ = ["Target", "exit_status", "markdown", "targets", "write_json"]
