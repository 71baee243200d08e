# -*- test-case-name: tests.test_adapt_pipeline -*-
"""
Which adapt steps run, in which order: a new body tweak (edit precision,
planning overrides, a connector's rules) is one module with its L{Step}
and one line here.
"""

from __future__ import annotations

from llmproxy.adapt.codex import CODEX_RULES
from llmproxy.adapt.edits import EDITS
from llmproxy.adapt.pipeline import Pipeline
from llmproxy.adapt.reasoning import REASONING
from llmproxy.adapt.session import SESSION_FIELD
from llmproxy.config import Config

__all__ = ["DEFAULT_PIPELINE", "default_pipeline"]

#: The steps every configuration runs today.
DEFAULT_PIPELINE = Pipeline((SESSION_FIELD, EDITS, REASONING, CODEX_RULES))


def default_pipeline(config: Config) -> Pipeline:
    """
    The pipeline for C{config}, built once and shared by its requests.

    No step needs more configuration than the L{Context} of a target
    carries yet (the backend's C{reasoning_models} pattern), so this is
    L{DEFAULT_PIPELINE} whatever C{config} says; steps with settings of
    their own will be built from C{config} here.
    """
    return DEFAULT_PIPELINE
