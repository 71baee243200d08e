"""
The C{capture} section, C{--capture}, C{CAPTURE_FILE} and its alias.
"""

from __future__ import annotations

import os
from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.config import ConfigError
from llmproxy.config.capture import CaptureConfig
from llmproxy.startup import StartupError
from llmproxy.tap import Options, makeService, worker_capture
from llmproxy.testing import make_config


def _data(**capture: Any) -> dict[str, Any]:
    return {"capture": capture} if capture else {}


class CaptureConfigTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        self.assertIsNone(make_config({}).capture)
        self.assertIsNone(make_config(_data(max_bytes=10)).capture)

    def test_yaml(self) -> None:
        config = make_config(_data(file="c.jsonl", backends=["a"], models=["m"],
                                   sessions=["s"], bodies="headers-only", buffer_bytes=4096,
                                   max_bytes=1000, max_files=3, rotate_interval_seconds=60,
                                   total_max_bytes=5000))
        self.assertEqual(config.capture, CaptureConfig(
            "c.jsonl", ("a",), ("m",), ("s",), "headers-only", 4096, 1000, 3, 60.0, 5000))
        assert config.capture is not None
        self.assertTrue(config.capture.rotates)

    def test_defaults(self) -> None:
        capture = make_config(_data(file="c.jsonl")).capture
        assert capture is not None
        self.assertEqual((capture.bodies, capture.buffer_bytes, capture.rotate_interval_seconds,
                          capture.total_max_bytes, capture.rotates),
                         ("full", 16 << 20, 86400.0, 100 << 20, False))

    def test_precedence(self) -> None:
        """
        C{--capture} > C{CAPTURE_FILE} > C{WIRE_CAPTURE_FILE} > YAML.
        """
        data = _data(file="yaml.jsonl")
        env = {"CAPTURE_FILE": "env.jsonl", "WIRE_CAPTURE_FILE": "alias.jsonl"}
        self.assertEqual(make_config(data, env, capture_file="flag.jsonl").capture.file,
                         "flag.jsonl")  # type: ignore[union-attr]
        self.assertEqual(make_config(data, env).capture.file,  # type: ignore[union-attr]
                         "env.jsonl")
        self.assertEqual(make_config(data, {"WIRE_CAPTURE_FILE": "alias.jsonl"})
                         .capture.file, "alias.jsonl")  # type: ignore[union-attr]
        self.assertEqual(make_config({}, {"WIRE_CAPTURE_FILE": "alias.jsonl"})
                         .capture.file, "alias.jsonl")  # type: ignore[union-attr]

    def test_errors(self) -> None:
        with self.assertRaises(ConfigError) as e:
            make_config(_data(file="c", bodies="some"))
        self.assertIn("capture.bodies", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            make_config(_data(file="c", max_byte=3))
        self.assertIn("capture.max_byte: unknown key", str(e.exception))

    def test_flag(self) -> None:
        self.patch(os, "environ", {})
        path = os.path.join(self.mktemp(), "flag.jsonl")
        options = Options()
        options.parseOptions(["--capture", path])
        self.assertEqual(options.config.capture.file, path)  # type: ignore[union-attr]
        self.assertTrue(os.path.exists(path))

    def test_unwritable_file(self) -> None:
        """
        A capture file that cannot be written stops startup in one line.
        """
        self.patch(os, "environ", {})
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a folder")
        options = Options()
        with self.assertRaises(StartupError) as e:
            options.parseOptions(["--capture", os.path.join(blocker, "c.jsonl")])
        self.assertIn("capture: cannot write", str(e.exception))

    def test_workers_write_their_own_file(self) -> None:
        """
        A spawned worker writes C{FILE.worker-N}; the first process, FILE.
        """
        self.patch(os, "environ", {})
        path = os.path.join(self.mktemp(), "c.jsonl")
        options = Options()
        options.parseOptions(["--capture", path, "--workers", "2"])
        self.assertEqual(worker_capture(options.config, None), options.config)
        spawned = worker_capture(options.config, 1).capture
        assert spawned is not None
        self.assertEqual(spawned.file, path + ".worker-1")
        service = makeService(options, reactor=cast(Any, MemoryReactorClock()))
        assert service.capture is not None
        self.assertEqual(service.capture.recorder.config.file, path)
