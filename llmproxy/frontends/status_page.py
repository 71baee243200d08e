# -*- test-case-name: tests.test_status_page -*-
"""
The status page: the status JSON document and the traffic history made
into one self-contained HTML page (inline CSS, inline SVG sparklines, no
script, a C{refresh} every L{REFRESH} seconds).  A pure function of its
arguments, L{render}.

Key, model, backend and account names and error texts come from the
configuration and from upstreams: every text from the document is
escaped, and the document may lack any section (a section it lacks is
shown as empty, never an error).

Each section's heading carries a marker of its own colour (L{MARKERS}),
used nowhere else on the page, so a screenshot tells which sections were
drawn.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from html import escape
from typing import Any, Iterable, Mapping, Sequence

from llmproxy.frontends.history import Snapshot

#: Seconds between reloads of the page.
REFRESH = 5
#: Each section's id and its marker colour (RGB).
MARKERS: dict[str, tuple[int, int, int]] = {
    "traffic": (17, 85, 204),
    "backends": (122, 31, 162),
    "keys": (0, 121, 107),
    "accounts": (230, 81, 0),
    "store": (93, 64, 55),
    "config": (194, 24, 91),
}
#: The sparklines: title, the L{Snapshot} series, the unit shown.
CHARTS: tuple[tuple[str, str, str], ...] = (
    ("requests per second", "requests_per_second", "req/s"),
    ("error rate", "error_rate", "%"),
    ("time to first token, p50", "ttft_p50", "s"),
    ("time to first token, p99", "ttft_p99", "s"),
    ("tokens per minute", "tokens_per_minute", "tok/min"),
)
_STATES = {"ok": "good", "closed": "good", "rate_limited": "warn", "half_open": "warn",
           "half-open": "warn", "quota": "bad", "invalid": "bad", "open": "bad"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:16px;margin:20px 0 8px;padding-left:10px;border-left:14px solid}
table{border-collapse:collapse;background:#fff;min-width:40%}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
.muted{color:#777}
.good{background:#dff3e4}.warn{background:#fff1c2}.bad{background:#fbd3d3}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;padding:6px 8px;background:#fff;border:1px solid #ddd}
figcaption{font-size:12px;color:#444}
svg polyline{fill:none;stroke:#444;stroke-width:1.5}
svg circle{fill:#444}
svg line{stroke:#ccc}
"""


def render(status: Mapping[str, Any], history: Snapshot, now: float, started: float) -> str:
    """
    The page for the status document C{status} (as C{/v1/llmproxy/status}
    answers it) and the traffic C{history}, at C{now} for a service started
    at C{started} (both clock seconds).
    """
    marks = "".join(f"#{name} h2{{border-left-color:rgb{rgb}}}" for name, rgb in MARKERS.items())
    body = "".join([
        _traffic(history),
        _backends(_mapping(status.get("backends"))),
        _keys(_mapping(status.get("backends"))),
        _accounts(_mapping(status.get("backends")), now),
        _store(status.get("state")),
        _config(status.get("config"), now - started),
    ])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>llmproxy status</title><style>{_STYLE}{marks}</style></head><body>"
        f'<h1>llmproxy status</h1><p class="muted">{_time(now)}, up '
        f"{_duration(now - started)}; this page reloads every {REFRESH} s</p>"
        f"{body}</body></html>\n"
    )


# the sections

def _section(name: str, title: str, content: str) -> str:
    return f'<section id="{name}"><h2>{escape(title)}</h2>{content}</section>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "") -> str:
    """
    A table of C{rows} (cells already HTML) under the headings C{head}
    (none when empty), or C{empty} in a paragraph.
    """
    lines = ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    if not lines:
        return f'<p class="muted">{escape(empty)}</p>'
    header = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" if head else ""
    return f"<table>{header}{''.join(lines)}</table>"


def _fields(fields: Mapping[str, Any]) -> list[list[str]]:
    """
    A section's name/value rows; a number under a name ending in C{_at} is
    a time (seconds since the epoch), shown in UTC.
    """
    return [[_text(name), _time(value) if str(name).endswith("_at") and _is_number(value)
             else _text(value)] for name, value in fields.items()]


def _traffic(history: Snapshot) -> str:
    figures = []
    for title, series, unit in CHARTS:
        values = getattr(history, series)()
        if unit == "%":
            values = [None if v is None else v * 100 for v in values]
        latest = next((v for v in reversed(values) if v is not None), None)
        shown = "no data" if latest is None else f"latest {_number(latest)} {unit}"
        figures.append(f"<figure>{sparkline(values, title=title)}<figcaption>"
                       f"{escape(title)}: {escape(shown)}</figcaption></figure>")
    minutes = len(history.points) * history.bucket / 60
    return _section("traffic", f"Traffic, last {minutes:g} minutes",
                    f'<div class="charts">{"".join(figures)}</div>')


def _backends(backends: Mapping[str, Any]) -> str:
    rows = []
    for name, entry in backends.items():
        entry = _mapping(entry)
        circuits = _mapping(entry.get("circuits"))
        if not circuits:
            rows.append([_text(name), _text(entry.get("type")), '<span class="muted">all</span>',
                         _state("closed"), "", ""])
        for model, circuit in circuits.items():
            circuit = _mapping(circuit)
            failures = f"{_text(circuit.get('consecutive_failures'))} / " \
                       f"{_text(circuit.get('threshold'))}"
            rows.append([_text(name), _text(entry.get("type")), _text(model),
                         _state(circuit.get("state")), failures,
                         _seconds(circuit.get("next_probe_in"))])
    return _section("backends", "Backends and circuits", _table(
        ["backend", "type", "model", "circuit", "failures", "next probe in"], rows,
        "No backends."))


def _keys(backends: Mapping[str, Any]) -> str:
    rows = []
    for name, entry in backends.items():
        for key in _list(_mapping(entry).get("keys")):
            key = _mapping(key)
            rows.append([_text(name), _text(key.get("name")), _state(key.get("state")),
                         _seconds(key.get("cooldown_left")), _text(key.get("recent_failures")),
                         _text(key.get("last_error")), _cache(key.get("prompt_cache"))])
    return _section("keys", "Keys", _table(
        ["backend", "key", "state", "cooldown left", "recent failures", "last error",
         "prompt cache"], rows, "No keys (keyless backends only)."))


def _cache(counts: Any) -> str:
    """
    A key's cached share of its prompt tokens, when it had any.
    """
    counts = _mapping(counts)
    share, prompt = counts.get("cached_share"), counts.get("prompt_tokens")
    if not _is_number(share) or not _is_number(prompt):
        return ""
    return escape(f"{share * 100:.0f}% of {_number(prompt)} prompt tokens")


def _accounts(backends: Mapping[str, Any], now: float) -> str:
    rows = []
    for name, entry in backends.items():
        for account in _list(_mapping(entry).get("accounts")):
            account = _mapping(account)
            windows = "<br>".join(_window(which, w, now) for which, w in
                                  _mapping(account.get("windows")).items())
            rows.append([_text(name), _text(account.get("name")), _text(account.get("plan")),
                         _text(account.get("custody")),
                         _limited(account.get("limited_until"), now),
                         windows, _text(account.get("error"))])
    return _section("accounts", "Subscription accounts", _table(
        ["backend", "account", "plan", "custody", "state", "quota windows", "error"], rows,
        "No subscription accounts."))


def _limited(until: Any, now: float) -> str:
    """
    An account's state: limited until its usage limit resets, else ok.
    """
    if _is_number(until) and until > now:
        return f'<span class="bad">limited</span> {_until(until, now)}'
    return _state("ok")


def _window(which: str, window: Any, now: float) -> str:
    window = _mapping(window)
    used, minutes = window.get("used_percent"), window.get("window_minutes")
    text = f"{_text(which)}: {_text(used)}% used"
    if _is_number(minutes):
        text += f" of {_number(minutes)} min"
    resets = window.get("resets_at")
    if _is_number(resets):
        text += f", resets {_until(resets, now)}"
    return text


def _store(state: Any) -> str:
    """
    The status document's C{state} section as it comes; C{memory} without.
    """
    rows = _fields(_mapping(state)) or [["store", "memory"]]
    return _section("store", "Store", _table([], rows))


def _config(config: Any, uptime: float) -> str:
    rows = [["uptime", escape(_duration(uptime))], *_fields(_mapping(config))]
    return _section("config", "Configuration", _table([], rows))


# cells

def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _text(value: Any) -> str:
    """
    Any value of the document as escaped text: nothing for L{None},
    nested values as compact JSON.
    """
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(",", ":"), default=str)
    elif _is_number(value) and not isinstance(value, int):
        value = _number(value)
    return escape(str(value))


def _state(value: Any) -> str:
    """
    A state as a coloured cell content; the colour comes from a fixed table,
    never from the value.
    """
    kind = _STATES.get(value, "") if isinstance(value, str) else ""
    return f'<span class="{kind}">{_text(value)}</span>'


def _number(value: float) -> str:
    if not math.isfinite(value) or abs(value) >= 1e6:
        return f"{value:.3g}"
    if abs(value) >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


def _time(seconds: float) -> str:
    try:
        when = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return _text(seconds)
    return escape(when.strftime("%Y-%m-%d %H:%M:%S UTC"))


def _seconds(value: Any) -> str:
    if not _is_number(value) or value <= 0:
        return ""
    return escape(f"{_number(value)} s")


def _until(when: float, now: float) -> str:
    left = when - now
    return escape(f"in {_duration(left)}" if left > 0 else "now")


def _duration(seconds: float) -> str:
    """
    C{seconds} as C{2d 3h}, C{4h 5m}, C{6m 7s} or C{8s}.
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "0s"
    s = int(seconds)
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s % 60}s" if minutes else f"{s}s"


# sparklines

def sparkline(values: Sequence[float | None], width: int = 240, height: int = 48,
              title: str = "") -> str:
    """
    An inline SVG line of C{values}, left to right, scaled from 0 (or the
    least value, when below) to the greatest; L{None}, infinities and NaN
    are gaps.  A lone value between gaps is a dot.
    """
    finite = [v if v is not None and math.isfinite(v) else None for v in values]
    known = [v for v in finite if v is not None]
    low, high = min([0.0, *known]), max([0.0, *known])
    half_span = (high / 2 - low / 2) or 1.0  # halves: the span of huge values stays finite
    step = width / max(1, len(finite) - 1)
    pad = 3.0

    def point(i: int, v: float) -> tuple[float, float]:
        return i * step, height - pad - (v / 2 - low / 2) / half_span * (height - 2 * pad)

    shapes = [f'<line x1="0" y1="{height - pad:.1f}" x2="{width}" y2="{height - pad:.1f}"/>']
    for run in _runs(finite):
        points = [point(i, v) for i, v in run]
        if len(points) == 1:
            x, y = points[0]
            shapes.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5"/>')
        else:
            shapes.append('<polyline points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                          + '"/>')
    label = f"<title>{escape(title)}</title>" if title else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{label}{"".join(shapes)}</svg>')


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """
    The runs of consecutive known values, with their positions.
    """
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
                current = []
        else:
            current.append((i, v))
    if current:
        runs.append(current)
    return runs


# content negotiation

def wants_html(accept: bytes | None) -> bool:
    """
    Whether an C{Accept} header prefers HTML to JSON: C{text/html} (or
    C{application/xhtml+xml}) named with a higher quality than
    C{application/json}, or as high and before it.  Wildcards choose
    nothing: without a header, or with C{*/*}, the answer stays JSON.
    """
    if not accept:
        return False
    html = json_ = (0.0, 0)
    for position, item in enumerate(accept.decode("latin-1").split(",")):
        kind, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if not 0.0 <= quality <= 1.0:  # also NaN
            quality = 0.0
        ranked = (quality, -position)
        kind = kind.lower()
        if kind in ("text/html", "application/xhtml+xml"):
            html = max(html, ranked) if html[0] else ranked
        elif kind == "application/json":
            json_ = max(json_, ranked) if json_[0] else ranked
    return html[0] > 0 and html > json_


__all__ = ["CHARTS", "MARKERS", "REFRESH", "render", "sparkline", "wants_html"]
