"""
C{llmproxy check} (L{llmproxy.check}, L{llmproxy.config.sources}) and
C{--probe} (L{llmproxy.probe}): errors with their line, several per run;
the resolved configuration with masked secrets and each value's source;
each key's answer to C{/models}; the exit status of the real command.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends import REGISTRY
from llmproxy.check import Report, check
from llmproxy.config import Overrides
from llmproxy.config.sources import flatten, mask, yaml_positions
from llmproxy.probe import Probe, outcome_of, probe
from llmproxy.testing import Reply, listen_fake, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG_KEY = "sk-proj-0123456789abcdefghijWXYZ"


class Files(SynchronousTestCase):
    def config_file(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, text: str, environ: dict[str, str] | None = None,
              **overrides: Any) -> Report:
        path = self.config_file(text)
        return check(Overrides(config_file=path, **overrides), environ or {},
                     kinds=REGISTRY.kinds)


class PositionTests(SynchronousTestCase):
    def test_keys_and_items_have_their_lines(self) -> None:
        text = ("listen: tcp:0\n"
                "backends:\n"
                "  a:\n"
                "    api_keys:\n"
                "      - ${K1}\n"
                "      - sk-2\n"
                "model_aliases:\n"
                "  - pattern: x\n"
                "    replacement: a:y\n")
        found = yaml_positions(text)
        self.assertEqual({k: v.line for k, v in found.items()}, {
            "listen": 1, "backends": 2, "backends.a": 3, "backends.a.api_keys": 4,
            "backends.a.api_keys[0]": 5, "backends.a.api_keys[1]": 6, "model_aliases": 7,
            "model_aliases[0]": 8, "model_aliases[0].pattern": 8,
            "model_aliases[0].replacement": 9})
        self.assertEqual(found["backends.a.api_keys[1]"].keys, ("backends", "a", "api_keys", 1))
        self.assertEqual(found["backends.a.api_keys[0]"].text, "${K1}")


_names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
_trees = st.recursive(
    st.integers(0, 9) | st.booleans(),
    lambda inner: st.dictionaries(_names, inner, min_size=1, max_size=4)
    | st.lists(inner, min_size=1, max_size=3),
    max_leaves=12)


class PositionPropertyTests(SynchronousTestCase):
    @given(st.dictionaries(_names, _trees, min_size=1, max_size=4))
    def test_every_key_is_on_its_line(self, data: dict[str, Any]) -> None:
        text = yaml.safe_dump(data, default_flow_style=False)
        lines = text.splitlines()
        for path, position in yaml_positions(text).items():
            value: Any = data
            for key in position.keys:
                value = value[key]
            if isinstance(position.keys[-1], str):
                key = position.keys[-1]
                self.assertTrue(f"{key}:" in lines[position.line - 1]
                                or f"'{key}':" in lines[position.line - 1], path)
            else:
                self.assertTrue(lines[position.line - 1].lstrip().startswith("-"), path)


class MaskTests(SynchronousTestCase):
    @given(st.text(min_size=1, max_size=80))
    def test_a_mask_never_shows_more_than_seven_characters(self, secret: str) -> None:
        shown = mask(secret)
        self.assertLessEqual(len(shown.replace("…", "").replace("***", "")), 7)
        if len(secret) >= 8:
            self.assertNotIn(secret, shown)

    def test_long_keys_keep_their_ends(self) -> None:
        self.assertEqual(mask(LONG_KEY), "sk-…WXYZ")
        self.assertEqual(mask("sk-short"), "***")

    @given(st.lists(st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789_",
                            min_size=12, max_size=60).map(lambda s: "sk-" + s),
                    min_size=1, max_size=3, unique=True))
    def test_no_row_holds_a_key(self, keys: list[str]) -> None:
        config = make_config({"proxy_keys": ["pk-" + keys[0]], "backends": {"a": {
            "type": "openai", "api_keys": keys,
            "base_url": "https://user:pw-secret@example.com/v1"}}})
        text = "\n".join(f"{path} {value}" for path, value in flatten(config))
        for key in keys:
            self.assertNotIn(key, text)
        self.assertNotIn("pw-secret", text)
        self.assertIn("https://user:***@example.com/v1", text)


class CheckTests(Files):
    def test_an_unknown_key_is_named_with_its_line_and_a_suggestion(self) -> None:
        report = self.check("backends:\n  openai:\n    api_kye: sk-1\n")
        path = report.source
        self.assertEqual(report.errors, [
            f"{path}:3: backends.openai.api_kye: unknown key; did you mean 'api_key'?"])
        self.assertIsNone(report.config)

    def test_several_errors_in_one_run(self) -> None:
        report = self.check("backends:\n"
                            "  openai:\n"
                            "    api_key: sk-1\n"
                            "    timeout: soon\n"
                            "failure_handling:\n"
                            "  max_attempt: 3\n"
                            "model_aliases:\n"
                            "  - {pattern: 'gpt-(', replacement: 'openai:x'}\n"
                            "listen: tcp:8000:interface=${HOST}\n")
        path = report.source
        self.assertEqual(len(report.errors), 4, report.errors)
        self.assertEqual(len(set(report.errors)), 4)
        self.assertEqual(report.errors[0], f"{path}:4: backends.openai.timeout: expected an "
                                           "integer or a number, got str")
        self.assertIn(f"{path}:9: listen: ${{HOST}} is not set", report.errors)
        self.assertIn(f"{path}:6: failure_handling.max_attempt: unknown key; did you mean "
                      "'max_attempts'?", report.errors)
        [alias] = [e for e in report.errors if "model_aliases" in e]
        self.assertTrue(alias.startswith(f"{path}:8: model_aliases[0].pattern: invalid model "
                                         "alias pattern 'gpt-('"), alias)

    def test_routes_that_lead_nowhere(self) -> None:
        report = self.check("backends:\n"
                            "  openai: {api_key: sk-1}\n"
                            "failover_routes:\n"
                            "  smart:\n"
                            "    elements: [openai:gpt-4o, opena:gpt-4o]\n")
        self.assertEqual(report.errors, [
            f"{report.source}:5: failover_routes.smart.elements[1]: 'opena:gpt-4o' does not "
            "route: Unknown backend 'opena' in model 'opena:gpt-4o'; known backends: openai; "
            "did you mean 'openai'?"])

    def test_a_named_hybrid_s_phases_are_tried(self) -> None:
        report = self.check("backends:\n"
                            "  openai: {api_key: sk-1}\n"
                            "  planner:\n"
                            "    type: hybrid\n"
                            "    reasoning: opena:o3-mini\n"
                            "    execution: openai:gpt-4o-mini|openai:gpt-4o\n")
        self.assertEqual(report.errors, [
            f"{report.source}:5: backends.planner.reasoning: 'opena:o3-mini' does not "
            "route: Unknown backend 'opena' in model 'opena:o3-mini'; known backends: openai, "
            "planner; did you mean 'openai'?"])

    def test_exposure_rules_apply(self) -> None:
        report = self.check("listen: tcp:8000:interface=0.0.0.0\n"
                            "backends:\n  openai: {api_key: sk-1}\n")
        self.assertEqual(len(report.errors), 1)
        self.assertIn("0.0.0.0", report.errors[0])

    def test_a_file_that_is_not_yaml(self) -> None:
        report = self.check("backends: [\n")
        self.assertEqual(len(report.errors), 1)
        self.assertIn("invalid YAML", report.errors[0])

    def test_each_value_says_where_it_came_from(self) -> None:
        report = self.check(
            "default_backend: openai\n"
            "backends:\n"
            "  openai:\n"
            "    api_keys: ['${K1}', " + LONG_KEY + "]\n"
            "failure_handling:\n"
            "  max_attempts: 3\n"
            "hybrid: {hybrid_injection: user}\n"
            "access_log: {format: json}\n"
            "state: sqlite:///tmp/s.db\n",
            environ={"K1": "sk-from-the-environment-0000", "APP_PORT": "9001"},
            log_level="debug")
        rows = {path: (value, origin) for path, value, origin in report.rows}
        name = os.path.basename(report.source)
        self.assertEqual(rows["listen"], ("tcp:9001:interface=127.0.0.1", "env APP_PORT"))
        self.assertEqual(rows["log_level"], ("debug", "flag --log-level"))
        self.assertEqual(rows["default_backend"], ("openai", f"{name}:1"))
        self.assertEqual(rows["backends.openai.keys"],
                         ("[openai#1=sk-…0000, openai#2=sk-…WXYZ]", f"{name}:4, ${{K1}}"))
        self.assertEqual(rows["failure_handling.max_attempts"], ("3", f"{name}:6"))
        self.assertEqual(rows["failure_handling.max_wait"], ("10.0", "default"))
        # as the file spells them; values worked out from others not shown
        self.assertEqual(rows["hybrid.hybrid_injection"], ("user", f"{name}:7"))
        self.assertEqual(rows["hybrid.reasoning_injection_probability"], ("1.0", "default"))
        self.assertEqual(rows["access_log.format"], ("json", f"{name}:8"))
        self.assertEqual(rows["state.url"], ("sqlite:///tmp/s.db", f"{name}:9"))
        self.assertEqual(rows["responses_store.max_items"][1], "default")
        self.assertFalse({"state.kind", "state.path", "access_log.said", "access.said",
                          "failure.max_attempts", "hybrid.probability"} & set(rows))

    def test_without_a_file_the_demo_backends_are_built_in(self) -> None:
        report = check(Overrides(), {}, kinds=REGISTRY.kinds)
        rows = {path: (value, origin) for path, value, origin in report.rows}
        self.assertEqual(rows["backends.mock.type"], ("mock", "built-in"))
        self.assertEqual(rows["backends.openai.keys"], ("[]", "built-in"))
        self.assertEqual(rows["default_backend"], ("mock", "default"))
        self.assertEqual(report.source, "<defaults>")

    def test_the_printed_report_holds_no_secret(self) -> None:
        report = self.check("proxy_keys: [pk-" + LONG_KEY + "]\n"
                            "backends:\n  openai: {api_key: " + LONG_KEY + "}\n")
        out = io.StringIO()
        report.write(out)
        self.assertNotIn(LONG_KEY, out.getvalue())
        self.assertIn("pk-…WXYZ", out.getvalue())
        self.assertTrue(out.getvalue().endswith(f"{report.source}: OK\n"))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProbeTests(TestCase):
    def test_statuses(self) -> None:
        self.assertEqual([outcome_of(s) for s in (200, 401, 403, 429, 402, 500)],
                         ["ok", "unauthorized", "unauthorized", "quota", "quota", "status 500"])

    async def test_each_key_by_name(self) -> None:
        backends: dict[str, Any] = {}
        for name, status in (("good", 200), ("refused", 401), ("spent", 429)):
            fake, port, upstream = await listen_fake(reactor)
            self.addCleanup(port.stopListening)
            if status != 200:
                fake.models_reply = Reply(status, {"error": {"message": "no"}})
            backends[name] = {"type": "openai", "base_url": upstream,
                              "api_key": f"sk-{name}-key"}
            setattr(self, name, fake)
        backends["gone"] = {"type": "openai", "api_key": "sk-gone",
                            "base_url": f"http://127.0.0.1:{closed_port()}/v1"}
        backends["keyless"] = {"type": "openai", "api_key": "${UNSET_KEY}",
                               "base_url": "http://127.0.0.1:9/v1"}
        backends["mock"] = {"type": "mock"}
        config = make_config({"backends": backends, "default_backend": "good"})
        found = await probe(config, reactor, REGISTRY.kinds, timeout=5)
        self.assertEqual(sorted((p.backend, p.key, p.outcome) for p in found), [
            ("gone", "gone#1", "unreachable"), ("good", "good#1", "ok"),
            ("keyless", "-", "no key"), ("refused", "refused#1", "unauthorized"),
            ("spent", "spent#1", "quota")])
        self.assertEqual(getattr(self, "good").requests[-1].headers["authorization"],
                         "Bearer sk-good-key")
        self.assertEqual([p.failed for p in sorted(found, key=lambda p: p.backend)],
                         [True, False, False, True, True])
        self.assertEqual(Probe("b", "b#1", "quota").line, "probe b key b#1: quota")


class CommandTests(Files):
    """
    The real commands: output and exit status.
    """

    def run_command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("OPENAI_API_KEY", None)
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                              cwd=os.path.dirname(self.mktemp()) or ".")

    def test_python_m_llmproxy_check(self) -> None:
        good = self.config_file(yaml.safe_dump({"backends": {"openai": {"api_key": LONG_KEY}}}))
        done = self.run_command(sys.executable, "-m", "llmproxy", "check", "--config", good)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("backends.openai.keys", done.stdout)
        self.assertNotIn(LONG_KEY, done.stdout + done.stderr)
        bad = self.config_file("backends:\n  openai:\n    api_kye: x\n")
        done = self.run_command(sys.executable, "-m", "llmproxy", "check", "--config", bad)
        self.assertEqual(done.returncode, 1)
        self.assertIn(f"error: {bad}:3: backends.openai.api_kye: unknown key", done.stdout)

    def test_twistd_llmproxy_check(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise self.skipTest("no twistd script next to the interpreter")
        bad = self.config_file("failure_handling: {max_attempt: 2}\n")
        done = self.run_command(twistd, "llmproxy", "--check", "--config", bad)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("did you mean 'max_attempts'?", done.stdout)
        good = self.config_file("failure_handling: {max_attempts: 2}\n")
        done = self.run_command(twistd, "llmproxy", "--check", "--config", good)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(good), "twistd.pid")))

    def test_probe_exit_status(self) -> None:
        port = closed_port()
        data = {"backends": {"openai": {"api_key": "sk-1", "connect_timeout": 2,
                                        "base_url": f"http://127.0.0.1:{port}/v1"}}}
        path = self.config_file(yaml.safe_dump(data))
        done = self.run_command(sys.executable, "-m", "llmproxy", "check", "--config", path,
                                "--probe")
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("probe openai key openai#1: unreachable (ConnectionRefusedError)", done.stdout)
