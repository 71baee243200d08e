"""
Backends of personal subscription accounts (L{BackendKind.loopback_only},
the ChatGPT-login backend's kind): served on loopback only unless the
config allows more; and C{--default-backend TYPE} with no config file.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import BackendKind, Config, ConfigError, Overrides
from llmproxy.config.load import build_config

PERSONAL = BackendKind("personal", default_url="http://127.0.0.1:9/", loopback_only=True)
KINDS = (*REGISTRY.kinds, PERSONAL)


def _build(data: Mapping[str, Any], **overrides: Any) -> Config:
    return build_config(data, Overrides(**overrides), {}, source="t.yaml", kinds=KINDS)


class LoopbackOnlyTests(SynchronousTestCase):
    def test_loopback_is_fine(self) -> None:
        config = _build({"backends": {"me": {"type": "personal"}}})
        self.assertEqual(config.warnings, ())

    def test_refused_beyond_loopback(self) -> None:
        data = {"listen": "tcp:8080:interface=0.0.0.0", "proxy_keys": ["pk"],
                "backends": {"me": {"type": "personal"}}}
        e = self.assertRaises(ConfigError, _build, data)
        self.assertIn("'me'", str(e))
        self.assertIn("allow_remote_codex", str(e))
        self.assertIn("banned", str(e))

    def test_allowed_says_so_at_startup(self) -> None:
        data = {"listen": "tcp:8080", "proxy_keys": ["pk"], "allow_remote_codex": True,
                "backends": {"me": {"type": "personal"}}}
        config = _build(data)
        self.assertTrue(config.allow_remote_codex)
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("'me'", config.warnings[0])

    def test_other_types_are_not_concerned(self) -> None:
        data = {"listen": "tcp:8080", "proxy_keys": ["pk"], "backends": {"o": {"type": "mock"}}}
        self.assertEqual(_build(data).warnings, ())


class DefaultBackendTypeTests(SynchronousTestCase):
    def test_a_type_as_default_backend_with_no_config(self) -> None:
        config = _build({}, default_backend="personal")
        self.assertEqual(config.default_backend, "personal")
        self.assertEqual(config.backends["personal"].type, "personal")
        # The demo backends are still there.
        self.assertIn("mock", config.backends)

    def test_with_a_model(self) -> None:
        config = _build({}, default_backend="personal:some-model")
        self.assertEqual(config.backends["personal"].type, "personal")

    def test_a_configured_file_does_not_grow_backends(self) -> None:
        e = self.assertRaises(ConfigError, _build, {"backends": {"o": {"type": "mock"}}},
                              default_backend="personal")
        self.assertIn("unknown backend 'personal'", str(e))

    def test_a_demo_only_type_is_not_added_twice(self) -> None:
        config = _build({}, default_backend="mock")
        self.assertEqual(sorted(config.backends), ["mock", "openai"])
