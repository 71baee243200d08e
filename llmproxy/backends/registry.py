# -*- test-case-name: tests.test_registry -*-
"""
The backend registry's machinery: a backend type is its configuration
schema (a L{BackendKind}) and a factory.

The table of the types llmproxy ships is L{llmproxy.backends.REGISTRY}.
A new type is one module declaring a L{BackendType}, plus one line there.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.client import HTTPConnectionPool

from llmproxy.backends.base import Backend, IUpstreamReactor
from llmproxy.config import BackendConfig, BackendKind


@dataclass(frozen=True)
class BackendContext:
    """
    What the process gives every backend it builds.

    @ivar pool: the one persistent HTTP connection pool.
    @ivar reactor: carries the network.
    @ivar clock: carries the timers (tests pass a C{Clock}).
    """

    pool: HTTPConnectionPool
    reactor: IUpstreamReactor
    clock: IReactorTime


#: Builds the backend of one configured backend instance.
Factory = Callable[[BackendConfig, BackendContext], Backend]


@dataclass(frozen=True)
class BackendType:
    """
    One backend type: C{kind.name} is what C{type:} says in the YAML.
    """

    kind: BackendKind
    build: Factory


class Registry:
    """
    The backend types one process knows, in order; the first is the type
    of a backend that names none.
    """

    def __init__(self, *types: BackendType) -> None:
        by_name = {t.kind.name: t for t in types}
        if len(by_name) != len(types) or not types:
            raise ValueError("a registry needs at least one type and unique type names")
        self._types: Mapping[str, BackendType] = MappingProxyType(by_name)

    @property
    def kinds(self) -> tuple[BackendKind, ...]:
        """
        What the config loader needs to know of each type.
        """
        return tuple(t.kind for t in self._types.values())

    def plus(self, *types: BackendType) -> Registry:
        """
        A registry with these types after this one's.
        """
        return Registry(*self._types.values(), *types)

    def build(self, config: BackendConfig, context: BackendContext) -> Backend:
        """
        The backend for C{config}, whose type the config loader has checked
        against L{kinds}.
        """
        return self._types[config.type].build(config, context)
