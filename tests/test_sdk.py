"""
The unmodified OpenAI SDK against llmproxy (run in a thread so the reactor
keeps serving), for Chat Completions.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import TestCase

from llmproxy.testing import (
    Reply, Stream, chat_chunks, chat_completion, chat_tool_chunks, chat_tool_completion,
)
from tests.harness import base_config, in_thread, sdk, start

MESSAGES = [{"role": "user", "content": "hello sdk"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


class ChatSDKTests(TestCase):
    async def test_non_stream(self) -> None:
        proxy = await start(self, lambda u: base_config(u, proxy_keys=["pk"]))

        def call() -> Any:
            with sdk(proxy.url, "pk") as client:
                return client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=MESSAGES, temperature=0.3,
                    extra_body={"my_extension": True})

        raw = await in_thread(call)
        completion = raw.parse()
        self.assertEqual(completion.choices[0].message.content, "fake: hello sdk")
        self.assertEqual(raw.headers["x-llmproxy-route"], "openai:gpt-4o")
        [seen] = proxy.fake.requests
        self.assertEqual(seen.body["temperature"], 0.3)
        self.assertIs(seen.body["my_extension"], True)

    async def test_stream(self) -> None:
        proxy = await start(self)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["Hel", "lo", "!"], usage=True),
                                        delay=0.01))

        def call() -> tuple[str, Any]:
            with sdk(proxy.url) as client:
                stream = client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True,
                    stream_options={"include_usage": True})
                text, usage = "", None
                for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                    if chunk.usage:
                        usage = chunk.usage
                return text, usage

        text, usage = await in_thread(call)
        self.assertEqual(text, "Hello!")
        self.assertEqual(usage.completion_tokens, 3)
        self.assertEqual(proxy.fake.requests[0].body["stream_options"], {"include_usage": True})

    async def test_tools_non_stream_and_stream(self) -> None:
        proxy = await start(self)
        proxy.fake.script.append(
            Reply(200, chat_tool_completion("gpt-4o", "get_weather", '{"city": "Paris"}')))
        proxy.fake.script.append(
            Stream(chat_tool_chunks("gpt-4o", "get_weather", ['{"city": ', '"Paris"}'])))

        def call() -> tuple[Any, Any]:
            with sdk(proxy.url) as client:
                whole = client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, tools=TOOLS,
                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
                with client.chat.completions.stream(
                        model="gpt-4o", messages=MESSAGES, tools=TOOLS) as stream:
                    final = stream.get_final_completion()
                return whole, final

        whole, final = await in_thread(call)
        for completion in (whole, final):
            call_ = completion.choices[0].message.tool_calls[0]
            self.assertEqual((call_.function.name, json.loads(call_.function.arguments)),
                             ("get_weather", {"city": "Paris"}))
        self.assertEqual(proxy.fake.requests[0].body["tools"], TOOLS)
        self.assertEqual(proxy.fake.requests[0].body["tool_choice"],
                         {"type": "function", "function": {"name": "get_weather"}})

    async def test_json_mode(self) -> None:
        proxy = await start(self)
        proxy.fake.script.append(Reply(200, chat_completion("gpt-4o", '{"answer": 42}')))

        def call() -> Any:
            with sdk(proxy.url) as client:
                return client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, response_format={"type": "json_object"})

        completion = await in_thread(call)
        self.assertEqual(json.loads(completion.choices[0].message.content), {"answer": 42})
        self.assertEqual(proxy.fake.requests[0].body["response_format"], {"type": "json_object"})

    async def test_errors_reach_sdk_typed(self) -> None:
        import openai

        proxy = await start(self, lambda u: base_config(u, proxy_keys=["pk"]))

        def call() -> list[type]:
            seen = []
            with sdk(proxy.url, "wrong") as client:
                for kwargs in ({"model": "gpt-4o"}, {"model": "nope:gpt-4o"}):
                    try:
                        client.chat.completions.create(messages=MESSAGES, **kwargs)
                    except openai.APIStatusError as e:
                        seen.append(type(e))
            with sdk(proxy.url, "pk") as client:
                try:
                    client.chat.completions.create(messages=MESSAGES, model="nope:gpt-4o")
                except openai.APIStatusError as e:
                    seen.append(type(e))
            return seen

        seen = await in_thread(call)
        self.assertEqual(seen, [openai.AuthenticationError, openai.AuthenticationError,
                                openai.BadRequestError])

    async def test_stream_error_after_start_raises_in_sdk(self) -> None:
        import openai

        proxy = await start(self)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["a", "b"])[:2], delay=0.05,
                                        end="drop"))

        def call() -> tuple[str, Any]:
            text = ""
            with sdk(proxy.url) as client:
                try:
                    for chunk in client.chat.completions.create(
                            model="gpt-4o", messages=MESSAGES, stream=True):
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                except openai.APIError as e:
                    return text, e
            return text, None

        text, error = await in_thread(call)
        self.assertEqual(text, "a")
        self.assertIsNotNone(error)
