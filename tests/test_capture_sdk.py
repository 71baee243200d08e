"""
Wire capture over real connections, with the official OpenAI SDK as the
client: a paced stream captured on both sides, the SDK's key absent.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import TestCase

from llmproxy.testing import Stream, chat_chunks, openai_config
from tests.harness import in_thread, sdk, start

CLIENT_KEY = "sdk-client-key-0123456789"


class CaptureSDKTests(TestCase):
    async def test_stream(self) -> None:
        path = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = await start(self, lambda upstream: openai_config(
            upstream, keys=("sk-upstream-abcdef987654",), capture={"file": path}))
        capture = proxy.service.capture
        assert capture is not None
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["Hel", "lo", "!"]), delay=0.01))

        def call() -> str:
            with sdk(proxy.url, CLIENT_KEY) as client:
                stream = client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
                return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        self.assertEqual(await in_thread(call), "Hello!")
        await in_thread(capture.writer.drain)
        with open(path, "rb") as f:
            raw = f.read()
        self.assertNotIn(CLIENT_KEY.encode(), raw)
        self.assertNotIn(b"sk-upstream-abcdef987654", raw)
        entries: list[dict[str, Any]] = [json.loads(line) for line in raw.splitlines()][1:]
        upstream_chunks = [e for e in entries if e["direction"] == "stream_chunk"
                           and e["destination"] == "proxy"]
        self.assertGreaterEqual(len(upstream_chunks), 3)
        self.assertEqual(entries[0]["direction"], "inbound_request")
        self.assertEqual(entries[-1]["direction"], "stream_end")
        self.assertEqual(len({e["request_id"] for e in entries}), 1)
        capture.writer.stopService()
