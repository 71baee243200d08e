"""
The small things operators expect (issue #17, section 7): C{--version},
internal options hidden from C{--help}, no pidfile in the foreground
unless asked for, and a demo whose C{/v1/models} leaves out the backend
that has no key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import twisted
import yaml
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from llmproxy import __version__
from llmproxy.tap import Options
from tests.harness import MemoryProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("OPENAI_API_KEY", None)
    env.pop("CONFIG_FILE", None)
    return env


class VersionTests(SynchronousTestCase):
    def assertVersions(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=environment(),
                              timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, f"llmproxy {__version__}\nTwisted {twisted.__version__}\n")

    def test_python_m_llmproxy(self) -> None:
        self.assertVersions(sys.executable, "-m", "llmproxy", "--version")

    def test_twistd_llmproxy(self) -> None:
        if not os.path.exists(TWISTD):
            raise self.skipTest("no twistd script next to the interpreter")
        self.assertVersions(TWISTD, "llmproxy", "--version")


class HiddenOptionsTests(SynchronousTestCase):
    def test_worker_options_are_not_in_the_help(self) -> None:
        usage = Options().getUsage()
        self.assertNotIn("worker-index", usage)
        self.assertNotIn("worker-port", usage)
        self.assertIn("--workers", usage)
        self.assertIn("--check", usage)

    def test_but_still_parsed(self) -> None:
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--worker-index", "2", "--worker-port", "8123"])
        self.assertEqual((options["worker-index"], options["worker-port"]), (2, 8123))


class PidfileTests(SynchronousTestCase):
    def parse(self, *argv: str) -> ServerOptions:
        self.patch(os, "environ", {})
        self.patch(sys, "argv", ["twistd", *argv])
        options = ServerOptions()
        options.parseOptions(list(argv))
        return options

    def test_no_pidfile_in_the_foreground(self) -> None:
        self.assertEqual(self.parse("-n", "llmproxy")["pidfile"], "")

    def test_one_asked_for_is_kept(self) -> None:
        self.assertEqual(self.parse("-n", "--pidfile=twistd.pid", "llmproxy")["pidfile"],
                         os.path.abspath("twistd.pid"))

    def test_a_daemon_keeps_its_pidfile(self) -> None:
        self.assertEqual(self.parse("llmproxy")["pidfile"], os.path.abspath("twistd.pid"))

    def test_two_foreground_instances_in_one_directory(self) -> None:
        """
        Two C{twistd -n llmproxy} started in the same directory both serve.
        """
        if not os.path.exists(TWISTD):
            raise self.skipTest("no twistd script next to the interpreter")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        processes = []
        for _ in range(2):
            process = subprocess.Popen(
                [TWISTD, "-n", "llmproxy", "--listen", "tcp:0:interface=127.0.0.1",
                 "--default-backend", "mock"], cwd=cwd, env=environment(),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.addCleanup(_stop, process)
            processes.append(process)
        for process in processes:
            self.assertIn(b"llmproxy on tcp:", _wait_for(process, b"llmproxy on tcp:"))
        self.assertEqual(os.listdir(cwd), [])


def _wait_for(process: subprocess.Popen[bytes], marker: bytes) -> bytes:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    text = b""
    deadline = time.monotonic() + 30
    while marker not in text and time.monotonic() < deadline and process.poll() is None:
        text += process.stdout.read() or b""
        time.sleep(0.05)
    return text + (process.stdout.read() or b"")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def demo(upstream: str) -> dict[str, Any]:
    with open(os.path.join(ROOT, "config", "demo.yaml")) as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


class DemoModelsTests(SynchronousTestCase):
    def ids(self, environ: dict[str, str]) -> list[str]:
        proxy = MemoryProxy(demo, environ=environ)
        answer = proxy.get("/v1/models")
        self.assertEqual(answer.status, 200)
        return [model["id"] for model in answer.json()["data"]]

    def test_a_backend_without_its_key_is_not_listed(self) -> None:
        self.assertEqual(self.ids({}), ["mock-echo", "mock:mock-echo"])

    def test_with_its_key_it_is(self) -> None:
        ids = self.ids({"OPENAI_API_KEY": "sk-test"})
        self.assertIn("openai:gpt-4o", ids)
        self.assertIn("mock:mock-echo", ids)


class FrozenStartupTests(SynchronousTestCase):
    """
    What startup built is left out of the garbage collector's passes once
    the service runs.
    """

    def test_started_last_it_freezes_the_heap(self) -> None:
        import gc

        from llmproxy.tap import FrozenStartup, makeService

        self.addCleanup(gc.unfreeze)
        options = Options()
        options.parseOptions([])
        proxy = makeService(options, reactor=None)
        last = list(proxy)[-1]
        self.assertIsInstance(last, FrozenStartup)
        gc.unfreeze()
        before = gc.get_freeze_count()
        last.startService()
        self.assertGreater(gc.get_freeze_count(), before)
