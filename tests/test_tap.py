# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{llmproxy.tap} and the C{twistd llmproxy} plugin.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from llmproxy import tap
from llmproxy.startup import StartupError
from llmproxy.tap import Options, makeService


class TapTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        # Options reads the process environment: give it a known one.
        self.environ: dict[str, str] = {}
        self.patch(os, "environ", self.environ)

    def parse(self, *argv: str, environ: Mapping[str, str] | None = None) -> Options:
        self.environ.clear()
        self.environ.update(environ or {})
        options = Options()
        options.parseOptions(list(argv))
        return options

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class OptionsTests(TapTestCase):
    """
    Every flag ends up in C{options.config}.
    """

    def test_defaults(self) -> None:
        config = self.parse().config
        self.assertEqual(config.listen, "tcp:8000:interface=127.0.0.1")
        self.assertEqual(config.default_backend, "mock")
        self.assertEqual(config.proxy_keys, ())
        self.assertFalse(config.disable_auth)

    def test_config(self) -> None:
        path = self.write("default_backend: up\nbackends:\n  up: {base_url: 'http://u/v1'}\n")
        for flag in (["--config", path], ["-c", path], [f"--config={path}"]):
            config = self.parse(*flag).config
            self.assertEqual(config.default_backend, "up")
            self.assertEqual(config.backends["up"].base_url, "http://u/v1")

    def test_config_file_env(self) -> None:
        path = self.write("log_level: error\n")
        self.assertEqual(self.parse(environ={"CONFIG_FILE": path}).config.log_level, "error")

    def test_listen(self) -> None:
        self.assertEqual(self.parse("--listen", "unix:/tmp/llmproxy.sock").config.listen,
                         "unix:/tmp/llmproxy.sock")
        self.assertEqual(self.parse("-l", "tcp:0:interface=127.0.0.1").config.listen,
                         "tcp:0:interface=127.0.0.1")

    def test_host_port(self) -> None:
        self.assertEqual(self.parse("--host", "127.0.0.5", "--port", "9100").config.listen,
                         "tcp:9100:interface=127.0.0.5")
        self.assertEqual(self.parse("-p", "9101").config.listen,
                         "tcp:9101:interface=127.0.0.1")
        self.assertEqual(self.parse("-p", "9102", environ={"APP_PORT": "1"}).config.listen,
                         "tcp:9102:interface=127.0.0.1")

    def test_port_must_be_int(self) -> None:
        self.assertRaises(StartupError, self.parse, "--port", "http")

    def test_listen_with_port(self) -> None:
        with self.assertRaises(StartupError) as caught:
            self.parse("--listen", "tcp:1:interface=127.0.0.1", "--port", "2")
        self.assertIn("--listen", str(caught.exception))
        self.assertRaises(StartupError, self.parse, "--listen", "unix:/x", "--host", "127.0.0.1")

    def test_default_backend(self) -> None:
        config = self.parse("--default-backend", "openai").config
        self.assertEqual(config.default_backend, "openai")
        config = self.parse("-b", "mock", environ={"LLM_BACKEND": "openai"}).config
        self.assertEqual(config.default_backend, "mock")
        self.assertRaises(StartupError, self.parse, "--default-backend", "nope")

    def test_force_model(self) -> None:
        self.assertEqual(self.parse("--force-model", "openai:gpt-4o").config.force_model,
                         "openai:gpt-4o")
        self.assertEqual(self.parse("--static-route", "mock:mock-echo").config.force_model,
                         "mock:mock-echo")
        config = self.parse("--force-model", "a", environ={"STATIC_ROUTE": "b"}).config
        self.assertEqual(config.force_model, "a")

    def test_proxy_keys(self) -> None:
        config = self.parse("--proxy-key", "k1", "--proxy-key=k2",
                            environ={"LLMPROXY_KEYS": "e1"}).config
        self.assertEqual(set(config.proxy_keys), {"k1", "k2", "e1"})
        self.assertTrue(config.auth_enabled)

    def test_model_aliases(self) -> None:
        config = self.parse("--model-alias", "^fast$=mock:mock-echo",
                            "--model-alias", "^smart$=openai:gpt-4o").config
        self.assertEqual([a.replacement for a in config.model_aliases],
                         ["mock:mock-echo", "openai:gpt-4o"])
        self.assertRaises(StartupError, self.parse, "--model-alias", "no-equals-sign")

    def test_disable_auth(self) -> None:
        self.assertRaises(StartupError, self.parse, "--host", "0.0.0.0")
        config = self.parse("--host", "0.0.0.0", "--disable-auth").config
        self.assertTrue(config.disable_auth)
        self.assertEqual(config.listen, "tcp:8000:interface=0.0.0.0")
        self.assertFalse(config.auth_enabled)

    def test_log_level(self) -> None:
        self.assertEqual(self.parse("--log-level", "debug").config.log_level, "debug")
        self.assertRaises(StartupError, self.parse, "--log-level", "chatty")

    def test_workers(self) -> None:
        self.assertEqual(self.parse("--workers", "3").config.workers, 3)

    def test_flags_beat_file(self) -> None:
        """
        Command-line values win over the same keys in the file.
        """
        path = self.write("listen: tcp:1:interface=127.0.0.1\nlog_level: error\n"
                          "force_model: mock:x\n")
        config = self.parse("-c", path, "--listen", "tcp:2:interface=127.0.0.1",
                            "--log-level", "debug", "--force-model", "mock:y").config
        self.assertEqual((config.listen, config.log_level, config.force_model),
                         ("tcp:2:interface=127.0.0.1", "debug", "mock:y"))

    def test_openai_key_in_environment(self) -> None:
        config = self.parse(environ={"OPENAI_API_KEY": "sk-test"}).config
        self.assertEqual(config.default_backend, "openai")

    def test_bad_config_file(self) -> None:
        """
        A config error is a L{StartupError} naming the key and the file.
        """
        path = self.write("backends:\n  openai:\n    api_kye: x\n")
        with self.assertRaises(StartupError) as caught:
            self.parse("--config", path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("backends.openai.api_kye", str(caught.exception))
        with self.assertRaises(StartupError) as caught:
            self.parse("--config", path + ".missing")
        self.assertIn(path + ".missing", str(caught.exception))

    def test_usage_documents_everything(self) -> None:
        usage = Options().getUsage()
        for option in ("--config", "-c", "--listen", "-l", "--host", "--port", "-p",
                       "--default-backend", "-b", "--force-model", "--static-route",
                       "--proxy-key", "--model-alias", "--disable-auth", "--log-level",
                       "--workers"):
            self.assertIn(option, usage)
        for text in ("Bearer", "PATTERN=REPLACEMENT", "repeatable", "APP_PORT", "LLM_BACKEND",
                     "STATIC_ROUTE", "CONFIG_FILE", "mock"):
            self.assertIn(text, usage)


class PluginTests(TapTestCase):
    """
    The twistd dropin and L{makeService}.
    """

    def test_plugin_found(self) -> None:
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "llmproxy"]
        self.assertEqual(len(makers), 1)
        [maker] = makers
        self.assertIs(maker.options, Options)
        self.assertIs(maker.makeService, tap.makeService)
        self.assertTrue(maker.description)

    def test_make_service(self) -> None:
        """
        C{makeService} returns a L{MultiService} that listens on the
        configured endpoint when started and stops cleanly.
        """
        reactor = MemoryReactorClock()
        options = self.parse("--listen", "tcp:8123:interface=127.0.0.1")
        service = makeService(options, reactor=reactor)
        self.assertIsInstance(service, MultiService)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.assertTrue(service.running)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIsNotNone(factory)
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)

    def test_make_service_unix(self) -> None:
        reactor = MemoryReactorClock()
        service = makeService(self.parse("--listen", "unix:/tmp/llmproxy-test.sock"),
                              reactor=reactor)
        service.startService()
        self.assertEqual([s[0] for s in reactor.unixServers], ["/tmp/llmproxy-test.sock"])
        self.successResultOf(service.stopService())


class LogLevelTests(SynchronousTestCase):
    """
    --log-level reaches twistd as a level-filtering observer.
    """

    def _server_options(self, *args: str) -> Any:
        from twisted.scripts.twistd import ServerOptions

        self.patch(os, "environ", {})
        config = ServerOptions()
        config.parseOptions(list(args))
        return config

    def test_level_becomes_twistd_logger(self) -> None:
        from llmproxy import logs

        config = self._server_options("-n", "llmproxy", "--default-backend", "mock",
                                      "--log-level", "warn")
        self.assertIs(config["logger"], logs.warn)

    def test_daemon_log_file_refused(self) -> None:
        
        with self.assertRaises(StartupError):
            self._server_options("--logfile", "x.log", "llmproxy", "--default-backend", "mock",
                                 "--log-level", "debug")

    def test_observer_filters_below_level(self) -> None:
        import io

        from twisted.logger import Logger

        from llmproxy import logs

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        log = Logger(namespace="t", observer=logs.warn())
        log.info("quiet please")
        log.warn("loud enough")
        self.assertNotIn("quiet please", out.getvalue())
        self.assertIn("loud enough", out.getvalue())
