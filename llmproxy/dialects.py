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

__all__ = ["CHAT", "RESPONSES"]
