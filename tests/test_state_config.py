"""
The C{state:} setting (L{llmproxy.config.state}): which store, its
defaults with C{--workers}, and errors naming key and file.
"""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.config import ConfigError
from llmproxy.config.state import DEFAULT_SQLITE, StateConfig, parse_state_url
from llmproxy.startup import StartupError
from llmproxy.tap import Options
from llmproxy.testing import make_config


class StateConfigTests(SynchronousTestCase):
    def test_memory_by_default(self) -> None:
        self.assertEqual(make_config({}).state, StateConfig())

    def test_sqlite_in_the_working_directory_with_workers(self) -> None:
        for config in (make_config({"workers": 2}), make_config({}, workers=3)):
            self.assertEqual((config.state.kind, config.state.path), ("sqlite", DEFAULT_SQLITE))

    def test_an_explicit_store_wins_over_the_workers_default(self) -> None:
        config = make_config({"state": "memory"}, workers=2)
        self.assertEqual(config.state.kind, "memory")

    def test_sqlite_paths(self) -> None:
        self.assertEqual(parse_state_url("sqlite:///var/lib/s.db", {}).path, "/var/lib/s.db")
        self.assertEqual(parse_state_url("sqlite://s.db", {}).path, "s.db")

    def test_redis(self) -> None:
        config = parse_state_url("rediss://:s3cret@cache.example:6380/2", {})
        self.assertEqual(
            (config.kind, config.host, config.port, config.db, config.password, config.tls),
            ("redis", "cache.example", 6380, 2, "s3cret", True))
        self.assertNotIn("s3cret", config.url + repr(config))

    def test_redis_password_from_the_environment(self) -> None:
        config = make_config({"state": "redis://cache"}, {"REDIS_PASSWORD": "pw"})
        self.assertEqual((config.state.password, config.state.port, config.state.db,
                          config.state.tls), ("pw", 6379, 0, False))

    def test_a_mapping_with_tuning(self) -> None:
        config = make_config({"state": {"url": "sqlite://x.db", "timeout": 0.5, "poll": 0.1}})
        self.assertEqual((config.state.path, config.state.timeout, config.state.poll),
                         ("x.db", 0.5, 0.1))

    def test_errors_name_key_and_file(self) -> None:
        cases = {
            "postgres://x": "test.yaml: state: expected memory",
            "sqlite://": "test.yaml: state: sqlite:// needs a file",
            "redis://h/x": "test.yaml: state: 'redis://h/x': the database must be a number",
        }
        for url, problem in cases.items():
            with self.assertRaises(ConfigError) as e:
                make_config({"state": url})
            self.assertIn(problem, str(e.exception))
        with self.assertRaises(ConfigError) as e:
            make_config({"state": {"url": "memory", "poll": 1}})
        self.assertIn("test.yaml: state.poll: must be at most 0.25", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            make_config({"state": {"url": "memory", "pol": 0.1}})
        self.assertIn("state.pol: unknown key", str(e.exception))

    @given(st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                 blacklist_characters="@/:?#[]%"), min_size=1))
    def test_a_password_is_never_shown(self, password: str) -> None:
        config = parse_state_url(f"redis://user:{password}@host:1/0", {})
        self.assertEqual(config.password, password)
        self.assertEqual(config.url, "redis://user:***@host:1/0")


class StartupTests(SynchronousTestCase):
    def test_a_missing_folder_stops_the_start(self) -> None:
        self.patch(os, "environ", {})
        options = Options()
        with self.assertRaises(StartupError) as e:
            options.parseOptions(["--workers", "1", "--default-backend", "mock"] +
                                 ["--config", self.config("sqlite:///no/such/folder/s.db")])
        self.assertEqual(str(e.exception),
                         "state: sqlite:///no/such/folder/s.db: no folder /no/such/folder")

    def test_workers_start_with_the_default_file(self) -> None:
        self.patch(os, "environ", {})
        options = Options()
        options.parseOptions(["--workers", "2", "--default-backend", "mock"])
        self.assertEqual(options.config.state.path, DEFAULT_SQLITE)

    def config(self, url: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"state: {url}\n")
        return path
