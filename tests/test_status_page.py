"""
The status page's renderer (L{llmproxy.frontends.status_page}): a pure
function of the status document and the traffic history.
"""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.frontends.history import Point, Snapshot
from llmproxy.frontends.status_page import MARKERS, REFRESH, render, sparkline, wants_html

SVG = "{http://www.w3.org/2000/svg}"
EMPTY = Snapshot(tuple(Point(i * 10.0) for i in range(90)))

NAMES = st.text(min_size=1, max_size=30)
NUMBERS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-10**20, 10**20))
VALUES = st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
                  max_size=120)


def document(backend: str = "openai", key: str = "openai#1", model: str = "gpt-4o",
             error: str | None = "Rate limit reached", state: str = "rate_limited",
             cooldown: Any = 12.5) -> dict[str, Any]:
    """
    A status document as the JSON endpoint answers it, with one backend,
    one open circuit and one key.
    """
    return {"backends": {backend: {
        "type": "openai",
        "circuits": {model: {"state": "open", "consecutive_failures": 5, "threshold": 5,
                             "cooldown": 30.0, "probe_interval": 5.0, "next_probe_in": 4.0,
                             "probing": False}},
        "keys": [{"name": key, "state": state, "cooldown_left": cooldown,
                  "recent_failures": 1, "last_error": error,
                  "prompt_cache": {"answers": 3, "prompt_tokens": 1200, "cached_tokens": 504,
                                   "cached_share": 0.42}}],
    }}}


class Elements(HTMLParser):
    """
    The text and the element ids of a page; fails on unbalanced sections.
    """

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.scripts += tag == "script"
        self.ids += [v for k, v in attrs if k == "id" and v]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    elements.close()
    return elements


def section(page: str, name: str) -> str:
    found = re.search(f'<section id="{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name}"
    return found.group(1)


class PageTests(SynchronousTestCase):
    def test_every_section_with_its_marker(self) -> None:
        page = render(document(), EMPTY, 1000.0, 100.0)
        self.assertEqual(parsed(page).ids, list(MARKERS))
        for name, rgb in MARKERS.items():
            self.assertIn(f"#{name} h2{{border-left-color:rgb{rgb}}}", page)
            self.assertEqual(page.count(f"rgb{rgb}"), 1, "a marker colour is its section's only")

    def test_self_contained_and_refreshing(self) -> None:
        page = render(document(), EMPTY, 1000.0, 100.0)
        self.assertIn(f'<meta http-equiv="refresh" content="{REFRESH}">', page)
        self.assertEqual(parsed(page).scripts, 0)
        self.assertNotRegex(page, r"(src|href)=|url\(|@import")

    def test_keys_circuits_and_cooldowns(self) -> None:
        page = render(document(), EMPTY, 1000.0, 100.0)
        keys = section(page, "keys")
        self.assertIn("openai#1", keys)
        self.assertIn('<span class="warn">rate_limited</span>', keys)
        self.assertIn("12.5 s", keys)
        self.assertIn("Rate limit reached", keys)
        self.assertIn("<td>42% of 1200 prompt tokens</td>", keys)
        backends = section(page, "backends")
        self.assertIn("gpt-4o", backends)
        self.assertIn('<span class="bad">open</span>', backends)
        self.assertIn("5 / 5", backends)

    def test_a_backend_without_failing_models(self) -> None:
        status = document()
        status["backends"]["openai"]["circuits"] = {}
        self.assertIn('<span class="good">closed</span>', section(render(status, EMPTY, 0, 0),
                                                                  "backends"))

    def test_accounts_and_their_quota_windows(self) -> None:
        status = document()
        status["backends"]["chatgpt"] = {"type": "openai-codex", "circuits": {}, "keys": [],
                                         "accounts": [{
            "name": "me", "plan": "plus", "custody": "owned", "limited_until": 1090.0,
            "windows": {"primary": {"used_percent": 42.0, "window_minutes": 300,
                                    "resets_at": 1000.0 + 3600},
                        "secondary": {"used_percent": 7, "window_minutes": 10080,
                                      "resets_at": None}},
            "error": None}]}
        accounts = section(render(status, EMPTY, 1000.0, 0.0), "accounts")
        self.assertIn("plus", accounts)
        self.assertIn('<span class="bad">limited</span> in 1m 30s', accounts)
        self.assertIn("primary: 42% used of 300 min, resets in 1h 0m", accounts)
        self.assertIn("secondary: 7% used of 10080 min", accounts)
        later = section(render(status, EMPTY, 1090.0, 0.0), "accounts")
        self.assertIn('<span class="good">ok</span>', later)
        self.assertIn("No subscription accounts",
                      section(render(document(), EMPTY, 0, 0), "accounts"))

    def test_store_memory_unless_the_document_says(self) -> None:
        self.assertIn("<td>store</td><td>memory</td>",
                      section(render(document(), EMPTY, 0, 0), "store"))
        status = {**document(), "state": {"backend": "sqlite", "path": "/var/lib/x.db"}}
        store = section(render(status, EMPTY, 0, 0), "store")
        self.assertIn("sqlite", store)
        self.assertIn("/var/lib/x.db", store)

    def test_config_digest_and_uptime(self) -> None:
        status = {**document(), "config": {"digest": "sha256:0123abcd", "loaded_at": 5.0,
                                           "source": "/etc/llmproxy.yaml"}}
        config = section(render(status, EMPTY, 100_000.0, 100_000.0 - 7384), "config")
        self.assertIn("<tr><td>uptime</td><td>2h 3m</td></tr>", config)
        self.assertIn("<tr><td>digest</td><td>sha256:0123abcd</td></tr>", config)
        self.assertIn("<tr><td>loaded_at</td><td>1970-01-01 00:00:05 UTC</td></tr>", config)
        self.assertIn("<tr><td>source</td><td>/etc/llmproxy.yaml</td></tr>", config)
        self.assertNotIn("<th>", config)
        self.assertIn("uptime", section(render(document(), EMPTY, 9.0, 0.0), "config"))
        self.assertIn("1970-01-02 03:46:40 UTC, up 2h 3m",
                      render(status, EMPTY, 100_000.0, 100_000.0 - 7384))
        self.assertIn("9s", section(render(document(), EMPTY, 9.0, 0.0), "config"))

    def test_any_section_may_be_missing_or_odd(self) -> None:
        for status in ({}, {"backends": []}, {"backends": {"a": None}},
                       {"backends": {"a": {"keys": [None, 3], "circuits": [],
                                           "accounts": {"x": 1}}}, "state": "x", "config": 7}):
            self.assertEqual(parsed(render(status, EMPTY, 0, 0)).ids, list(MARKERS))

    def test_traffic_charts(self) -> None:
        points = tuple(Point(i * 10.0, requests=i, errors=i // 2, tokens=3 * i,
                             ttft_p50=0.25, ttft_p99=1.5) for i in range(90))
        traffic = section(render(document(), Snapshot(points), 900.0, 0.0), "traffic")
        self.assertEqual(traffic.count("<svg"), 5)
        self.assertIn("requests per second: latest 8.9 req/s", traffic)
        self.assertIn("error rate: latest 49.44 %", traffic)
        self.assertIn("p99: latest 1.5 s", traffic)
        self.assertIn("tokens per minute: latest 1602 tok/min", traffic)
        self.assertIn("no data", section(render(document(), EMPTY, 0, 0), "traffic"))

    @given(backend=NAMES, key=NAMES, model=NAMES, error=st.one_of(st.none(), NAMES),
           state=NAMES, cooldown=NUMBERS, sections=st.dictionaries(
               st.sampled_from(["state", "config"]),
               st.dictionaries(NAMES, st.one_of(NAMES, NUMBERS, st.lists(NAMES, max_size=2)),
                               max_size=3)))
    @settings(max_examples=150, deadline=None)
    def test_user_controlled_text_is_escaped(self, backend: str, key: str, model: str,
                                             error: str | None, state: str, cooldown: Any,
                                             sections: dict[str, Any]) -> None:
        status = {**document(backend, key, model, error, state, cooldown), **sections}
        page = render(status, EMPTY, 0.0, 0.0)
        elements = parsed(page)
        self.assertEqual(elements.ids, list(MARKERS), "no name opens or closes an element")
        self.assertEqual(elements.scripts, 0)
        text = "".join(elements.text)
        names = [backend, key, model, error]
        for fields in sections.values():
            names += [k for k in fields] + [v for v in fields.values() if isinstance(v, str)]
        for name in names:
            if name is not None:
                self.assertIn(_collapse(name), _collapse(text))
        tags = set(elements.tags)
        self.assertLessEqual(tags, {"html", "head", "meta", "title", "style", "body", "h1", "p",
                                    "section", "h2", "div", "figure", "figcaption", "svg",
                                    "line", "polyline", "circle", "table", "tr", "th", "td",
                                    "span", "br"})


def _collapse(text: str) -> str:
    """
    C{text} as an HTML parser gives it back: carriage returns become line
    feeds (HTML's newline normalisation happens in the parser, not here).
    """
    return text.replace("\r\n", "\n").replace("\r", "\n")


class SparklineTests(SynchronousTestCase):
    def shapes(self, values: list[float | None]) -> ElementTree.Element:
        svg = ElementTree.fromstring(sparkline(values, width=100, height=20, title="t <&>"))
        self.assertEqual(svg.tag, SVG + "svg")
        return svg

    def test_a_rising_line(self) -> None:
        svg = self.shapes([0.0, 1.0, 2.0])
        [line] = svg.findall(SVG + "polyline")
        self.assertEqual(line.get("points"), "0.0,17.0 50.0,10.0 100.0,3.0")
        self.assertEqual(svg.find(SVG + "title").text, "t <&>")  # type: ignore[union-attr]

    def test_gaps_split_the_line_and_lone_values_are_dots(self) -> None:
        svg = self.shapes([1.0, 1.0, None, 2.0, float("nan"), 1.0, 1.0])
        self.assertEqual(len(svg.findall(SVG + "polyline")), 2)
        [dot] = svg.findall(SVG + "circle")
        self.assertEqual((dot.get("cx"), dot.get("cy")), ("50.0", "3.0"))

    def test_empty_and_constant(self) -> None:
        self.assertEqual(self.shapes([]).findall(SVG + "polyline"), [])
        self.assertEqual(self.shapes([None, None]).findall(SVG + "polyline"), [])
        [line] = self.shapes([0.0] * 5).findall(SVG + "polyline")
        self.assertEqual(set(re.findall(r",([\d.]+)", line.get("points") or "")), {"17.0"})

    @given(VALUES, st.integers(10, 400), st.integers(10, 200))
    @settings(max_examples=300, deadline=None)
    def test_well_formed_within_the_box(self, values: list[float | None], width: int,
                                        height: int) -> None:
        svg = ElementTree.fromstring(sparkline(values, width=width, height=height))
        coordinates: list[float] = []
        for line in svg.findall(SVG + "polyline"):
            for pair in (line.get("points") or "").split():
                x, y = pair.split(",")
                coordinates += [float(x), float(y)]
        for dot in svg.findall(SVG + "circle"):
            coordinates += [float(dot.get("cx") or "nan"), float(dot.get("cy") or "nan")]
        for c in coordinates:
            self.assertTrue(math.isfinite(c) and -0.05 <= c <= max(width, height) + 0.05, c)
        known = sum(1 for v in values if v is not None and math.isfinite(v))
        self.assertEqual(len(coordinates) // 2, known)


class NegotiationTests(SynchronousTestCase):
    def test_browsers_get_the_page(self) -> None:
        self.assertTrue(wants_html(
            b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"))
        self.assertTrue(wants_html(b"text/html"))
        self.assertTrue(wants_html(b"application/json;q=0.5, text/html"))
        self.assertTrue(wants_html(b"TEXT/HTML ; q=0.9"))

    def test_everyone_else_the_json(self) -> None:
        for accept in (None, b"", b"*/*", b"application/json", b"text/*",
                       b"application/json, text/html", b"text/html;q=0",
                       b"text/html;q=0.4, application/json;q=0.5", b"text/html;q=nan",
                       b"text/html;q=x", b"text/html;q=2"):
            self.assertFalse(wants_html(accept), accept)

    @given(st.binary(max_size=200))
    def test_any_header(self, accept: bytes) -> None:
        self.assertIsInstance(wants_html(accept), bool)
