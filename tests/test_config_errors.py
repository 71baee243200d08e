# -*- test-case-name: tests.test_config_errors -*-
"""
Config mistakes stop startup with one line naming the setting (issue #10,
items 13-16): unset variables, empty proxy keys, bad listen addresses,
ports and worker counts, unreadable YAML, near-miss keys.  Every test
passes C{environ} explicitly.  The process-level behaviour (one line on
standard error, exit status 1) is in L{tests.test_startup}.
"""

from __future__ import annotations

from typing import Any, Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import (
    BackendKind, BackendOption, Config, ConfigError, Overrides, build_config, load_yaml,
)
from llmproxy.startup import StartupError
from llmproxy.tap import Options

SOURCE = "conf.yaml"
SECRET = "sk-secret-value-123"


def _build(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
           **overrides: Any) -> Config:
    return build_config(data, Overrides(**overrides), environ or {}, source=SOURCE,
                        kinds=REGISTRY.kinds)


class ErrorTestCase(SynchronousTestCase):
    def assertConfigError(self, data: Mapping[str, Any], expected: str,
                          environ: Mapping[str, str] | None = None, **overrides: Any) -> None:
        """
        Building C{data} fails with exactly the L{ConfigError} C{expected}.
        """
        with self.assertRaises(ConfigError) as caught:
            _build(data, environ, **overrides)
        self.assertEqual(str(caught.exception), expected)


class UnsetVariableTests(ErrorTestCase):
    """
    Item 13: a C{${VAR}} whose variable is unset never silently becomes a
    default.
    """

    def test_base_url(self) -> None:
        """
        An unset variable in C{base_url} is an error naming the variable,
        the backend and the file, not OpenAI's URL with this backend's keys.
        """
        data = {"backends": {"x": {"base_url": "${OPENAI_URL}", "api_key": SECRET}}}
        self.assertConfigError(data, "conf.yaml: backends.x.base_url: ${OPENAI_URL} is not set")
        self.assertConfigError({"backends": {"x": {"api_url": "${U}/v1"}}},
                               "conf.yaml: backends.x.api_url: ${U} is not set")

    def test_empty_is_unset(self) -> None:
        self.assertConfigError({"backends": {"x": {"base_url": "${U}"}}},
                               "conf.yaml: backends.x.base_url: ${U} is not set", {"U": ""})

    def test_default_still_works(self) -> None:
        """
        C{${VAR:-default}} gives the default when the variable is unset,
        and the variable when it is set.
        """
        data = {"backends": {"x": {"base_url": "${U:-http://fallback/v1}"}}}
        self.assertEqual(_build(data).backends["x"].base_url, "http://fallback/v1")
        self.assertEqual(_build(data, {"U": "http://set/v1"}).backends["x"].base_url,
                         "http://set/v1")

    def test_explicitly_empty_default(self) -> None:
        """
        C{${VAR:-}} says empty is fine.
        """
        self.assertIsNone(_build({"force_model": "${M:-}"}).force_model)

    def test_listen_and_host(self) -> None:
        """
        An unset variable in C{listen} or C{host} does not fall back to
        C{tcp:8000} or 127.0.0.1.
        """
        self.assertConfigError({"listen": "${LISTEN}"}, "conf.yaml: listen: ${LISTEN} is not set")
        self.assertConfigError({"host": "${HOST}"}, "conf.yaml: host: ${HOST} is not set")

    def test_everywhere(self) -> None:
        """
        Other strings too: an empty C{reasoning_models} would match every
        model; an empty model name, a forced empty selector.
        """
        self.assertConfigError({"backends": {"x": {"reasoning_models": "${R}"}}},
                               "conf.yaml: backends.x.reasoning_models: ${R} is not set")
        self.assertConfigError({"backends": {"x": {"models": ["a", "${M}"]}}},
                               "conf.yaml: backends.x.models[1]: ${M} is not set")
        self.assertConfigError({"force_model": "openai:${M}"},
                               "conf.yaml: force_model: ${M} is not set")
        self.assertConfigError({"model_aliases": [{"pattern": "^a$", "replacement": "${R}"}]},
                               "conf.yaml: model_aliases[0].replacement: ${R} is not set")

    def test_environment_aliases_use_given_environ(self) -> None:
        env = {"MODEL_ALIASES": '[{"pattern": "^a$", "replacement": "${R}"}]', "R": "mock:m"}
        self.assertEqual(_build({}, env).model_aliases[0].replacement, "mock:m")

    def test_base_url_must_be_http(self) -> None:
        """
        A C{base_url} that is not an http(s) URL is an error, from the file
        or from C{OPENAI_BASE_URL}.
        """
        self.assertConfigError(
            {"backends": {"x": {"base_url": "api.example.com/v1"}}},
            "conf.yaml: backends.x.base_url: expected an http:// or https:// URL, "
            "got 'api.example.com/v1'")
        self.assertConfigError(
            {}, "OPENAI_BASE_URL (for backend 'openai'): expected an http:// or https:// URL, "
            "got 'localhost:1234'", {"OPENAI_BASE_URL": "localhost:1234"})
        self.assertConfigError({"backends": {"x": {"base_url": "http://h:99999/v1"}}},
                               "conf.yaml: backends.x.base_url: expected an http:// or https:// "
                               "URL, got 'http://h:99999/v1'")

    def test_unset_upstream_keys_warn(self) -> None:
        """
        An upstream key whose variable is unset is left out, as before (a
        shared file may name keys some environments lack; a backend left
        keyless answers each request with an error naming the variable),
        but startup says so; the warning never holds a key.
        """
        data = {"backends": {
            "all": {"api_keys": ["${KEY_A}", "${KEY_B}"]},
            "some": {"api_keys": [SECRET, "${KEY_C}"]},
            "one": {"api_key": "${KEY_D}"},
            "set": {"api_key": "${KEY_E}"},
        }}
        config = _build(data, {"KEY_E": SECRET})
        self.assertEqual(config.backends["all"].keys, ())
        self.assertEqual(config.backends["all"].key_env, "KEY_A")
        self.assertEqual([k.value for k in config.backends["some"].keys], [SECRET])
        self.assertEqual(config.warnings, (
            "conf.yaml: backends.all.api_keys: ${KEY_A}, ${KEY_B} are not set: "
            "those keys are left out",
            "conf.yaml: backends.some.api_keys: ${KEY_C} is not set: that key is left out",
            "conf.yaml: backends.one.api_key: ${KEY_D} is not set: that key is left out",
        ))

    def test_implicit_openai_keys_do_not_warn(self) -> None:
        """
        The demo C{openai} backend, keyed from C{OPENAI_API_KEY} if at all,
        has nothing to warn about.
        """
        self.assertEqual(_build({}).warnings, ())


class ProxyKeyTests(ErrorTestCase):
    """
    Item 14: no proxy key is ever empty; none is silently dropped.
    """

    def test_unset_variable(self) -> None:
        self.assertConfigError({"proxy_keys": ["${PK}"]},
                               "conf.yaml: proxy_keys[0]: ${PK} is not set")
        self.assertConfigError({"proxy_keys": ["k", "${PK}"]},
                               "conf.yaml: proxy_keys[1]: ${PK} is not set")

    def test_empty_after_expansion(self) -> None:
        self.assertConfigError({"proxy_keys": ["${PK:-}"]},
                               "conf.yaml: proxy_keys[0]: the key is empty")
        self.assertConfigError({"proxy_keys": [""]}, "conf.yaml: proxy_keys[0]: the key is empty")

    def test_whitespace(self) -> None:
        """
        A key with surrounding whitespace can never match (the client's
        token is stripped).
        """
        self.assertConfigError({"proxy_keys": [" k"]},
                               "conf.yaml: proxy_keys[0]: a key cannot start or end with "
                               "whitespace (a client's token is stripped)")

    def test_environment(self) -> None:
        """
        An empty entry in C{LLMPROXY_KEYS} (a stray comma, an unset
        variable in a shell's C{"$A,$B"}) is an error; an empty or blank
        C{LLMPROXY_KEYS} is no keys, like an unset one.
        """
        for value in ("a,,b", ",", "a,"):
            with self.subTest(value=value), self.assertRaises(ConfigError) as caught:
                _build({}, {"LLMPROXY_KEYS": value})
            self.assertRegex(str(caught.exception), r"^LLMPROXY_KEYS: key \d of \d is empty$")
        self.assertEqual(_build({}, {"LLMPROXY_KEYS": ""}).proxy_keys, ())
        self.assertEqual(_build({}, {"LLMPROXY_KEYS": " "}).proxy_keys, ())
        self.assertEqual(_build({}, {"LLMPROXY_KEYS": " a , b"}).proxy_keys, ("a", "b"))

    def test_command_line(self) -> None:
        self.assertConfigError({}, "--proxy-key: the key is empty", proxy_keys=("k", ""))

    def test_keys_never_in_errors(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            _build({"proxy_keys": [SECRET, " " + SECRET]})
        self.assertNotIn(SECRET, str(caught.exception))


class ListenTests(ErrorTestCase):
    """
    Item 15, the configuration's part: a bad address, port or worker count
    is a one-line error naming the setting.
    """

    def test_listen_not_a_port(self) -> None:
        self.assertConfigError({"listen": "tcp:notaport"},
                               "conf.yaml: listen: 'tcp:notaport': port 'notaport' is not a number")
        self.assertConfigError({}, "--listen: 'tcp:notaport': port 'notaport' is not a number",
                               listen="tcp:notaport")

    def test_listen_port_out_of_range(self) -> None:
        self.assertConfigError({}, "--listen: 'tcp:99999': port 99999 is out of range (0-65535)",
                               listen="tcp:99999")
        self.assertConfigError({}, "--listen: 'tcp6:-1': port '-1' is not a number",
                               listen="tcp6:-1")

    def test_listen_options(self) -> None:
        self.assertConfigError(
            {}, "--listen: 'tcp:1:interfce=127.0.0.1': unknown option 'interfce' "
                "(known: interface, backlog); did you mean 'interface'?",
            listen="tcp:1:interfce=127.0.0.1")
        self.assertConfigError(
            {}, "--listen: 'tcp:1:backlog=many:interface=127.0.0.1': backlog 'many' is not a "
                "positive number", listen="tcp:1:backlog=many:interface=127.0.0.1")

    def test_listen_other_endpoints(self) -> None:
        """
        Other endpoint types are checked by Twisted's own parser.
        """
        self.assertConfigError({}, "--listen: 'bogus:1' is not a valid endpoint: "
                                   "Unknown endpoint type: 'bogus'", listen="bogus:1")
        self.assertEqual(_build({}, listen="unix:/tmp/x.sock").listen, "unix:/tmp/x.sock")

    def test_port(self) -> None:
        self.assertConfigError({}, "--port: 99999 is not a port number (0-65535)", port=99999)
        self.assertConfigError({}, "--port: -1 is not a port number (0-65535)", port=-1)
        self.assertConfigError({}, "APP_PORT: 70000 is not a port number (0-65535)",
                               {"APP_PORT": "70000"})
        self.assertConfigError({"port": 65536},
                               "conf.yaml: port: 65536 is not a port number (0-65535)")

    def test_port_zero_is_a_port(self) -> None:
        """
        C{--port 0} (any free port) is not mistaken for no port.
        """
        self.assertEqual(_build({"port": 9}, port=0).listen, "tcp:0:interface=127.0.0.1")
        self.assertEqual(_build({}, {"APP_PORT": "0"}).listen, "tcp:0:interface=127.0.0.1")

    def test_ipv6_host(self) -> None:
        """
        An IPv6 host is escaped for the endpoint string, so it is loopback
        (no proxy keys needed) and valid.
        """
        for host in ("::1", "[::1]"):
            self.assertEqual(_build({}, host=host, port=1).listen, r"tcp:1:interface=\:\:1")

    def test_host_cannot_add_options(self) -> None:
        """
        A host is one value: its colons cannot start endpoint options.
        """
        config = _build({}, {"APP_HOST": "127.0.0.1:backlog=1"}, disable_auth=True)
        self.assertEqual(config.listen, r"tcp:8000:interface=127.0.0.1\:backlog=1")

    def test_workers(self) -> None:
        self.assertConfigError({}, "--workers: must be at least 1, not 0", workers=0)
        self.assertConfigError({}, "--workers: must be at least 1, not -2", workers=-2)
        self.assertEqual(_build({"workers": 3}).workers, 3)
        self.assertEqual(_build({"workers": 3}, workers=2).workers, 2)


class YAMLTests(SynchronousTestCase):
    """
    Item 15: a file that is not UTF-8 or not YAML is one line naming the
    file and where.
    """

    def load(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        with self.assertRaises(ConfigError) as caught:
            load_yaml(path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(path + ": "), message)
        self.assertNotIn("\n", message)
        return message[len(path) + 2:]

    def test_invalid_utf8(self) -> None:
        self.assertEqual(self.load(b"a: 1\nlog_level: \"\xff\xfe\"\n"),
                         "line 2: not UTF-8 (byte 0xff)")

    def test_syntax(self) -> None:
        self.assertEqual(self.load(b"a:\n\tb: 1\n"),
                         "line 2, column 1: invalid YAML: found character '\\t' that cannot "
                         "start any token")
        self.assertEqual(self.load(b"a: [\n"),
                         "line 2, column 1: invalid YAML: expected the node content, "
                         "but found '<stream end>'")

    def test_constructor_errors(self) -> None:
        self.assertEqual(self.load(b"a: 2024-13-45\n"), "invalid YAML: month must be in 1..12")
        self.assertEqual(self.load(b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
                         "invalid YAML: nested too deeply")

    def test_byte_order_mark(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbflog_level: warn\n")
        self.assertEqual(load_yaml(path), {"log_level": "warn"})


class DidYouMeanTests(ErrorTestCase):
    """
    Item 16: an unknown key names the known key it is closest to, at every
    level where unknown keys are reported.
    """

    def test_every_level(self) -> None:
        cases = [
            ({"proxy_key": ["k"]}, "proxy_key", "proxy_keys"),
            ({"backends": {"x": {"base_ur": "http://h"}}}, "backends.x.base_ur", "base_url"),
            ({"failure_handling": {"max_attempt": 2}}, "failure_handling.max_attempt",
             "max_attempts"),
            ({"responses_store": {"max_item": 2}}, "responses_store.max_item", "max_items"),
            ({"model_aliases": [{"patern": "a", "replacement": "b"}]},
             "model_aliases[0].patern", "pattern"),
            ({"failover_routes": {"r": {"element": ["a"]}}}, "failover_routes.r.element",
             "elements"),
        ]
        for data, key, known in cases:
            with self.subTest(key=key):
                self.assertConfigError(
                    data, f"conf.yaml: {key}: unknown key; did you mean {known!r}?")

    def test_type_options(self) -> None:
        """
        A backend type's own settings are candidates too.
        """
        kinds = (*REGISTRY.kinds, BackendKind("greeter", options=(BackendOption("greeting"),)))
        with self.assertRaises(ConfigError) as caught:
            build_config({"backends": {"g": {"type": "greeter", "greting": "hi"}}},
                         environ={}, source=SOURCE, kinds=kinds)
        self.assertEqual(str(caught.exception),
                         "conf.yaml: backends.g.greting: unknown key; did you mean 'greeting'?")

    def test_far_off_key(self) -> None:
        self.assertConfigError({"zzzz": 1}, "conf.yaml: zzzz: unknown key")

    def test_odd_keys(self) -> None:
        """
        A key that is not a plain string is quoted, on one line, not a
        crash.
        """
        self.assertConfigError({None: 1, "": 2}, "conf.yaml: '': unknown key")
        self.assertConfigError({1: 1}, "conf.yaml: 1: unknown key")
        self.assertConfigError({"a\nb": 1}, "conf.yaml: 'a\\nb': unknown key")

    def test_names(self) -> None:
        """
        An unknown backend type or default backend gets a suggestion too.
        """
        self.assertConfigError(
            {"backends": {"x": {"type": "opnai"}}},
            "conf.yaml: backends.x.type: unknown type 'opnai' "
            "(known: openai, openai-responses, mock, openai-codex, hybrid); did you mean 'openai'?")
        self.assertConfigError(
            {"backends": {"openai": {}}, "default_backend": "opnai"},
            "conf.yaml: default_backend: unknown backend 'opnai' (known: openai); "
            "did you mean 'openai'?")


class OptionsTests(SynchronousTestCase):
    """
    Item 16, through L{Options}: every mistake is a L{StartupError} (one
    line, exit status 1), never a L{UsageError} (which twistd prints after
    the whole usage text).
    """

    def parse(self, *argv: str) -> str:
        self.patch(__import__("os"), "environ", {})
        with self.assertRaises(StartupError) as caught:
            Options().parseOptions(list(argv))
        error = caught.exception
        self.assertEqual(error.code, f"llmproxy: {error.message}")
        self.assertNotIn("\n", error.message)
        return error.message

    def test_config_error(self) -> None:
        self.assertEqual(self.parse("--port", "99999"),
                         "--port: 99999 is not a port number (0-65535)")
        self.assertEqual(self.parse("--workers", "0"), "--workers: must be at least 1, not 0")

    def test_syntax_errors(self) -> None:
        self.assertEqual(self.parse("--port", "http"),
                         "--port: expected a whole number, got 'http' (see --help)")
        self.assertEqual(self.parse("--prot", "1"),
                         "option --prot not recognized; did you mean '--port'? (see --help)")
        self.assertEqual(self.parse("--config"), "option --config requires argument (see --help)")

    def test_help_still_prints_usage(self) -> None:
        import io
        import sys

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--help"])
        self.assertFalse(isinstance(caught.exception, StartupError))
        self.assertIn(caught.exception.code, (0, None))
        self.assertIn("--proxy-key", out.getvalue())


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from(["${A}", "${UNSET}", "${UNSET:-d}", "tcp:0", "http://h/v1", "openai",
                     "mock:m", "a|b", "[", "-1"]),
)
_KEYS = st.one_of(
    st.sampled_from([
        "listen", "host", "port", "proxy_keys", "default_backend", "force_model", "backends",
        "log_level", "workers", "model_aliases", "model_defaults", "failover_routes",
        "failure_handling", "responses_store", "max_body_bytes", "type", "base_url",
        "api_key", "api_keys", "timeout", "models", "reasoning_models", "pattern",
        "replacement", "policy", "elements", "max_items", "openai", "mock",
    ]),
    st.text(max_size=4), st.integers(), st.none(),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


class FuzzTests(SynchronousTestCase):
    """
    Whatever the YAML holds, building the config gives a L{Config} or a
    one-line L{ConfigError}: never another exception (a traceback).
    """

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(_KEYS, _VALUES, max_size=5))
    def test_any_yaml(self, data: dict[Any, Any]) -> None:
        try:
            _build(data, {"A": "a"})
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
