# -*- test-case-name: tests.test_conversation -*-
"""
The proxy-only C{x_llmproxy_session} field names a request's conversation
(L{llmproxy.routing.conversation}); it never goes upstream.
"""

from __future__ import annotations

from typing import Any, Mapping

from llmproxy.adapt.pipeline import Context, Shaped, Step


def _keep(body: Mapping[str, Any], context: Context) -> Shaped:
    return Shaped(body)


#: Consumes the field (the pipeline removes what its steps consume).
SESSION_FIELD = Step("session", _keep, consumes=frozenset({"x_llmproxy_session"}))
