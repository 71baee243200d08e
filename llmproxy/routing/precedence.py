# -*- test-case-name: tests.test_routing_precedence -*-
"""
Combining URI parameters, the client's body and configured model defaults.

Highest first: URI parameters, then body fields the client sent, then the
configured C{model_defaults}.  (Connector adaptations, edit precision and
planning overrides sit above all three: they are steps of the adapt
pipeline, L{llmproxy.adapt.pipeline}, run on the body built here.)

The token cap has three spellings (C{max_tokens}, C{max_completion_tokens},
C{max_output_tokens}).  They are treated as one field, so a URI
C{max_tokens} overrides a body C{max_completion_tokens} under the client's
own spelling, and a default cap never adds a second spelling next to the
client's.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["apply_precedence"]

_TOKEN_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _spellings(name: str) -> tuple[str, ...]:
    """
    All body keys that mean the same field as C{name}.

    @param name: a field name.
    @return: C{name} first, then its synonyms.
    """
    if name not in _TOKEN_CAP_FIELDS:
        return (name,)
    return (name, *(field for field in _TOKEN_CAP_FIELDS if field != name))


def _sent_key(body: Mapping[str, Any], name: str) -> str | None:
    """
    Find the key under which the client sent field C{name}.

    A field whose value is C{null} counts as not sent.

    @param body: the client's body.
    @param name: the field name.
    @return: the body key, or L{None} if the client did not send it.
    """
    for key in _spellings(name):
        if body.get(key) is not None:
            return key
    return None


def _target_key(body: Mapping[str, Any], name: str) -> str:
    """
    Choose the key under which to set field C{name}.

    @param body: the body being built.
    @param name: the field name.
    @return: the key the client sent it under, else a spelling present
        with a C{null} value, else C{name} itself.
    """
    present = (key for key in _spellings(name) if key in body)
    return _sent_key(body, name) or next(present, name)


def apply_precedence(
    body: Mapping[str, Any],
    uri_params: Mapping[str, object],
    defaults: Mapping[str, object],
) -> dict[str, Any]:
    """
    Merge URI parameters and model defaults into a request body.

    URI parameters override body fields; defaults only fill fields the
    client did not send (absent or C{null}).  The body's key order is
    kept and new keys are appended, URI parameters first.

    @param body: the client's body; not mutated.
    @param uri_params: typed URI parameters of the selector.
    @param defaults: the configured C{model_defaults} for the model.
    @return: a new body.
    """
    result = dict(body)
    for name, value in uri_params.items():
        result[_target_key(body, name)] = value
    for name, value in defaults.items():
        if _sent_key(result, name) is None:
            result[_target_key(result, name)] = value
    return result
