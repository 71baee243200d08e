"""
The two OpenAI APIs llmproxy speaks, on either side of a request: a
frontend serves one, a backend's upstream speaks one.
"""

from __future__ import annotations

from typing import Final

#: Chat Completions (C{POST /v1/chat/completions}).
CHAT: Final = "chat"
#: The Responses API (C{POST /v1/responses}).
RESPONSES: Final = "responses"

#: The Responses API as ChatGPT's Codex backend takes it (its own wire
#: rules, L{llmproxy.adapt.codex}): the name of the backend type that
#: speaks it, shared by that step and the backend.
CODEX: Final = "openai-codex"

__all__ = ["CHAT", "CODEX", "RESPONSES"]
