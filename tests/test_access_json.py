"""
The structured access log (#17, section 3): one JSON line per reply (or
the compact text line) on the main log, standard output or a file rotated
by size; on by default in the foreground; never a key, bearer or body.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.config.error import ConfigError
from llmproxy.config.operations import AccessLogConfig
from llmproxy.frontends.access import AccessLog, AccessWriter, access_observer
from llmproxy.tap import Options
from llmproxy.testing import chat_request
from llmproxy.testing.upstream import Stream
from tests.harness import MemoryProxy, base_config
from tests.test_usage import openai_layout

KEY = "proxy-secret-key"
AUTH = {"authorization": f"Bearer {KEY}", "user-agent": "test-agent/1.0"}
PROMPT = "a very private prompt"


def logged(case: SynchronousTestCase, access: Any) -> MemoryProxy:
    """
    A proxy whose access log is C{access}; its file closed after the test.
    """
    proxy = MemoryProxy(lambda u: {**base_config(u, proxy_keys=[KEY]), "access_log": access})
    observer = proxy.service.app.access
    if isinstance(observer, AccessWriter):
        case.addCleanup(observer.stopService)
    return proxy


def ask(proxy: MemoryProxy, stream: bool = True, **headers: str) -> None:
    if stream:
        proxy.fake.script.append(Stream(openai_layout()))
    body = chat_request(stream=stream, messages=[{"role": "user", "content": PROMPT}])
    proxy.post("/v1/chat/completions", body, {**AUTH, **headers})


def lines(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class JSONFileTests(SynchronousTestCase):
    def test_one_line_per_reply(self) -> None:
        """
        A streaming client that never asked for usage: its tokens (cached
        included) are in its line, with the rest of the reply's story.
        """
        path = self.mktemp()
        proxy = logged(self, {"format": "json", "path": path})
        proxy.advance(2.0)
        ask(proxy, **{"x-session-id": "my-session-name"})
        [line] = lines(path)
        self.assertEqual(
            {k: line[k] for k in ("method", "path", "status", "route", "frontend", "backend",
                                  "model", "key", "attempts", "streamed", "completed")},
            {"method": "POST", "path": "/v1/chat/completions", "status": 200,
             "route": "openai:gpt-4o", "frontend": "chat", "backend": "openai",
             "model": "gpt-4o", "key": "openai#1", "attempts": 1, "streamed": True,
             "completed": True})
        self.assertEqual(line["usage"], {"prompt": 12, "completion": 5, "total": 17,
                                         "cached": 8, "reasoning": 2})
        self.assertRegex(line["request_id"], r"^req_[0-9a-f]{24}$")
        self.assertGreater(line["bytes"], 0)
        self.assertEqual((line["duration"], line["time_to_first_event"]), (0.0, 0.0))
        self.assertTrue(line["session"])
        self.assertEqual(line["user_agent"], "test-agent/1.0")
        self.assertTrue(line["time"].startswith("20"))
        text = open(path).read()
        for secret in (KEY, "sk-test-1", PROMPT, "my-session-name", "Bearer"):
            self.assertNotIn(secret, text)

    def test_refused_request(self) -> None:
        path = self.mktemp()
        proxy = logged(self, {"format": "json", "path": path})
        proxy.post("/v1/chat/completions", chat_request(),
                   {"authorization": "Bearer wrong-key"})
        [line] = lines(path)
        self.assertEqual((line["status"], line["route"], line["usage"]), (401, None, None))
        self.assertNotIn("wrong-key", open(path).read())

    def test_rotated_by_size(self) -> None:
        path = self.mktemp()
        proxy = logged(self, {"format": "json", "path": path, "max_bytes": 600,
                              "max_files": 2})
        for _ in range(8):
            ask(proxy, stream=False)
        self.assertTrue(os.path.exists(path + ".1"))
        self.assertTrue(os.path.exists(path + ".2"))
        self.assertFalse(os.path.exists(path + ".3"))
        for name in (path, path + ".1", path + ".2"):
            self.assertLessEqual(os.path.getsize(name), 600 + 700)
            self.assertTrue(all(line["status"] == 200 for line in lines(name)))

    def test_file_closed_at_stop(self) -> None:
        path = self.mktemp()
        proxy = logged(self, {"format": "json", "path": path})
        writer = proxy.service.app.access
        assert isinstance(writer, AccessWriter)
        self.assertIs(writer.parent, proxy.service)
        proxy.service.startService()
        proxy.service.stopService()
        self.assertTrue(writer.out.closed)  # type: ignore[attr-defined]


class OtherPlacesTests(SynchronousTestCase):
    def test_stdout_text_is_todays_line(self) -> None:
        out = io.StringIO()
        events: list[Any] = []
        proxy = logged(self, True)
        app = proxy.service.app
        app.events.addObserver(access_observer(AccessLogConfig(path="-"), stdout=out))
        app.events.addObserver(AccessLog(Logger(observer=events.append)))
        ask(proxy)
        [line] = out.getvalue().splitlines()
        self.assertEqual(line, formatEvent(events[0]))
        self.assertIn("prompt=12 completion=5 total=17 cached=8 reasoning=2", line)

    def test_json_on_the_main_log(self) -> None:
        events: list[Any] = []
        proxy = logged(self, False)
        proxy.service.app.events.addObserver(AccessLog(Logger(observer=events.append), "json"))
        ask(proxy)
        record = json.loads(formatEvent(events[0]))
        self.assertEqual(record["usage"]["cached"], 8)


class ConfigTests(SynchronousTestCase):
    def _config(self, access: Any = None, **extra: Any) -> Any:
        data = base_config("http://x.test/v1", **extra)
        if access is not None:
            data["access_log"] = access
        return build_config(data, environ={}, source="t.yaml", kinds=REGISTRY.kinds)

    def test_forms(self) -> None:
        self.assertEqual(self._config().access_log, False)
        self.assertFalse(self._config().access.said)
        self.assertTrue(self._config(True).access_log)
        self.assertTrue(self._config(False).access.said)
        mapping = self._config({"format": "json", "path": "-", "max_bytes": 10})
        self.assertTrue(mapping.access_log)
        self.assertEqual((mapping.access.format, mapping.access.path, mapping.access.max_bytes),
                         ("json", "-", 10))
        self.assertFalse(self._config({"enabled": False, "format": "json"}).access_log)

    def test_errors(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self._config({"format": "xml"})
        self.assertIn("access_log.format", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            self._config({"pathh": "x"})
        self.assertIn("did you mean 'path'", str(e.exception))


class ForegroundTests(SynchronousTestCase):
    def _options(self, parent: dict[str, Any] | None, access: str | None = None) -> Options:
        options = Options()
        if parent is not None:
            options.parent = parent  # type: ignore[assignment]
        args = ["--disable-auth"]
        if access is not None:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(f"access_log: {access}\n")
            args += ["--config", path]
        options.parseOptions(args)
        return options

    def test_on_in_the_foreground(self) -> None:
        self.assertTrue(self._options({"nodaemon": True}).config.access_log)

    def test_off_as_a_daemon(self) -> None:
        self.assertFalse(self._options({"nodaemon": False}).config.access_log)
        self.assertFalse(self._options(None).config.access_log)

    def test_the_file_decides(self) -> None:
        self.assertFalse(self._options({"nodaemon": True}, "false").config.access_log)


class ProcessTests(SynchronousTestCase):
    """
    The real thing: C{python -m llmproxy} in the foreground, with no
    configuration (the demo backend): its access line on standard output,
    and the request counted on C{/metrics}.
    """

    def test_foreground(self) -> None:
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        from tests.test_startup import _env

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cwd = self.mktemp()
        os.makedirs(cwd)
        proc = subprocess.Popen([sys.executable, "-m", "llmproxy", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_env(), cwd=cwd)
        self.addCleanup(lambda: proc.poll() is not None or (proc.kill(), proc.wait()))
        base = f"http://127.0.0.1:{port}"
        body = json.dumps({"model": "demo", "stream": True,
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()
        for _ in range(150):
            try:
                request = urllib.request.Request(base + "/v1/chat/completions", body,
                                                 {"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    answer.read()
                break
            except OSError:
                time.sleep(0.1)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
            metrics = answer.read().decode()
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
        lines = [line for line in out.splitlines() if "[llmproxy.access#info]" in line]
        self.assertTrue(any('"POST /v1/chat/completions HTTP/1.1" 200' in line
                            and "stream=yes" in line for line in lines), out)
        self.assertNotIn(PROMPT, out)
        self.assertRegex(metrics, r'llmproxy_requests_total\{[^}]*frontend="chat"[^}]*\} 1\.0')
