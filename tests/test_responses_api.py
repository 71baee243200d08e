"""
Every frontend × backend pair through the unmodified OpenAI SDK:
chat→openai (test_sdk), chat→openai-responses, responses→openai-responses
and responses→openai, streaming and not, with text, tools and structured
output; and C{previous_response_id} handling, in memory.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunks, chat_completion, chat_tool_chunks,
    chat_tool_completion, config_data, function_call_events, function_call_response,
)
from tests.harness import MemoryProxy, in_thread, post, sdk, start

FLAT_TOOL = {"type": "function", "name": "get_weather", "description": "Weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"], "additionalProperties": False},
             "strict": True}
CHAT_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather",
    "parameters": FLAT_TOOL["parameters"]}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}},
          "required": ["answer"], "additionalProperties": False}


def both(upstream: str) -> dict[str, Any]:
    return config_data({"chat": backend_data(upstream, "sk-chat"),
                        "resp": backend_data(upstream, "sk-resp", type="openai-responses")})


WEATHER = ("get_weather", '{"city":"Paris"}', "call_9")


class ResponsesFrontendTests(TestCase):
    async def test_plain_to_responses_backend_and_chat_backend(self) -> None:
        proxy = await start(self, both)

        def call() -> tuple[Any, Any]:
            with sdk(proxy.url) as client:
                a = client.responses.create(model="resp:gpt-4o", input="hello there",
                                            instructions="Be kind.", metadata={"k": "v"})
                b = client.responses.create(model="chat:gpt-4o", input="hello there",
                                            instructions="Be kind.", max_output_tokens=50)
                return a, b

        a, b = await in_thread(call)
        self.assertEqual(a.output_text, "fake: hello there")
        self.assertEqual(b.output_text, "fake: hello there")
        to_resp, to_chat = proxy.fake.requests
        self.assertEqual(to_resp.path, "/v1/responses")
        self.assertEqual((to_resp.body["input"], to_resp.body["metadata"]),
                         ("hello there", {"k": "v"}))
        self.assertEqual(to_chat.path, "/v1/chat/completions")
        self.assertEqual(to_chat.body["messages"], [
            {"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello there"}])
        self.assertEqual(to_chat.body["max_completion_tokens"], 50)
        self.assertEqual(b.usage.input_tokens, 3)

    async def test_stream_both_backends(self) -> None:
        proxy = await start(self, both)

        def call() -> list[tuple[str, str, list[str]]]:
            out = []
            with sdk(proxy.url) as client:
                for model in ("resp:gpt-4o", "chat:gpt-4o"):
                    deltas = []
                    with client.responses.stream(model=model, input="stream me") as stream:
                        for event in stream:
                            if event.type == "response.output_text.delta":
                                deltas.append(event.delta)
                        final = stream.get_final_response()
                    out.append((final.output_text, final.status, deltas))
            return out

        for text, status, deltas in await in_thread(call):
            self.assertEqual(text.strip(), "fake: stream me")
            self.assertEqual(status, "completed")
            self.assertEqual("".join(deltas), text)
            self.assertGreater(len(deltas), 1)

    async def test_tools_both_backends(self) -> None:
        proxy = await start(self, both)
        name, arguments, call_id = WEATHER
        proxy.fake.by_model["gpt-4o"] = [
            Reply(200, function_call_response("gpt-4o", name, arguments, call_id)),
            Reply(200, chat_tool_completion("gpt-4o", name, arguments, call_id)),
            Stream(function_call_events("gpt-4o", name, ['{"city":', '"Paris"}'], call_id)),
            Stream(chat_tool_chunks("gpt-4o", name, [arguments], call_id)),
        ]

        def call() -> list[Any]:
            out = []
            with sdk(proxy.url) as client:
                for model in ("resp:gpt-4o", "chat:gpt-4o"):
                    out.append(client.responses.create(model=model, input="weather?",
                                                       tools=[FLAT_TOOL], tool_choice="required"))
                for model in ("resp:gpt-4o", "chat:gpt-4o"):
                    with client.responses.stream(model=model, input="weather?",
                                                 tools=[FLAT_TOOL]) as stream:
                        out.append(stream.get_final_response())
            return out

        for response in await in_thread(call):
            [item] = [o for o in response.output if o.type == "function_call"]
            self.assertEqual((item.name, json.loads(item.arguments), item.call_id),
                             ("get_weather", {"city": "Paris"}, "call_9"))
        chat_request = proxy.fake.requests[1].body
        self.assertEqual(chat_request["tools"][0]["function"]["name"], "get_weather")
        self.assertEqual(chat_request["tool_choice"], "required")
        self.assertEqual(proxy.fake.requests[0].body["tools"], [FLAT_TOOL])

    async def test_structured_output_to_chat_backend(self) -> None:
        proxy = await start(self, both)
        proxy.fake.script.append(Reply(200, chat_completion("gpt-4o", '{"answer": 42}')))

        def call() -> Any:
            with sdk(proxy.url) as client:
                return client.responses.create(
                    model="chat:gpt-4o", input="the answer?",
                    text={"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA,
                                     "strict": True}})

        response = await in_thread(call)
        self.assertEqual(json.loads(response.output_text), {"answer": 42})
        fmt = proxy.fake.requests[0].body["response_format"]
        self.assertEqual((fmt["type"], fmt["json_schema"]["name"], fmt["json_schema"]["schema"]),
                         ("json_schema", "answer", SCHEMA))

    async def test_function_call_output_round_trip_to_chat(self) -> None:
        proxy = await start(self, both)

        def call() -> Any:
            with sdk(proxy.url) as client:
                return client.responses.create(model="chat:gpt-4o", input=[
                    {"role": "user", "content": "weather?"},
                    {"type": "function_call", "call_id": "call_9", "name": "get_weather",
                     "arguments": '{"city":"Paris"}'},
                    {"type": "function_call_output", "call_id": "call_9", "output": "sunny"},
                ], tools=[FLAT_TOOL])

        await in_thread(call)
        messages = proxy.fake.requests[0].body["messages"]
        self.assertEqual([m["role"] for m in messages], ["user", "assistant", "tool"])
        self.assertEqual(messages[1]["tool_calls"][0]["id"], "call_9")
        self.assertEqual((messages[2]["tool_call_id"], messages[2]["content"]), ("call_9", "sunny"))

    async def test_previous_response_id_on_a_chat_backend(self) -> None:
        proxy = await start(self, both)

        def call() -> Any:
            with sdk(proxy.url) as client:
                first = client.responses.create(model="chat:gpt-4o", input="my name is Ada",
                                                store=False)
                return client.responses.create(model="chat:gpt-4o", input="what is my name?",
                                               previous_response_id=first.id)

        await in_thread(call)
        messages = proxy.fake.requests[1].body["messages"]
        self.assertEqual([m["role"] for m in messages], ["user", "assistant", "user"])
        self.assertEqual(messages[0]["content"], "my name is Ada")
        self.assertEqual(messages[1]["content"], "fake: my name is Ada")
        self.assertNotIn("previous_response_id", proxy.fake.requests[1].body)

    async def test_stream_failure_is_response_failed(self) -> None:
        proxy = await start(self, both)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["a", "b"])[:2], delay=0.05,
                                        end="drop"))
        status, _, content = await post(self, proxy.url + "/v1/responses", {
            "model": "chat:gpt-4o", "input": "x", "stream": True})
        self.assertEqual(status, 200)
        self.assertIn(b"event: response.failed", content)
        self.assertNotIn(b"response.completed", content)


class PreviousResponseIdTests(SynchronousTestCase):
    def test_unknown_previous_response_id(self) -> None:
        proxy = MemoryProxy(both)
        status, _, content = proxy.post("/v1/responses", {
            "model": "chat:gpt-4o", "input": "x", "previous_response_id": "resp_nope"})
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(content)["error"]["code"], "previous_response_not_found")
        self.assertEqual(proxy.fake.requests, [])

    def test_previous_response_id_passes_to_responses_backend(self) -> None:
        proxy = MemoryProxy(both)
        status, _, _ = proxy.post("/v1/responses", {
            "model": "resp:gpt-4o", "input": "x", "previous_response_id": "resp_upstream"})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["previous_response_id"], "resp_upstream")


class ChatFrontendToResponsesBackendTests(TestCase):
    async def test_plain_stream_and_tools(self) -> None:
        proxy = await start(self, both)
        name, arguments, call_id = WEATHER
        proxy.fake.by_model["tooly"] = [
            Reply(200, function_call_response("tooly", name, arguments, call_id)),
            Stream(function_call_events("tooly", name, ['{"city":', '"Paris"}'], call_id)),
        ]

        def call() -> tuple[Any, str, Any, Any]:
            with sdk(proxy.url) as client:
                plain = client.chat.completions.create(
                    model="resp:gpt-4o", messages=[{"role": "system", "content": "S"},
                                                   {"role": "user", "content": "hi"}],
                    max_tokens=20)
                text = ""
                for chunk in client.chat.completions.create(
                        model="resp:gpt-4o", messages=[{"role": "user", "content": "hi"}],
                        stream=True):
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                tools = client.chat.completions.create(
                    model="resp:tooly", messages=[{"role": "user", "content": "w?"}],
                    tools=[CHAT_TOOL])
                with client.chat.completions.stream(
                        model="resp:tooly", messages=[{"role": "user", "content": "w?"}],
                        tools=[CHAT_TOOL]) as stream:
                    streamed = stream.get_final_completion()
                return plain, text, tools, streamed

        plain, text, tools, streamed = await in_thread(call)
        self.assertEqual(plain.choices[0].message.content, "fake: hi")
        self.assertEqual(plain.usage.prompt_tokens, 3)
        self.assertEqual(text.strip(), "fake: hi")
        for completion in (tools, streamed):
            call_ = completion.choices[0].message.tool_calls[0]
            self.assertEqual((call_.id, call_.function.name), ("call_9", "get_weather"))
            self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
        first = proxy.fake.requests[0]
        self.assertEqual(first.path, "/v1/responses")
        self.assertEqual(first.body["instructions"], "S")
        self.assertEqual(first.body["max_output_tokens"], 20)
        self.assertEqual(proxy.fake.requests[2].body["tools"][0]["name"], "get_weather")
