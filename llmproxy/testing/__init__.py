# -*- test-case-name: tests.test_testing -*-
"""
Test doubles and builders for code that talks to (or is) llmproxy, in the
way treq ships C{treq.testing}: one public surface, tested itself.

 - L{FakeOpenAI}, an in-process fake OpenAI upstream that records what it
   receives and can answer, pace, fail, stall and drop on demand, served on
   a real port by L{listen_fake} or in memory through a L{MemoryAgent};
   L{FaultyOpenAI} also answers raw statuses, headers and bodies (L{Raw})
   and counts connections (module L{upstream});
 - canned bodies and event streams: L{chat_request}, L{chat_completion},
   L{chat_chunk}, L{chat_chunks}, L{chat_tool_completion},
   L{chat_tool_chunks}, L{responses_object}, L{responses_events},
   L{function_call_response}, L{function_call_events}; reading an SSE body:
   L{sse_events}, L{sse_data}, L{sse_json}; configurations:
   L{backend_data}, L{config_data}, L{openai_config} (the data a YAML file
   holds) and L{make_config} (the frozen L{Config}) (module L{builders});
 - L{MemoryAgent}, an L{IAgent} served in memory by a given L{Site}
   (module L{memory}).
"""

from llmproxy.testing.builders import (
    CREATED,
    backend_data,
    chat_chunk,
    chat_chunks,
    chat_completion,
    chat_request,
    chat_tool_chunks,
    chat_tool_completion,
    config_data,
    function_call_events,
    function_call_response,
    make_config,
    openai_config,
    responses_events,
    responses_object,
    sse_data,
    sse_events,
    sse_json,
)
from llmproxy.testing.chatgpt import FakeChatGPT, listen_chatgpt
from llmproxy.testing.memory import (
    MemoryAgent,
)
from llmproxy.testing.tokens import FakeTokenEndpoint, TokenCall, listen_tokens
from llmproxy.testing.upstream import (
    Drop,
    FakeOpenAI,
    FaultyOpenAI,
    Raw,
    Recorded,
    Reply,
    Stall,
    Stream,
    listen_fake,
    listen_faulty,
)

__all__ = [
    "CREATED", "Drop", "FakeOpenAI", "FaultyOpenAI", "MemoryAgent", "Raw", "Recorded", "Reply",
    "Stall", "Stream", "listen_faulty",
    "backend_data", "chat_chunk", "chat_chunks", "chat_completion", "chat_request",
    "chat_tool_chunks", "chat_tool_completion", "config_data", "function_call_events",
    "function_call_response", "listen_fake", "make_config", "openai_config",
    "responses_events", "responses_object", "sse_data", "sse_events", "sse_json",
    "FakeTokenEndpoint", "TokenCall", "listen_tokens",
]
__all__ += ["FakeChatGPT", "listen_chatgpt"]
from llmproxy.testing.outage import UNAVAILABLE, Outage  # noqa: E402
__all__ += ["Outage", "UNAVAILABLE"]
from llmproxy.testing.continuation import Speak, SpeakingOpenAI, listen_speaking  # noqa: E402
__all__ += ["Speak", "SpeakingOpenAI", "listen_speaking"]
from llmproxy.testing.replay import replay_captured  # noqa: E402
__all__ += ["replay_captured"]
from llmproxy.testing.reasoning import (  # noqa: E402
    reasoning_delta_chunks, reasoning_summary_events, think_chunks,
)
__all__ += ["reasoning_delta_chunks", "reasoning_summary_events", "think_chunks"]
from llmproxy.testing.redis import RedisServer  # noqa: E402
__all__ += ["RedisServer"]
