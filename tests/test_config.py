# -*- test-case-name: tests.test_config -*-
"""
Tests for L{llmproxy.config}.  Every test passes C{environ} explicitly, so
the real environment never leaks in.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends import REGISTRY
from llmproxy.backends.openai import DEFAULT_URL as DEFAULT_OPENAI_URL
from llmproxy.config import (
    DEFAULT_LISTEN, Config, ConfigError, Overrides, build_config, check_exposure, expand_env,
    is_loopback_endpoint, load_config, load_yaml,
)

SECRET = "sk-secret-value-123"
PROXY_SECRET = "proxy-secret-456"
SOURCE = "conf.yaml"


def _build(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
           **overrides: Any) -> Config:
    return build_config(data, Overrides(**overrides), environ or {}, source=SOURCE,
                        kinds=REGISTRY.kinds)


def _load(overrides: Overrides, environ: Mapping[str, str]) -> Config:
    return load_config(overrides, environ, kinds=REGISTRY.kinds)


class ConfigTestCase(SynchronousTestCase):
    def assertConfigError(self, data: Mapping[str, Any], *fragments: str,
                          environ: Mapping[str, str] | None = None,
                          **overrides: Any) -> str:
        """
        Building C{data} fails with a L{ConfigError} whose message holds
        each fragment (and the file name).
        """
        with self.assertRaises(ConfigError) as caught:
            _build(data, environ, **overrides)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class UnknownKeyTests(ConfigTestCase):
    """
    An unknown key anywhere fails, naming the key (with its path) and the
    file.
    """

    def test_top_level(self) -> None:
        self.assertConfigError({"listn": "tcp:1"}, SOURCE, "listn", "unknown key")

    def test_backend(self) -> None:
        self.assertConfigError({"backends": {"openai": {"type": "openai", "api_kye": "x"}}},
                               SOURCE, "backends.openai.api_kye", "unknown key")

    def test_failure_handling(self) -> None:
        self.assertConfigError({"failure_handling": {"max_attempts": 2, "max_attempt": 3}},
                               SOURCE, "failure_handling.max_attempt", "unknown key")

    def test_responses_store(self) -> None:
        self.assertConfigError({"responses_store": {"max_items": 2, "ttl": 3}},
                               SOURCE, "responses_store.ttl", "unknown key")

    def test_alias_entry(self) -> None:
        self.assertConfigError(
            {"model_aliases": [{"pattern": "^a$", "replacement": "b", "flags": "i"}]},
            SOURCE, "model_aliases[0].flags", "unknown key")

    def test_failover_route(self) -> None:
        self.assertConfigError(
            {"failover_routes": {"gpt": {"elements": ["openai:gpt-4o"], "polcy": "k"}}},
            SOURCE, "failover_routes.gpt.polcy", "unknown key")

    def test_known_keys_pass(self) -> None:
        """
        The same structures with only known keys are accepted, and read.
        """
        config = _build({
            "listen": "tcp:9000:interface=127.0.0.1",
            "backends": {"openai": {"type": "openai", "api_key": "k", "timeout": 30,
                                    "models": ["gpt-4o"], "reasoning_models": "^o\\d"}},
            "failure_handling": {"max_attempts": 2, "keepalive_interval": 0.5},
            "responses_store": {"max_items": 5, "max_age": 60},
            "model_aliases": [{"pattern": "^a$", "replacement": "openai:b"}],
            "failover_routes": {"gpt": {"policy": "km", "elements": ["openai:gpt-4o"]},
                                "default": "openai:gpt-4o-mini"},
            "uri_params": "lenient", "max_body_bytes": 4096, "access_log": True,
        })
        self.assertEqual(config.listen, "tcp:9000:interface=127.0.0.1")
        backend = config.backends["openai"]
        self.assertEqual(backend.timeout, 30.0)
        self.assertEqual(backend.models, ("gpt-4o",))
        self.assertTrue(backend.reasoning_models.match("o3"))
        self.assertEqual(config.failure.max_attempts, 2)
        self.assertEqual(config.failure.keepalive_interval, 0.5)
        self.assertEqual((config.responses_store_size, config.responses_store_ttl), (5, 60.0))
        self.assertEqual(config.failover_routes["gpt"].policy, "km")
        self.assertEqual(config.failover_routes["default"].elements, ("openai:gpt-4o-mini",))
        self.assertEqual(config.failover_routes["default"].policy, "m")
        self.assertEqual(config.uri_params, "lenient")
        self.assertTrue(config.access_log)


class TypeTests(ConfigTestCase):
    """
    Values of the wrong type or range fail, naming key and file.
    """

    def test_wrong_types(self) -> None:
        cases = [
            ({"port": "8000"}, "port", "an integer"),
            ({"listen": 8000}, "listen", "a string"),
            ({"backends": ["openai"]}, "backends", "a mapping"),
            ({"backends": {"openai": "yes"}}, "backends.openai", "a mapping"),
            ({"backends": {"openai": {"timeout": "10"}}}, "backends.openai.timeout", "number"),
            ({"backends": {"openai": {"timeout": True}}}, "backends.openai.timeout", "number"),
            ({"backends": {"openai": {"models": ["a", 1]}}}, "backends.openai.models",
             "list of strings"),
            ({"backends": {"openai": {"api_keys": "k"}}}, "backends.openai.api_keys", "a list"),
            ({"backends": {"default_backend": 3, "openai": {}}}, "backends.default_backend",
             "a string"),
            ({"failure_handling": {"max_attempts": 1.5}}, "failure_handling.max_attempts",
             "an integer"),
            ({"failure_handling": {"max_attempts": 0}}, "failure_handling.max_attempts",
             "at least 1"),
            ({"failure_handling": {"max_wait": -1}}, "failure_handling.max_wait", "at least"),
            ({"disable_auth": "yes"}, "disable_auth", "true or false"),
            ({"proxy_keys": "k"}, "proxy_keys", "a list"),
            ({"model_aliases": {"a": "b"}}, "model_aliases", "a list"),
            ({"model_aliases": ["a=b"]}, "model_aliases[0]", "pattern"),
            ({"model_defaults": {"gpt-4o": 3}}, "model_defaults.gpt-4o", "mapping"),
            ({"uri_params": "loose"}, "uri_params", "strict or lenient"),
            ({"log_level": "verbose"}, "log_level", "debug"),
            ({"max_body_bytes": 10}, "max_body_bytes", "at least"),
            ({"backends": {"x": {"type": "anthropic"}}}, "backends.x.type", "unknown type"),
            ({"backends": {"x": {"type": "openai", "connector": "mock"}}}, "backends.x.type",
             "conflicts"),
            ({"backends": {"x": {"base_url": "http://a", "api_url": "http://b"}}},
             "backends.x.api_url", "conflicts"),
            ({"backends": {"x": {"reasoning_models": "o(1"}}}, "backends.x.reasoning_models",
             "o(1"),
            ({"failover_routes": {"r": {"policy": "zz", "elements": ["a"]}}},
             "failover_routes.r.policy", "unknown policy"),
            ({"failover_routes": {"r": {"elements": []}}}, "failover_routes.r.elements",
             "at least one"),
            ({"default_backend": "a", "backends": {"default_backend": "b", "a": {}, "b": {}}},
             "default_backend", "conflicts"),
        ]
        for data, key, problem in cases:
            with self.subTest(data=data):
                message = self.assertConfigError(data, SOURCE, key, problem)
                self.assertTrue(message.startswith(SOURCE + ": "), message)

    def test_overridden_keys_still_checked(self) -> None:
        """
        A YAML key that the command line or the environment overrides is
        still known, and still type-checked.
        """
        self.assertEqual(_build({"host": "127.0.0.2", "port": 1, "log_level": "debug",
                                 "workers": 2, "force_model": "m", "default_backend": "mock",
                                 "backends": {"mock": {}}},
                                {"STATIC_ROUTE": "e"}, host="127.0.0.3", port=5,
                                log_level="warn", workers=3, default_backend="mock").listen,
                         "tcp:5:interface=127.0.0.3")
        cases = [
            ({"host": 3}, {}, {"host": "127.0.0.1"}, "host"),
            ({"port": "1"}, {"APP_PORT": "2"}, {}, "port"),
            ({"listen": 3}, {}, {"listen": "tcp:1:interface=127.0.0.1"}, "listen"),
            ({"log_level": 3}, {}, {"log_level": "warn"}, "log_level"),
            ({"workers": 0}, {}, {"workers": 2}, "workers"),
            ({"force_model": 3}, {"STATIC_ROUTE": "m"}, {}, "force_model"),
            ({"default_backend": 3}, {"LLM_BACKEND": "openai"}, {}, "default_backend"),
            ({"disable_auth": "no"}, {}, {"disable_auth": True}, "disable_auth"),
        ]
        for data, environ, overrides, key in cases:
            with self.subTest(data=data):
                self.assertConfigError(data, SOURCE, key, environ=environ, **overrides)

    def test_env_port(self) -> None:
        """
        A non-numeric C{APP_PORT} is a L{ConfigError}, not a crash.
        """
        self.assertConfigError({}, "APP_PORT", environ={"APP_PORT": "http"})
        self.assertEqual(_build({}, {"APP_PORT": "9001"}).listen,
                         "tcp:9001:interface=127.0.0.1")


class EnvExpansionTests(ConfigTestCase):
    """
    C{${VAR}} and C{${VAR:-default}} in string values.
    """

    def test_expand_env(self) -> None:
        env = {"A": "alpha", "EMPTY": ""}
        self.assertEqual(expand_env("x${A}y", env), "xalphay")
        self.assertEqual(expand_env("${MISSING}", env), "")
        self.assertEqual(expand_env("${MISSING:-dflt}", env), "dflt")
        self.assertEqual(expand_env("${EMPTY:-dflt}", env), "dflt")
        self.assertEqual(expand_env("${A:-dflt}", env), "alpha")
        self.assertEqual(expand_env("${A}-${A}", env), "alpha-alpha")
        self.assertEqual(expand_env("$A {A} ${1A}", env), "$A {A} ${1A}")
        self.assertEqual(expand_env("${MISSING:-}", env), "")

    @given(st.text(st.characters(blacklist_characters="$")))
    def test_no_references_unchanged(self, text: str) -> None:
        """
        Text without C{$} is never changed.
        """
        self.assertEqual(expand_env(text, {"A": "x"}), text)

    def test_in_config(self) -> None:
        """
        References are expanded in backend fields, lists and top-level
        strings.
        """
        env = {"HOST": "http://up:1/v1", "M": "gpt-x", "PORT_LISTEN": "tcp:7000"}
        config = _build({
            "listen": "${PORT_LISTEN}:interface=127.0.0.1",
            "backends": {"up": {"type": "openai", "base_url": "${HOST}",
                                "models": ["${M}", "${N:-gpt-y}"]}},
        }, env)
        self.assertEqual(config.listen, "tcp:7000:interface=127.0.0.1")
        self.assertEqual(config.backends["up"].base_url, "http://up:1/v1")
        self.assertEqual(config.backends["up"].models, ("gpt-x", "gpt-y"))

    def test_key_from_env(self) -> None:
        """
        A key from one variable is named after the variable; an unset one
        gives no key but remembers the variable to ask for.
        """
        data = {"backends": {"up": {"type": "openai", "api_key": "${UP_KEY}"}}}
        backend = _build(data, {"UP_KEY": SECRET}).backends["up"]
        self.assertEqual([(k.name, k.value) for k in backend.keys], [("UP_KEY", SECRET)])
        backend = _build(data, {}).backends["up"]
        self.assertEqual(backend.keys, ())
        self.assertEqual(backend.key_env, "UP_KEY")


class OpenAIBackendTests(ConfigTestCase):
    """
    The generic C{openai} backend and its environment variables.
    """

    SEED = {"backends": {"openai": {"type": "openai"}}, "default_backend": "openai"}

    def test_seed_takes_openai_api_key(self) -> None:
        config = _build(self.SEED, {"OPENAI_API_KEY": SECRET})
        self.assertEqual(config.default_backend, "openai")
        backend = config.backends["openai"]
        self.assertEqual([(k.name, k.value) for k in backend.keys], [("OPENAI_API_KEY", SECRET)])
        self.assertEqual(backend.key_env, "OPENAI_API_KEY")
        self.assertEqual(backend.base_url, DEFAULT_OPENAI_URL)

    def test_other_backends_ignore_openai_env(self) -> None:
        """
        Only the backend named C{openai} reads C{OPENAI_API_KEY}.
        """
        config = _build({"backends": {"up": {"type": "openai"}}},
                        {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://x/v1"})
        self.assertEqual(config.backends["up"].keys, ())
        self.assertEqual(config.backends["up"].base_url, DEFAULT_OPENAI_URL)

    def test_explicit_key_has_no_env_fallback(self) -> None:
        """
        An C{api_key} that expands to nothing leaves the C{openai} backend
        keyless, asking for its own variable, not C{OPENAI_API_KEY}.
        """
        data = {"backends": {"openai": {"api_key": "${UNSET_KEY}"}}}
        backend = _build(data, {"OPENAI_API_KEY": SECRET}).backends["openai"]
        self.assertEqual(backend.keys, ())
        self.assertEqual(backend.key_env, "UNSET_KEY")

    def test_yaml_key_wins(self) -> None:
        data = {"backends": {"openai": {"api_key": "yaml-key"}}}
        backend = _build(data, {"OPENAI_API_KEY": SECRET}).backends["openai"]
        self.assertEqual([k.value for k in backend.keys], ["yaml-key"])

    def test_api_url_synonym(self) -> None:
        config = _build({"backends": {"up": {"api_url": "http://up:9/v1/"}}})
        self.assertEqual(config.backends["up"].base_url, "http://up:9/v1")
        same = _build({"backends": {"up": {"api_url": "http://a/v1", "base_url": "http://a/v1"}}})
        self.assertEqual(same.backends["up"].base_url, "http://a/v1")

    def test_base_url_env(self) -> None:
        """
        C{OPENAI_API_BASE_URL}, else C{OPENAI_BASE_URL}, sets the default
        openai backend's URL.
        """
        url = _build(self.SEED, {"OPENAI_BASE_URL": "http://b/v1"}).backends["openai"].base_url
        self.assertEqual(url, "http://b/v1")
        url = _build(self.SEED, {"OPENAI_BASE_URL": "http://b/v1",
                                 "OPENAI_API_BASE_URL": "http://a/v1/"}).backends["openai"].base_url
        self.assertEqual(url, "http://a/v1")
        url = _build({}, {"OPENAI_API_BASE_URL": "http://c/v1"}).backends["openai"].base_url
        self.assertEqual(url, "http://c/v1")

    def test_numbered_keys(self) -> None:
        """
        C{OPENAI_API_KEY_1..N}, with gaps, form the pool in order, named by
        variable; the bare C{OPENAI_API_KEY} then stays out.
        """
        env = {"OPENAI_API_KEY": "bare", "OPENAI_API_KEY_1": "k1", "OPENAI_API_KEY_3": "k3",
               "OPENAI_API_KEY_12": "k12", "OPENAI_API_KEY_0": "k0", "OPENAI_API_KEY_2": ""}
        keys = _build(self.SEED, env).backends["openai"].keys
        self.assertEqual([(k.name, k.value) for k in keys],
                         [("OPENAI_API_KEY_1", "k1"), ("OPENAI_API_KEY_3", "k3"),
                          ("OPENAI_API_KEY_12", "k12")])

    def test_key_names_never_values(self) -> None:
        """
        Key names never contain the key values, whatever form they came
        in, and neither the config's C{repr} nor the overrides' does.
        """
        env = {"OPENAI_API_KEY_1": SECRET + "1", "OPENAI_API_KEY_2": SECRET + "2",
               "LLMPROXY_KEYS": PROXY_SECRET}
        config = _build({
            "backends": {"openai": {}, "lit": {"api_key": SECRET + "lit"},
                         "many": {"api_keys": [SECRET + "a", "${K}"]}},
            "proxy_keys": [PROXY_SECRET + "yaml"],
        }, {**env, "K": SECRET + "k"}, proxy_keys=(PROXY_SECRET + "cli",))
        names = [k.name for b in config.backends.values() for k in b.keys]
        self.assertEqual(len(names), 5)
        for name in names:
            self.assertNotIn(SECRET, name)
        self.assertEqual([k.name for k in config.backends["many"].keys], ["many#1", "many#2"])
        for text in (repr(config), str(config),
                     repr(Overrides(proxy_keys=(PROXY_SECRET,)))):
            self.assertNotIn(SECRET, text)
            self.assertNotIn(PROXY_SECRET, text)
        self.assertIn("OPENAI_API_KEY_1", repr(config))


class ProxyKeyTests(ConfigTestCase):
    def test_sources_combine(self) -> None:
        """
        YAML, C{LLMPROXY_KEYS} (comma-separated) and the command line all
        add proxy keys, without duplicates; auth is then on.
        """
        config = _build({"proxy_keys": ["y1", "${PK}"]},
                        {"PK": "y2", "LLMPROXY_KEYS": " e1 ,e2,y1"}, proxy_keys=("c1",))
        self.assertEqual(config.proxy_keys, ("y1", "y2", "e1", "e2", "c1"))
        self.assertTrue(config.auth_enabled)
        self.assertFalse(_build({}).auth_enabled)
        self.assertFalse(_build({}, proxy_keys=("k",), disable_auth=True).auth_enabled)

    def test_unset_variable_is_an_error(self) -> None:
        """
        A YAML proxy key whose variable is unset stops startup: leaving it
        out could leave no key, and auth off.
        """
        self.assertConfigError({"proxy_keys": ["${UNSET_PROXY_KEY}", "k"]},
                               "proxy_keys[0]", "${UNSET_PROXY_KEY} is not set")

    def test_expansion_uses_given_environ(self) -> None:
        """
        C{${VAR}} is expanded from the C{environ} passed in, not from the
        process environment.
        """
        self.patch(os, "environ", {"PK": "from-os"})
        config = _build({"proxy_keys": ["${PK}"]}, {"PK": "from-arg"})
        self.assertEqual(config.proxy_keys, ("from-arg",))


class OverrideTests(ConfigTestCase):
    """
    Command line beats environment beats YAML, even when the YAML sets the
    same key.
    """

    YAML = {"listen": "tcp:1000:interface=127.0.0.1", "log_level": "debug",
            "force_model": "yaml-model", "workers": 2, "disable_auth": False,
            "default_backend": "mock",
            "backends": {"mock": {"type": "mock"}, "openai": {}}}

    def test_yaml_alone(self) -> None:
        config = _build(self.YAML)
        self.assertEqual((config.listen, config.log_level, config.force_model, config.workers,
                          config.default_backend),
                         ("tcp:1000:interface=127.0.0.1", "debug", "yaml-model", 2, "mock"))

    def test_cli_beats_yaml(self) -> None:
        config = _build(self.YAML, listen="unix:/tmp/x.sock", log_level="warn",
                        force_model="cli-model", workers=4, default_backend="openai",
                        disable_auth=True)
        self.assertEqual((config.listen, config.log_level, config.force_model, config.workers,
                          config.default_backend, config.disable_auth),
                         ("unix:/tmp/x.sock", "warn", "cli-model", 4, "openai", True))

    def test_env_beats_yaml(self) -> None:
        config = _build(self.YAML, {"STATIC_ROUTE": "env-model", "LLM_BACKEND": "openai"})
        self.assertEqual((config.force_model, config.default_backend), ("env-model", "openai"))
        config = _build(self.YAML, {"STATIC_ROUTE": "env-model", "LLM_BACKEND": "openai"},
                        force_model="cli-model", default_backend="mock")
        self.assertEqual((config.force_model, config.default_backend), ("cli-model", "mock"))

    def test_host_port(self) -> None:
        """
        Host and port (CLI > env > YAML) make a TCP endpoint, replacing a
        YAML C{listen} when given on the command line.
        """
        data = {"host": "127.0.0.2", "port": 1234}
        self.assertEqual(_build(data).listen, "tcp:1234:interface=127.0.0.2")
        self.assertEqual(_build(data, {"APP_HOST": "127.0.0.3", "APP_PORT": "99"}).listen,
                         "tcp:99:interface=127.0.0.3")
        self.assertEqual(_build(data, {"APP_HOST": "127.0.0.3"}, host="127.0.0.4", port=5).listen,
                         "tcp:5:interface=127.0.0.4")
        self.assertEqual(_build(self.YAML, port=4321).listen, "tcp:4321:interface=127.0.0.1")
        self.assertEqual(_build({}).listen, DEFAULT_LISTEN)
        self.assertConfigError({}, "--listen", listen="tcp:1", port=2)

    def test_yaml_listen_beats_host_port(self) -> None:
        """
        A YAML C{listen} beats YAML and environment host and port; only
        C{--host}/C{--port} replace it.
        """
        data = {"listen": "unix:/tmp/s", "host": "127.0.0.2", "port": 1234}
        self.assertEqual(_build(data).listen, "unix:/tmp/s")
        self.assertEqual(_build(data, {"APP_HOST": "127.0.0.3", "APP_PORT": "99"}).listen,
                         "unix:/tmp/s")
        self.assertEqual(_build(data, {"APP_PORT": "99"}, host="127.0.0.4").listen,
                         "tcp:99:interface=127.0.0.4")

    def test_cli_alias_first(self) -> None:
        """
        A C{--model-alias} rule is applied before the file's rules; a bad
        one is a L{ConfigError}.
        """
        config = _build({"model_aliases": [{"pattern": "^a$", "replacement": "file"}]},
                        model_aliases=("^a$=cli",))
        self.assertEqual(config.model_aliases[0].replacement, "cli")
        self.assertConfigError({}, "--model-alias", model_aliases=("gpt-(4=x",))


class AliasTests(ConfigTestCase):
    def test_invalid_regex(self) -> None:
        self.assertConfigError(
            {"model_aliases": [{"pattern": "^ok$", "replacement": "a"},
                               {"pattern": "gpt-[4", "replacement": "b"}]},
            SOURCE, "model_aliases[1]", "gpt-[4")

    def test_needs_both(self) -> None:
        self.assertConfigError({"model_aliases": [{"pattern": "^a$"}]},
                               SOURCE, "model_aliases[0]", "replacement")

    def test_order_kept(self) -> None:
        config = _build({"model_aliases": [{"pattern": "^a", "replacement": "x"},
                                           {"pattern": "^b", "replacement": "y"}]})
        self.assertEqual([r.replacement for r in config.model_aliases], ["x", "y"])


class DefaultsTests(ConfigTestCase):
    """
    Backends and the default backend when little or nothing is configured.
    """

    def test_unknown_default_backend(self) -> None:
        self.assertConfigError({"backends": {"openai": {}}, "default_backend": "nope"},
                               SOURCE, "default_backend", "'nope'", "openai")
        self.assertConfigError({"backends": {"openai": {}}}, "'zz'", default_backend="zz:m")

    def test_default_backend_selector_forms(self) -> None:
        data = {"backends": {"a": {}, "b": {}}}
        self.assertEqual(_build(data, default_backend="b:m").default_backend, "b:m")
        self.assertEqual(_build(data, default_backend="b|a").default_backend, "b|a")
        self.assertEqual(_build({"backends": {"default_backend": "b", "a": {}, "b": {}}})
                         .default_backend, "b")
        self.assertEqual(_build(data).default_backend, "a")

    def test_no_config_no_key(self) -> None:
        """
        With nothing configured and no key, the demo: openai and mock,
        mock by default.
        """
        config = _load(Overrides(), {})
        self.assertEqual(set(config.backends), {"openai", "mock"})
        self.assertEqual(config.default_backend, "mock")
        self.assertEqual(config.backends["mock"].type, "mock")
        self.assertEqual(config.backends["openai"].keys, ())
        self.assertEqual(config.listen, DEFAULT_LISTEN)
        self.assertFalse(config.auth_enabled)

    def test_no_config_with_key(self) -> None:
        config = _load(Overrides(), {"OPENAI_API_KEY": SECRET})
        self.assertEqual(config.default_backend, "openai")
        self.assertEqual([k.value for k in config.backends["openai"].keys], [SECRET])
        self.assertIn("mock", config.backends)
        config = _load(Overrides(), {"OPENAI_API_KEY_2": SECRET})
        self.assertEqual(config.default_backend, "openai")

    def test_empty_sections(self) -> None:
        """
        An empty backend section is a backend with every default; a backend
        named after a type has that type.
        """
        config = _build({"backends": {"up": None, "mock": {}}})
        self.assertEqual(list(config.backends), ["up", "mock"])
        self.assertEqual((config.backends["up"].type, config.backends["up"].base_url),
                         ("openai", DEFAULT_OPENAI_URL))
        self.assertEqual((config.backends["mock"].type, config.backends["mock"].base_url),
                         ("mock", ""))
        self.assertEqual(config.default_backend, "up")

    def test_model_defaults(self) -> None:
        """
        C{model_defaults} are kept per model, read-only.
        """
        config = _build({"model_defaults": {"gpt-4o": {"temperature": 0.2}}})
        self.assertEqual(dict(config.model_defaults["gpt-4o"]), {"temperature": 0.2})
        with self.assertRaises(TypeError):
            config.model_defaults["gpt-4o"]["temperature"] = 1  # type: ignore[index]
        self.assertEqual(dict(_build({}).model_defaults), {})

    def test_frozen(self) -> None:
        config = _build({})
        with self.assertRaises(AttributeError):
            config.listen = "x"  # type: ignore[misc]
        with self.assertRaises(TypeError):
            config.backends["x"] = config.backends["openai"]  # type: ignore[index]


class FileTests(ConfigTestCase):
    """
    L{load_config} and L{load_yaml} with real files.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_load_file(self) -> None:
        path = self.write("backends:\n  up:\n    base_url: ${U}\ndefault_backend: up\n")
        config = _load(Overrides(config_file=path), {"U": "http://u/v1"})
        self.assertEqual(config.backends["up"].base_url, "http://u/v1")

    def test_config_file_env(self) -> None:
        path = self.write("log_level: warn\n")
        self.assertEqual(_load(Overrides(), {"CONFIG_FILE": path}).log_level, "warn")
        other = self.write("log_level: error\n")
        config = _load(Overrides(config_file=other), {"CONFIG_FILE": path})
        self.assertEqual(config.log_level, "error")

    def test_errors_name_file(self) -> None:
        path = self.write("backends:\n  openai:\n    tpye: openai\n")
        with self.assertRaises(ConfigError) as caught:
            _load(Overrides(config_file=path), {})
        self.assertIn(path, str(caught.exception))
        self.assertIn("backends.openai.tpye", str(caught.exception))

    def test_bad_files(self) -> None:
        missing = self.mktemp()
        for path, problem in ((missing, "cannot read"), (self.write("a: [\n"), "invalid YAML"),
                              (self.write("- a\n- b\n"), "mapping")):
            with self.assertRaises(ConfigError) as caught:
                load_yaml(path)
            self.assertIn(path, str(caught.exception))
            self.assertIn(problem, str(caught.exception))
        self.assertEqual(load_yaml(self.write("")), {})
        self.assertFalse(os.path.exists(missing))


class ExposureTests(ConfigTestCase):
    """
    L{check_exposure} and L{is_loopback_endpoint}.
    """

    def test_loopback_endpoints(self) -> None:
        for description in ("tcp:8000:interface=127.0.0.1", "tcp:port=0:interface=127.9.9.9",
                            "tcp:8000:interface=localhost", "tcp6:8000:interface=\\:\\:1",
                            "tcp6:8000:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1",
                            "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1",
                            "unix:/run/llmproxy.sock", "unix:address=/tmp/x:mode=660"):
            self.assertTrue(is_loopback_endpoint(description), description)

    def test_exposed_endpoints(self) -> None:
        for description in ("tcp:8000", "tcp:8000:interface=0.0.0.0", "tcp6:8000",
                            "tcp6:8000:interface=\\:\\:", "tcp6:8000:interface=\\:\\:10",
                            "tcp6:8000:interface=\\:\\:1\\:2", "ssl:8443:privateKey=k.pem",
                            "tcp:8000:interface=10.0.0.1", "tcp:8000:interface=localhost.evil",
                            "systemd:domain=INET:index=0", "tcp:8000:interface=127.0.0.1"
                            ":interface=0.0.0.0"):
            self.assertFalse(is_loopback_endpoint(description), description)

    def test_refuses_exposed_without_keys(self) -> None:
        message = self.assertConfigError({"listen": "tcp:8000:interface=0.0.0.0"},
                                         "0.0.0.0", "--disable-auth")
        self.assertIn("proxy keys", message)
        self.assertConfigError({"host": "0.0.0.0"}, "refusing")
        self.assertConfigError({}, "refusing", environ={"APP_HOST": "0.0.0.0"})

    def test_allowed(self) -> None:
        exposed = {"listen": "tcp:8000:interface=0.0.0.0"}
        self.assertTrue(_build(exposed, disable_auth=True).disable_auth)
        self.assertTrue(_build({**exposed, "disable_auth": True}).disable_auth)
        self.assertEqual(_build(exposed, proxy_keys=("k",)).listen, exposed["listen"])
        self.assertEqual(_build(exposed, {"LLMPROXY_KEYS": "k"}).proxy_keys, ("k",))
        self.assertEqual(_build({"listen": "unix:/tmp/s"}).listen, "unix:/tmp/s")
        check_exposure(Config())
        self.assertRaises(ConfigError, check_exposure, Config(listen="tcp:1"))


class EnvironmentAliasTests(SynchronousTestCase):
    def test_model_aliases_env_between_cli_and_file(self) -> None:
        config = build_config(
            {"model_aliases": [{"pattern": "^a$", "replacement": "file"}]},
            Overrides(model_aliases=("^a$=cli",)),
            environ={"MODEL_ALIASES": '[{"pattern": "^a$", "replacement": "env"}]'},
            kinds=REGISTRY.kinds,
        )
        self.assertEqual([r.replacement for r in config.model_aliases], ["cli", "env", "file"])

    def test_model_aliases_env_malformed(self) -> None:
        for text in ("not json", '{"pattern": "a"}', '[{"pattern": "(", "replacement": "x"}]',
                     '[{"pattern": "a", "replacement": "x", "extra": 1}]'):
            with self.assertRaises(ConfigError) as caught:
                build_config({}, environ={"MODEL_ALIASES": text}, kinds=REGISTRY.kinds)
            self.assertIn("MODEL_ALIASES", str(caught.exception))


class SelfLoopTests(SynchronousTestCase):
    def test_sdk_base_url_pointing_at_llmproxy_is_ignored(self) -> None:
        config = build_config({}, Overrides(port=8123), environ={
            "OPENAI_BASE_URL": "http://localhost:8123/v1", "OPENAI_API_KEY": "sk-x"},
            kinds=REGISTRY.kinds)
        self.assertEqual(config.backends["openai"].base_url, DEFAULT_OPENAI_URL)
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("8123", config.warnings[0])

    def test_other_ports_and_hosts_are_kept(self) -> None:
        for url in ("http://localhost:9999/v1", "http://10.1.2.3:8123/v1"):
            config = build_config({}, Overrides(port=8123),
                                  environ={"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-x"},
                                  kinds=REGISTRY.kinds)
            self.assertEqual(config.backends["openai"].base_url, url.rstrip("/"))
            self.assertEqual(config.warnings, ())

    def test_configured_self_url_is_an_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            build_config({"listen": "tcp:8124:interface=127.0.0.1",
                          "backends": {"loop": {"base_url": "http://127.0.0.1:8124/v1"}}},
                         environ={}, source="c.yaml", kinds=REGISTRY.kinds)
        self.assertIn("backends.loop.base_url", str(caught.exception))
        self.assertIn("c.yaml", str(caught.exception))

    def test_mock_url_is_never_used(self) -> None:
        """
        The mock talks to no URL, so its C{base_url} cannot loop.
        """
        config = build_config({"listen": "tcp:8124:interface=127.0.0.1",
                               "backends": {"m": {"type": "mock",
                                                  "base_url": "http://127.0.0.1:8124/v1"}}},
                              environ={}, kinds=REGISTRY.kinds)
        self.assertEqual((config.backends["m"].base_url, config.warnings),
                         ("http://127.0.0.1:8124/v1", ()))
