"""
C{state: redis://...}: the URL (password, user, TLS, database) and the
store it builds; nothing here connects.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.config import ConfigError
from llmproxy.state.redis import RedisState
from llmproxy.state.redis_link import RedisAddress, parse_redis_url
from llmproxy.state.stores import open_store
from llmproxy.testing import make_config


class UrlTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(parse_redis_url("redis://cache:6380/2", {}),
                         RedisAddress("cache", 6380, 2))

    def test_defaults(self) -> None:
        self.assertEqual(parse_redis_url("redis://cache", {}), RedisAddress("cache", 6379, 0))

    def test_tls(self) -> None:
        address = parse_redis_url("rediss://cache.example:6380/0", {})
        self.assertTrue(address.tls)
        self.assertEqual(address.display, "rediss://cache.example:6380/0")

    def test_ca_file(self) -> None:
        address = parse_redis_url("rediss://cache/0?ssl_ca_certs=/etc/ca.pem", {})
        self.assertEqual((address.tls, address.ca), (True, "/etc/ca.pem"))

    def test_password_in_url(self) -> None:
        address = parse_redis_url("redis://:p%40ss@cache:6379/1", {"REDIS_PASSWORD": "env"})
        self.assertEqual((address.password, address.username), ("p@ss", None))

    def test_user_and_password(self) -> None:
        address = parse_redis_url("redis://proxy:pw@cache/0", {})
        self.assertEqual((address.username, address.password), ("proxy", "pw"))

    def test_password_from_environment(self) -> None:
        address = parse_redis_url("redis://cache:6379/0", {"REDIS_PASSWORD": "s3cret"})
        self.assertEqual(address.password, "s3cret")

    def test_password_never_shown(self) -> None:
        address = parse_redis_url("redis://:s3cret@cache:6379/0", {})
        self.assertNotIn("s3cret", repr(address))
        self.assertNotIn("s3cret", address.display)

    def test_ipv6_display(self) -> None:
        self.assertEqual(parse_redis_url("redis://[::1]:7000/3", {}).display,
                         "redis://[::1]:7000/3")

    def test_refused(self) -> None:
        for url in ("http://cache", "redis://", "redis://cache:99999/0", "redis://cache/x",
                    "redis://cache/0?x=1", "redis://cache:port/0", "redis://cache/0#x",
                    "redis://cache/0?ssl_ca_certs=/ca.pem"):
            with self.assertRaises(ValueError, msg=url):
                parse_redis_url(url, {})

    def test_refusal_never_echoes_the_password(self) -> None:
        with self.assertRaises(ValueError) as caught:
            parse_redis_url("redis://:s3cret@cache/zero", {})
        self.assertNotIn("s3cret", str(caught.exception))

    @given(host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
           port=st.integers(1, 65535), db=st.integers(0, 15), tls=st.booleans())
    def test_display_round_trip(self, host: str, port: int, db: int, tls: bool) -> None:
        address = RedisAddress(host, port, db, tls)
        self.assertEqual(parse_redis_url(address.display, {}), address)


class BuildTests(SynchronousTestCase):
    """
    C{state: redis://...} builds a L{RedisState} (not started: nothing
    connects until the proxy starts).
    """

    def build(self, url: str, env: dict[str, str] | None = None) -> RedisState:
        config = make_config({"state": url}, environ=env or {})
        store = open_store(config.state, reactor, Clock())
        assert isinstance(store, RedisState)
        return store

    def test_everything_the_url_says(self) -> None:
        store = self.build("rediss://proxy:p%40ss@cache.example:6380/2?ssl_ca_certs=/etc/ca.pem")
        self.assertEqual(store.address, RedisAddress(
            "cache.example", 6380, 2, True, "proxy", "p@ss", "/etc/ca.pem"))
        self.assertEqual(store.status().where, "rediss://cache.example:6380/2")

    def test_password_from_the_environment(self) -> None:
        store = self.build("redis://cache:6379/0", {"REDIS_PASSWORD": "s3cret"})
        self.assertEqual(store.address.password, "s3cret")
        self.assertNotIn("s3cret", repr(store.address) + repr(store.status()))

    def test_more_than_it_understands(self) -> None:
        """
        Refused when the configuration is read (naming key and file), as
        every other setting is.
        """
        for url in ("redis://:s3cret@cache:6379/0?pool=9", "redis://:s3cret@cache/0#x",
                    "redis://:s3cret@cache/0?ssl_ca_certs=/ca.pem"):
            with self.assertRaises(ConfigError, msg=url) as caught:
                make_config({"state": url})
            self.assertIn("state", str(caught.exception))
            self.assertIn("test.yaml", str(caught.exception))
            self.assertNotIn("s3cret", str(caught.exception))
