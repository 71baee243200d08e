# -*- test-case-name: tests.test_adapt_pipeline -*-
"""
The adapt pipeline: every per-target body tweak is one pure L{Step}, and a
L{Pipeline} runs them in order, once per target, for both frontends.

A step is a function C{(body, context) -> Shaped}: it gets the routed body
and a L{Context} naming the target (backend, bare model, the backend's
reasoning-model pattern), the body's dialect and the upstream's, and the
proxy-only fields the client sent; it returns the new body, the names of
the parameters it removed (they end up in C{x-llmproxy-dropped-params}) and
whether it changed anything.  Steps never mutate their input, and a step
that reports no change has its returned body ignored, so an untouched body
stays the very object the frontend parsed and the client's own bytes can be
forwarded.

Where translation sits: a step declares the dialects whose bodies it
understands (L{Step.dialects}).  L{Pipeline.run} first consumes the
proxy-only fields, then runs, in order, every step that understands the
client's dialect, on the client's body, I{before} translation; then, when
the upstream speaks the other dialect, it translates and runs, in order,
the steps that understand only the upstream's dialect, on the translated
body.  A step that understands neither dialect of a target is not run for
it.  So a step runs at most once per target, before translation whenever
it can, and never sees a body of a shape it does not know.  The one
departure from the declared order: a step that has to wait for translation
runs after every step that did not, even a later-declared one.

Why not teach every step both shapes and always run before translation:
the reasoning adaptation is written for Chat bodies, and run this way it
applies exactly where it did before the pipeline existed, by construction:
on the client's Chat body before a Chat -> Responses translation, on the
translated body after a Responses -> Chat one, and not at all between two
Responses dialects.  A Responses-shaped twin would have to be proven equal
through both translations (instructions vs. system messages, three
spellings of the token cap, the names reported as dropped) and would then
have to be switched off for Responses -> Responses to keep behaviour.

Proxy-only fields are body fields meant for llmproxy, not the upstream
(knobs such as a future C{x_llmproxy_edit_precision}); like a selector's
URI parameters, they shape the request but are never sent.  A step names
the ones it reads (L{Step.consumes}, always under L{PROXY_FIELD_PREFIX});
the pipeline removes them from the body before any step or translation
runs and hands their values to every step in L{Context.knobs}.  They are
consumed, not dropped: they are not reported in C{x-llmproxy-dropped-params}.
A field under the prefix that no step names is not llmproxy's: it is
forwarded like any other unknown field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from llmproxy.config.edits import EditPrecisionConfig
from llmproxy.dialects import CHAT, RESPONSES


__all__ = [
    "PROXY_FIELD_PREFIX",
    "BOTH_DIALECTS",
    "Context",
    "Shaped",
    "Step",
    "Pipeline",
    "Translate",
]

#: The prefix every proxy-only body field carries, so that none can ever
#: collide with a field of either OpenAI API.
PROXY_FIELD_PREFIX = "x_llmproxy_"

BOTH_DIALECTS: frozenset[str] = frozenset({CHAT, RESPONSES})

_NO_KNOBS: Mapping[str, Any] = MappingProxyType({})


class EditTuning(NamedTuple):
    """
    Edit precision's decision for one request (L{llmproxy.adapt.edits}).

    @ivar failure: what showed the failure, as C{x-llmproxy-tuned} says it
        (C{cline search-block}).
    """

    failure: str
    settings: EditPrecisionConfig


class Context(NamedTuple):
    """
    What a step may know about the target it shapes a body for.  (Named
    tuples, not frozen dataclasses: both are built on every attempt, and
    a tuple is built several times faster.)

    @ivar backend: the backend instance name.
    @ivar model: the bare upstream model.
    @ivar dialect: the dialect of the body the step receives.
    @ivar upstream: the dialect the backend's upstream speaks.
    @ivar reasoning_models: the backend's C{reasoning_models} pattern, or
        L{None} for the default one.
    @ivar backend_type: the backend's type (C{type:} in the config), for
        the steps that are one connector's wire rules.
    @ivar knobs: the proxy-only fields the client sent, in body order.
    @ivar edit: the request is to be tuned for a failed edit
        (L{llmproxy.adapt.edits}); decided once per request, not per target.
    """

    backend: str
    model: str
    dialect: str
    upstream: str
    reasoning_models: re.Pattern[str] | None = None
    backend_type: str = ""
    knobs: Mapping[str, Any] = _NO_KNOBS
    edit: EditTuning | None = None


class Shaped(NamedTuple):
    """
    A body after a step (or a whole pipeline).

    @ivar dropped: the names of the parameters removed, in the order met.
    @ivar changed: whether C{body} differs from the body given; when
        L{False}, C{body} is ignored and the given body is kept.
    """

    body: Mapping[str, Any]
    dropped: tuple[str, ...] = ()
    changed: bool = False


StepFunction = Callable[[Mapping[str, Any], Context], Shaped]

#: How a pipeline translates a body into the upstream's dialect: the new
#: body and the fields translation had to drop.
Translate = Callable[[Mapping[str, Any]], Shaped]


@dataclass(frozen=True)
class Step:
    """
    One pure body tweak.

    @ivar name: names the step in reprs and errors; unique in a pipeline.
    @ivar shape: the tweak itself; it must not mutate the body it gets.
    @ivar dialects: the dialects whose bodies C{shape} understands.
    @ivar consumes: the proxy-only fields C{shape} reads from
        L{Context.knobs}.
    """

    name: str
    shape: StepFunction
    dialects: frozenset[str] = BOTH_DIALECTS
    consumes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.dialects or not self.dialects <= BOTH_DIALECTS:
            raise ValueError(f"step {self.name!r}: dialects must be some of {sorted(BOTH_DIALECTS)}")
        stray = sorted(name for name in self.consumes if not name.startswith(PROXY_FIELD_PREFIX))
        if stray:
            raise ValueError(
                f"step {self.name!r}: proxy-only fields must start with {PROXY_FIELD_PREFIX!r}, "
                f"not {', '.join(stray)}"
            )


@dataclass(frozen=True)
class Pipeline:
    """
    Ordered steps, built once from the configuration and shared by every
    request.

    @ivar consumes: every proxy-only field a step reads.
    """

    steps: tuple[Step, ...] = ()
    consumes: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"adapt steps named twice: {', '.join(twice)}")
        consumed = frozenset().union(*(step.consumes for step in self.steps))
        object.__setattr__(self, "consumes", consumed)

    def run(
        self, body: Mapping[str, Any], context: Context, translate: Translate | None = None
    ) -> Shaped:
        """
        Shape C{body} for one target.

        @param body: the routed body, in C{context.dialect}; never mutated.
        @param context: the target; its C{knobs} are filled in here.
        @param translate: how to turn the body into C{context.upstream}'s
            dialect, or L{None} when it is already in it.
        @return: the body to send and every dropped parameter (the steps'
            and translation's, in the order they ran); C{changed} is
            L{False} only when the result is C{body} itself, and always
            L{True} after a translation.
        """
        changed = False
        if self.consumes:
            knobs = {key: value for key, value in body.items() if key in self.consumes}
            if knobs:
                body = {key: value for key, value in body.items() if key not in self.consumes}
                context = context._replace(knobs=knobs)
                changed = True
        dropped: tuple[str, ...] = ()
        client = context.dialect
        for step in self.steps:
            if client in step.dialects:
                shaped = step.shape(body, context)
                dropped += shaped.dropped
                if shaped.changed:
                    body, changed = shaped.body, True
        if translate is None:
            return Shaped(body, dropped, changed)
        translated = translate(body)
        body, dropped = translated.body, dropped + translated.dropped
        context = context._replace(dialect=context.upstream)
        for step in self.steps:
            if client not in step.dialects and context.dialect in step.dialects:
                shaped = step.shape(body, context)
                dropped += shaped.dropped
                if shaped.changed:
                    body = shaped.body
        return Shaped(body, dropped, True)
