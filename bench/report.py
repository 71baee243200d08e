"""
Turning measurements into the report: the targets (each PASS, MISS or N/A
with the measured value), a Markdown summary ready to paste in the README,
and the JSON files in C{bench/results/}.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.stats import diff, ratio

Results = Mapping[str, Any]

MB = 1024.0  # KiB per MiB


@dataclass(frozen=True)
class Target:
    """
    One target of the issue, checked against this run's numbers.
    """

    name: str
    value: float | None
    limit: float
    op: str  # ">=" or "<="
    unit: str
    status: str  # PASS, MISS or N/A
    detail: str = ""


def _check(name: str, value: float | None, op: str, limit: float, unit: str,
           detail: str = "", na: str | None = None) -> Target:
    if na is not None or value is None:
        return Target(name, value, limit, op, unit, "N/A", na or detail or "not measured")
    ok = value >= limit if op == ">=" else value <= limit
    return Target(name, value, limit, op, unit, "PASS" if ok else "MISS", detail)


def _get(results: Results, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def evaluate(results: Results) -> list[Target]:
    """
    The targets, from the medians of this run.
    """
    ns = lambda arm, *p: _get(results, "nonstream", arm, *p)  # noqa: E731
    st = lambda arm, *p: _get(results, "stream", arm, *p)  # noqa: E731
    w2 = _get(results, "arms", "llmproxy-w2") or {}
    w2_na = None if w2.get("available") else (
        w2.get("note") or ("not available" if w2 else "not run (arm not selected)"))
    w2_detail = w2.get("note", "")
    added_ttft = diff(st("llmproxy", "ttft_p50_ms"), st("direct", "ttft_p50_ms"))
    streams = f"{_get(results, 'meta', 'settings', 'soak_streams') or 1000:,} concurrent streams"
    return [
        _check("non-streaming req/s at c=64, llmproxy / floor",
               ratio(ns("llmproxy", "c64", "rps"), ns("floor", "c64", "rps")), ">=", 0.8, "x"),
        _check("added latency over the floor at c=1, p50",
               diff(ns("llmproxy", "c1", "p50_ms"), ns("floor", "c1", "p50_ms")), "<=", 0.5, "ms"),
        _check("added latency over the floor at c=1, p99",
               diff(ns("llmproxy", "c1", "p99_ms"), ns("floor", "c1", "p99_ms")), "<=", 2.0, "ms"),
        _check("streaming added TTFT p50 (vs direct)", added_ttft, "<=", 1.0, "ms",
               detail="vs floor: " + _fmt(diff(st("llmproxy", "ttft_p50_ms"),
                                               st("floor", "ttft_p50_ms")), 3) + " ms"),
        _check(f"{streams}: frames lost",
               _get(results, "soak", "llmproxy", "frames_lost"), "<=", 0, ""),
        _check(f"{streams}: RSS",
               _mb(_get(results, "soak", "llmproxy", "rss_peak_kib")), "<=", 200, "MB"),
        _check("idle RSS", _mb(_get(results, "startup", "llmproxy", "idle_rss_kib")),
               "<=", 60, "MB"),
        _check("startup to first served request",
               _get(results, "startup", "llmproxy", "median_s"), "<=", 1.5, "s"),
        _check("--workers 2 req/s at c=64 / 1 process",
               ratio(ns("llmproxy-w2", "c64", "rps"), ns("llmproxy", "c64", "rps")),
               ">=", 1.7, "x", detail=w2_detail, na=w2_na),
    ]


# formatting


def _mb(kib: float | None) -> float | None:
    return None if kib is None else kib / MB


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text


def _rps(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _arm_rows(results: Results, section: str,
              row: Callable[[str, Mapping[str, Any]], list[str]]) -> list[list[str]]:
    rows = []
    for name, info in (results.get("arms") or {}).items():
        data = _get(results, section, name)
        if data is None:
            rows.append([info.get("label", name)] + ["n/a"] * (len(row(name, {})) - 1))
            continue
        rows.append(row(name, data))
    return rows


def nonstream_table(results: Results) -> list[str]:
    """
    Non-streaming: req/s at each concurrency and c=1 latency.
    """
    direct = _get(results, "nonstream", "direct", "c1") or {}
    floor = _get(results, "nonstream", "floor", "c1") or {}
    arms = results.get("arms") or {}

    def row(name: str, d: Mapping[str, Any]) -> list[str]:
        c1 = d.get("c1") or {}
        return [
            arms.get(name, {}).get("label", name),
            _rps(_get(d, "c1", "rps")), _rps(_get(d, "c16", "rps")), _rps(_get(d, "c64", "rps")),
            _fmt(c1.get("p50_ms"), 3), _fmt(c1.get("p99_ms"), 3),
            _fmt(diff(c1.get("p50_ms"), direct.get("p50_ms")), 3, True),
            _fmt(diff(c1.get("p99_ms"), direct.get("p99_ms")), 3, True),
            _fmt(diff(c1.get("p50_ms"), floor.get("p50_ms")), 3, True),
            _fmt(diff(c1.get("p99_ms"), floor.get("p99_ms")), 3, True),
            _fmt(_get(d, "c64", "cpu_us_per_req"), 0),
        ]

    header = ["arm", "req/s c=1", "req/s c=16", "req/s c=64", "p50 ms", "p99 ms",
              "added p50 vs direct", "added p99 vs direct", "added p50 vs floor",
              "added p99 vs floor", "CPU µs/req c=64"]
    return _table(header, _arm_rows(results, "nonstream", row))


def stream_table(results: Results) -> list[str]:
    """
    Streaming: TTFT and inter-chunk gaps at c=1, streams/s under load.
    """
    direct = _get(results, "stream", "direct") or {}
    arms = results.get("arms") or {}

    def row(name: str, d: Mapping[str, Any]) -> list[str]:
        return [
            arms.get(name, {}).get("label", name),
            _fmt(d.get("ttft_p50_ms"), 3),
            _fmt(diff(d.get("ttft_p50_ms"), direct.get("ttft_p50_ms")), 3, True),
            _fmt(d.get("ttft_p99_ms"), 3),
            _fmt(d.get("gap_p99_ms"), 3),
            _fmt(diff(d.get("gap_p99_ms"), direct.get("gap_p99_ms")), 3, True),
            _rps(_get(d, "c16", "rps")), _rps(_get(d, "c64", "rps")),
            _fmt(_get(d, "c64", "cpu_us_per_req"), 0),
            str(d.get("frames_lost", "–")),
        ]

    header = ["arm", "TTFT p50 ms", "added TTFT p50", "TTFT p99 ms", "gap p99 ms",
              "added gap p99", "streams/s c=16", "streams/s c=64", "CPU µs/stream c=64",
              "frames lost c=1"]
    return _table(header, _arm_rows(results, "stream", row))


def resource_table(results: Results) -> list[str]:
    """
    Startup, RSS idle and under 1,000 streams, frames lost.
    """
    arms = results.get("arms") or {}
    rows = []
    for name, info in arms.items():
        soak = _get(results, "soak", name) or {}
        start = _get(results, "startup", name) or {}
        rows.append([
            info.get("label", name),
            str(info.get("processes", "–")),
            _fmt(start.get("median_s"), 3),
            _fmt(_mb(start.get("idle_rss_kib")), 1),
            _fmt(_mb(soak.get("rss_peak_kib")), 1) + (" (upstream)" if name == "direct" and
                                                      soak else ""),
            f"{soak.get('completed', '–')}/{soak.get('streams', '–')}",
            str(soak.get("peak_receiving", "–")),
            _fmt(soak.get("seconds"), 2),
            str(soak.get("frames_lost", "–")),
        ])
    header = ["arm", "processes", "startup s", "idle RSS MB", "RSS MB under streams",
              "streams completed", "peak concurrent streams", "all done in s",
              "frames lost"]
    return _table(header, rows)


def targets_lines(targets: list[Target]) -> list[str]:
    """
    One line per target.
    """
    lines = []
    for t in targets:
        value = "–" if t.value is None else f"{t.value:.3g}{(' ' + t.unit) if t.unit else ''}"
        limit = f"{t.op} {t.limit:g}{(' ' + t.unit) if t.unit else ''}"
        detail = f" — {t.detail}" if t.detail else ""
        lines.append(f"- **{t.status}** {t.name}: {value} (target {limit}){detail}")
    return lines


def info_lines(results: Results) -> list[str]:
    """
    Ratios that are not targets but explain them: CPU per request is the
    least noisy number on a shared machine.
    """
    lines = []
    for section, what in (("nonstream", "request"), ("stream", "stream")):
        llm = _get(results, section, "llmproxy", "c64", "cpu_us_per_req")
        floor = _get(results, section, "floor", "c64", "cpu_us_per_req")
        r = ratio(llm, floor)
        if r is not None:
            lines.append(f"- Info: CPU per {what} at c=64, llmproxy / floor: {r:.2f}x "
                         f"({llm:.0f} µs vs {floor:.0f} µs).")
    return lines


def markdown(results: Results, targets: list[Target]) -> str:
    """
    The whole report as Markdown.
    """
    meta = results.get("meta") or {}
    settings = meta.get("settings") or {}
    out = [f"## llmproxy benchmark ({meta.get('date', '')})", ""]
    for note in meta.get("notes", []):
        out.append(f"- {note}")
    out += ["", f"Rounds: {settings.get('rounds')} (arms interleaved, medians of rounds); "
            f"load duration {settings.get('duration')} s; c=1 latency over "
            f"{settings.get('c1_duration')} s per round.", ""]
    out += ["### Non-streaming", ""] + nonstream_table(results) + [""]
    out += [f"### Streaming ({settings.get('stream_chunks')} chunks, "
            f"{settings.get('stream_gap_ms')} ms apart)", ""] + stream_table(results) + [""]
    ideal = (settings.get("soak_chunks") or 0) * (settings.get("soak_gap_ms") or 0) / 1000
    out += [f"### Resources ({settings.get('soak_streams') or 0:,} concurrent streams of "
            f"{settings.get('soak_chunks')} chunks, {settings.get('soak_gap_ms')} ms apart: "
            f"{ideal:g} s each at best)", ""] + resource_table(results) + [""]
    out += ["### Targets", ""] + targets_lines(targets) + [""]
    out += info_lines(results) + [""]
    errors = results.get("errors") or []
    if errors:
        out += ["### Errors", ""] + [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def write_json(results: Results, targets: list[Target], directory: Path) -> Path:
    """
    Write C{<timestamp>.json} and C{latest.json}; returns the first.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = dict(results)
    data["targets"] = [asdict(t) for t in targets]
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    path = directory / (time.strftime("%Y%m%dT%H%M%S") + ".json")
    tmp = directory / (path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    latest_tmp = directory / "latest.json.tmp"
    latest_tmp.write_text(text)
    latest_tmp.replace(directory / "latest.json")
    return path


__all__ = ["Target", "evaluate", "markdown", "write_json"]
