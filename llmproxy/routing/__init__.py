# -*- test-case-name: tests.test_routing_selector,tests.test_routing_params,tests.test_routing_aliases,tests.test_routing_precedence -*-
"""
Routing: from the model text a client sends to what goes upstream.

Pure functions only, no I/O:
  - L{selector}: the C{[backend:]model[?params]} grammar and C{a|b}
    failover lists;
  - L{params}: validation of selector URI parameters;
  - L{aliases}: C{model_aliases} regex rewrites;
  - L{precedence}: merging URI parameters, body fields and model defaults.
"""

from __future__ import annotations

from llmproxy.routing.aliases import (
    AliasRule,
    alias_targets,
    apply_aliases,
    compile_alias,
    parse_alias_flag,
)
from llmproxy.routing.params import URI_PARAMS, ParamResult, ParamSpec, validate_params
from llmproxy.routing.precedence import apply_precedence
from llmproxy.routing.selector import MAX_ROUTE_ELEMENTS, Selector, parse_failover, parse_selector

__all__ = [
    "MAX_ROUTE_ELEMENTS",
    "Selector",
    "parse_selector",
    "parse_failover",
    "URI_PARAMS",
    "ParamSpec",
    "ParamResult",
    "validate_params",
    "AliasRule",
    "compile_alias",
    "parse_alias_flag",
    "apply_aliases",
    "alias_targets",
    "apply_precedence",
]
