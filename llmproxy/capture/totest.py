# -*- test-case-name: tests.test_capture_replay -*-
"""
C{to-test}: one captured request as a trial regression test, a fixture
(that request's entries) and a test module replaying it in memory
(L{llmproxy.testing.replay_captured}) and asserting that the client gets
what the capture shows.
"""

from __future__ import annotations

import json
import os
import re
from typing import TextIO

from llmproxy.capture.timeline import read_requests

TEMPLATE = '''"""
Regression test from llmproxy wire capture {source!r}, request {request_id}
(written by python -m llmproxy.capture to-test): the request is replayed
through llmproxy in memory against the captured upstream answers, and the
client must get what it got then.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from llmproxy.testing import replay_captured

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), {fixture!r})


class Captured{name}Tests(SynchronousTestCase):
    def test_client_result(self) -> None:
        expected, got = replay_captured(FIXTURE, {request_id!r})
        self.assertEqual(got, expected)
'''


def write_test(path: str, request_id: str, folder: str, out: TextIO) -> int:
    """
    Write C{capture_ID.jsonl} and C{test_capture_ID.py} into C{folder}.
    """
    requests = read_requests(path)
    captured = requests.get(request_id)
    if captured is None:
        out.write(f"{path}: no request {request_id}\n")
        return 1
    name = re.sub(r"\W", "_", request_id)
    fixture = f"capture_{name}.jsonl"
    os.makedirs(folder, exist_ok=True)
    with open(path, "rb") as f:
        header = f.readline()
    with open(os.path.join(folder, fixture), "wb") as f:
        f.write(header)
        for entry in captured.entries:
            f.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    test = os.path.join(folder, f"test_capture_{name}.py")
    with open(test, "w", encoding="utf-8") as f:
        f.write(TEMPLATE.format(source=os.path.basename(path), request_id=request_id,
                                fixture=fixture, name=name.title().replace("_", "")))
    out.write(f"wrote {test} and {fixture}\n")
    return 0


__all__ = ["write_test"]
