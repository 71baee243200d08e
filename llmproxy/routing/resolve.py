# -*- test-case-name: tests.test_routing_resolve -*-
"""
From the client's C{model} string and body to an ordered list of targets.

Order of application: force_model, else aliases on the client's model;
then failover routes and the C{a|b} failover syntax; then each element's
selector is parsed, its backend checked, and the body built with the
precedence URI parameters > client body > model_defaults.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from llmproxy.config import Config, FailoverRoute
from llmproxy.config.hybrid import HybridConfig
from llmproxy.errors import InvalidRequest
from llmproxy.routing.aliases import apply_aliases
from llmproxy.routing.hybrid import (
    HYBRID, check_settings, is_hybrid, parse_hybrid, split_failover, with_settings,
)
from llmproxy.routing.params import validate_params
from llmproxy.routing.precedence import apply_precedence
from llmproxy.routing.selector import Selector, parse_failover, parse_selector


#: The policy of routes that do not name one (plain models and C{a|b}):
#: every key of each element in turn, so one bad key never fails a request.
DEFAULT_POLICY = "km"

#: The longest model string a client may send: room for a long failover
#: list of long selectors, and a bound on what aliases and parsing read.
MAX_MODEL_LENGTH = 4096

#: The longest model string whose plan a L{Router} remembers; longer ones
#: are planned on every request (within L{MAX_MODEL_LENGTH} and
#: L{llmproxy.routing.selector.MAX_ROUTE_ELEMENTS}, that stays cheap), so
#: that no client can fill the cache with big plans.
MAX_CACHED_MODEL_LENGTH = 256


@dataclass(frozen=True)
class Target:
    """
    One element of a route: a backend instance, the bare upstream model and
    the body (in the frontend's dialect) to send it.

    @ivar changed: whether C{body} differs from what the client sent, so the
        client's bytes can be forwarded untouched when it does not.
    @ivar warnings: lenient-mode notes about dropped URI parameters.
    @ivar key: the name of the one key to use (C{backend.N:model} pins key
        instance N), or L{None} to rotate over the backend's keys.
    """

    backend: str
    model: str
    body: Mapping[str, Any]
    changed: bool
    warnings: tuple[str, ...] = ()
    key: str | None = None
    #: A hybrid element's two phases (L{llmproxy.exchange.hybrid}).
    hybrid: HybridRoute | None = None


@dataclass(frozen=True)
class Route:
    """
    Ordered targets and the failover policy joining them.

    @ivar hybrid: whether a target is a hybrid element.
    """

    targets: tuple[Target, ...]
    policy: str = DEFAULT_POLICY
    hybrid: bool = False


@dataclass(frozen=True)
class HybridRoute:
    """
    The two phases of a hybrid element, each a route of its own (failover
    and key rotation apply within each), and its settings.
    """

    reasoning: Route
    execution: Route
    settings: HybridConfig


def _route_text(config: Config, model: str) -> tuple[str, str]:
    """
    Apply force_model or the aliases, then failover routes.  Returns the
    selector text and the policy.
    """
    if config.force_model:
        return config.force_model, DEFAULT_POLICY
    text = apply_aliases(config.model_aliases, model) or model
    route = named_route(config, text)
    if route is None:
        return text, DEFAULT_POLICY
    return "|".join(route.elements), route.policy


def named_route(config: Config, text: str) -> FailoverRoute | None:
    """
    The failover route that selector C{text} (after the aliases) names, if
    any.
    """
    if "|" in text or _explicit_backend(text):
        return None
    lowered = {k.lower(): v for k, v in config.failover_routes.items()}
    return lowered.get(text.lower()) or lowered.get("default") or lowered.get("*")


def _explicit_backend(text: str) -> bool:
    head = text.split("?", 1)[0]
    colon = head.find(":")
    slash = head.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


_RESPONSES_PARAM_PATHS: Mapping[str, tuple[str, ...]] = {
    "max_tokens": ("max_output_tokens",),
    "reasoning_effort": ("reasoning", "effort"),
    "verbosity": ("text", "verbosity"),
}


def _dialect_params(values: Mapping[str, object], dialect: str) -> dict[str, Any]:
    """
    Place URI parameter values where the frontend's dialect keeps them.
    For Responses bodies, nested fields are returned as partial mappings
    to be merged.
    """
    if dialect == "chat":
        return dict(values)
    out: dict[str, Any] = {}
    for name, value in values.items():
        path = _RESPONSES_PARAM_PATHS.get(name, (name,))
        if len(path) == 1:
            out[path[0]] = value
        else:
            out.setdefault(path[0], {})[path[1]] = value
    return out


def _merge_nested(body: Mapping[str, Any], uri: Mapping[str, Any]) -> dict[str, Any]:
    """
    Let URI values win over the body, merging one level into mappings
    (so C{reasoning.effort} keeps C{reasoning.summary}).
    """
    flat = {}
    for key, value in uri.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            flat[key] = {**body[key], **value}
        else:
            flat[key] = value
    return flat


@dataclass(frozen=True)
class _Element:
    """
    What one selector of a model string means, independent of the body.
    """

    backend: str
    model: str
    params: Mapping[str, object]
    defaults: Mapping[str, object]
    warnings: tuple[str, ...]
    key: str | None = None
    hybrid: _HybridPlan | None = None


#: A model string's plan: its elements, in order, and the failover policy.
_Plan = tuple[tuple[_Element, ...], str]


@dataclass(frozen=True)
class _HybridPlan:
    reasoning: _Plan
    execution: _Plan
    settings: HybridConfig


_INSTANCE = re.compile(r"^(?P<backend>.+)\.(?P<n>[1-9][0-9]*)$")
_ENV_NUMBER = re.compile(r"_(?P<n>[0-9]+)$")


def instance_key(config: Config, backend: str, n: int) -> str | None:
    """
    The name of key instance C{n} of C{backend}: the key from
    C{OPENAI_API_KEY_n} in an environment-numbered pool, else the n-th key
    in configuration order.
    """
    keys = config.backends[backend].keys
    numbered = {int(m.group("n")): k.name for k in keys
                if (m := _ENV_NUMBER.search(k.name)) and k.name.startswith("OPENAI_API_KEY_")}
    if numbered:
        return numbered.get(n)
    return keys[n - 1].name if 0 < n <= len(keys) else None


def _backend_and_key(config: Config, selector: Selector) -> tuple[str, str | None]:
    """
    The backend a selector names, and the key it pins (C{openai.2:...}).
    """
    backend = selector.backend or config.default_backend.split("|")[0].split(":")[0]
    if backend in config.backends:
        return backend, None
    match = _INSTANCE.match(backend)
    if match and match.group("backend") in config.backends:
        base, n = match.group("backend"), int(match.group("n"))
        key = instance_key(config, base, n)
        if key is None:
            raise InvalidRequest(
                f"Backend {base!r} has no key instance {n} (model {str(selector)!r}); "
                f"it has {len(config.backends[base].keys)} key(s)",
                param="model", code="unknown_backend",
            )
        return base, key
    raise InvalidRequest(
        f"Unknown backend {backend!r} in model {str(selector)!r}; "
        f"known backends: {', '.join(sorted(config.backends))}",
        param="model",
        code="unknown_backend",
    )


def _element(config: Config, selector: Selector) -> _Element:
    backend, key = _backend_and_key(config, selector)
    if config.backends[backend].type == HYBRID:
        return _named_hybrid(config, selector, backend)
    result = validate_params(selector.params, lenient=config.uri_params == "lenient")
    defaults = (config.model_defaults.get(f"{backend}:{selector.model}")
                or config.model_defaults.get(selector.model) or {})
    return _Element(backend, selector.model, result.values, defaults, result.warnings, key)


def _body(element: _Element, body: Mapping[str, Any], dialect: str
          ) -> tuple[Mapping[str, Any], bool]:
    """
    The body C{element} gets, and whether it differs from the client's.
    """
    e = element
    if not e.params and not e.defaults:
        if body.get("model") == e.model:
            return body, False
        built = dict(body)
        built["model"] = e.model
        return built, True
    uri = _merge_nested(body, _dialect_params(e.params, dialect))
    built = apply_precedence(body, uri, e.defaults)
    built["model"] = e.model
    return built, built != body


def _hybrid_target(e: _Element, body: Mapping[str, Any], dialect: str) -> Target:
    assert e.hybrid is not None
    reasoning = _route(e.hybrid.reasoning, body, dialect)
    execution = _route(e.hybrid.execution, body, dialect)
    warnings = tuple(w for r in (reasoning, execution) for t in r.targets for w in t.warnings)
    return Target(e.backend, e.model, body, False, warnings,
                  hybrid=HybridRoute(reasoning, execution, e.hybrid.settings))


def _route(plan: _Plan, body: Mapping[str, Any], dialect: str) -> Route:
    """
    The route of a plan for one body.  Elements that get the same body
    share it: one body per distinct model among the plain elements (any
    backend), one per distinct element among the others.
    """
    elements, policy = plan
    if len(elements) == 1 and elements[0].hybrid is None:
        e = elements[0]
        return Route((Target(e.backend, e.model, *_body(e, body, dialect), e.warnings, e.key),),
                     policy)
    bodies: dict[object, tuple[Mapping[str, Any], bool]] = {}
    targets = []
    for e in elements:
        if e.hybrid is not None:
            targets.append(_hybrid_target(e, body, dialect))
            continue
        recipe: object = e.model if not e.params and not e.defaults else id(e)
        built = bodies.get(recipe)
        if built is None:
            built = bodies[recipe] = _body(e, body, dialect)
        targets.append(Target(e.backend, e.model, *built, e.warnings, e.key))
    return Route(tuple(targets), policy, any(t.hybrid is not None for t in targets))


def _model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model", code="invalid_type")
    if len(model) > MAX_MODEL_LENGTH:
        raise InvalidRequest(
            f"Invalid 'model': string too long. Expected a string with maximum length "
            f"{MAX_MODEL_LENGTH}, but got a string with length {len(model)} instead.",
            param="model", code="string_above_max_length",
        )
    if not model.strip():
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    return model


def plan_model(config: Config, model: str) -> _Plan:
    """
    The body-independent part of routing a model string: its elements and
    the failover policy.  A repeated element is planned once (its repeats
    are the same L{_Element}).
    """
    text, policy = _route_text(config, model)
    if "[" in text:
        return _hybrid_plan(config, text, policy)
    selectors = parse_failover(text)
    planned: dict[Selector, _Element] = {}
    for selector in selectors:
        if selector not in planned:
            planned[selector] = _element(config, selector)
    return tuple(planned[s] for s in selectors), policy


def _hybrid_plan(config: Config, text: str, policy: str) -> _Plan:
    """
    The plan of a failover list that may hold hybrid elements.
    """
    elements = []
    for part in split_failover(text):
        if not part.strip():
            raise InvalidRequest(f"Invalid model selector {text.strip()[:80]!r}: a failover "
                                 "list has an empty element", param="model",
                                 code="invalid_model_selector")
        elements.append(_inline_hybrid(config, part) if is_hybrid(part)
                        else _element(config, parse_selector(part)))
    return tuple(elements), policy


def _inline_hybrid(config: Config, text: str) -> _Element:
    selector = parse_hybrid(text)
    settings = with_settings(config.hybrid, dict(selector.params))
    return _Element(HYBRID, text.strip(), {}, {}, (), hybrid=_HybridPlan(
        _phase_plan(config, selector.reasoning), _phase_plan(config, selector.execution),
        settings))


def _named_hybrid(config: Config, selector: Selector, backend: str) -> _Element:
    """
    A C{type: hybrid} backend: its phases and settings come from its
    options; a selector's parameters override the settings.
    """
    check_settings(str(selector), selector.params)
    options = config.backends[backend].options
    settings = with_settings(with_settings(config.hybrid, options), dict(selector.params))
    return _Element(backend, selector.model, {}, {}, (), hybrid=_HybridPlan(
        _phase_plan(config, options["reasoning"]), _phase_plan(config, options["execution"]),
        settings))


def _phase_plan(config: Config, text: str) -> _Plan:
    """
    One phase's plan: aliases and failover routes apply; a phase is never
    hybrid itself.
    """
    text = apply_aliases(config.model_aliases, text) or text
    route = named_route(config, text)
    policy = DEFAULT_POLICY if route is None else route.policy
    if route is not None:
        text = "|".join(route.elements)
    nested = InvalidRequest(f"Invalid model selector {text[:80]!r}: a hybrid selector's phase "
                            "cannot be hybrid", param="model", code="invalid_model_selector")
    if "[" in text:
        raise nested
    elements = tuple(_element(config, s) for s in parse_failover(text))
    if any(e.hybrid is not None for e in elements):
        raise nested
    return elements, policy


def resolve(config: Config, body: Mapping[str, Any], dialect: str = "chat") -> Route:
    """
    Route a request body; raises L{InvalidRequest} for a bad selector, an
    unknown backend or a bad URI parameter.

    @param dialect: C{"chat"} or C{"responses"}, the frontend's body shape.
    """
    return _route(plan_model(config, _model_of(body)), body, dialect)


class Router:
    """
    L{resolve} with the body-independent work remembered per model string
    (the config is frozen, so the answer for a model never changes).

    The memory is bounded twice, oldest plans out first: at most C{size}
    model strings, and at most C{elements} route elements in all (four
    per string on average by default, when most routes have one); model
    strings longer than L{MAX_CACHED_MODEL_LENGTH} are never remembered.
    Failed plans are not remembered either.
    """

    def __init__(self, config: Config, size: int = 1024, elements: int | None = None) -> None:
        self.config = config
        self.size = size
        self.elements = 4 * size if elements is None else elements
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._weight = 0

    def __len__(self) -> int:
        """
        How many model strings are remembered.
        """
        return len(self._plans)

    @property
    def weight(self) -> int:
        """
        How many route elements the remembered plans hold.
        """
        return self._weight

    def resolve(self, body: Mapping[str, Any], dialect: str = "chat") -> Route:
        """
        Like L{resolve}, for this router's configuration.
        """
        model = _model_of(body)
        plan = self._plans.get(model)
        if plan is None:
            plan = plan_model(self.config, model)
            if len(model) <= MAX_CACHED_MODEL_LENGTH:
                self._remember(model, plan)
        return _route(plan, body, dialect)

    def _remember(self, model: str, plan: _Plan) -> None:
        weight = len(plan[0])
        if weight > self.elements:
            return
        self._plans[model] = plan
        self._weight += weight
        while len(self._plans) > self.size or self._weight > self.elements:
            _, (gone, _) = self._plans.popitem(last=False)
            self._weight -= len(gone)
