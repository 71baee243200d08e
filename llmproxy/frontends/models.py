# -*- test-case-name: tests.test_models_listing -*-
"""
The model listing of C{GET /v1/models}: every backend's models as
C{backend:model} (and bare for the default backend), then the targets of
the model aliases.  A backend missing its key (an unset variable) lists
nothing.

Backends are asked all at once, and the listing waits for them at most
L{LISTING_DEADLINE} seconds: a backend that has not answered by then is
listed with its configured models.  Whether a backend's own request goes on
(to fill its cache) and how long a failure is remembered is the backend's
business (L{llmproxy.backends.openai} keeps asking nothing for a while
after a failure, so a dead upstream costs a listing nothing).
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from llmproxy.backends.base import Backend
from llmproxy.exchange.runtime import Runtime
from llmproxy.routing.aliases import alias_targets

#: The most a listing waits for the backends, in seconds.
LISTING_DEADLINE = 5.0


class ModelListing:
    """
    Lists the models of a runtime's backends.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, deadline: float = LISTING_DEADLINE) -> None:
        self.clock = clock
        self.deadline = deadline

    async def entries(self, runtime: Runtime) -> list[dict[str, Any]]:
        """
        The listing's model objects, in backend order.
        """
        found = await self.gather({name: backend for name, backend in
                                   runtime.upstreams.backends.items()
                                   if not _missing_key(backend)})
        created = int(self.clock.seconds())
        entries: dict[str, dict[str, Any]] = {}

        def add(ident: str, owner: str) -> None:
            entries.setdefault(ident, {"id": ident, "object": "model", "created": created,
                                       "owned_by": owner})

        for name, models in found.items():
            for model in models:
                if name == runtime.config.default_backend:
                    add(model, name)
                add(f"{name}:{model}", name)
        for target in alias_targets(runtime.config.model_aliases):
            add(target, "llmproxy")
        return list(entries.values())

    def gather(self, backends: Mapping[str, Backend]) -> Deferred[dict[str, list[str]]]:
        """
        Each backend's models, asked concurrently; at the deadline, the
        backends still silent keep their configured models.  Cancelling
        the result stops waiting for every backend.
        """
        found = {name: list(backend.config.models) for name, backend in backends.items()}
        if not backends:
            return succeed(found)
        asks: list[Deferred[None]] = []
        left = len(backends)
        cancelled = False

        def cancel(_: Deferred[dict[str, list[str]]]) -> None:
            nonlocal cancelled
            cancelled = True
            _stop(timer)
            for ask in asks:
                ask.cancel()

        done: Deferred[dict[str, list[str]]] = Deferred(cancel)

        def settled(_: object) -> None:
            nonlocal left
            left -= 1
            if not left and not cancelled:
                _stop(timer)
                done.callback(found)

        timer = self.clock.callLater(self.deadline, _cancel_all, asks)
        for name, backend in backends.items():
            ask = Deferred.fromCoroutine(self._ask(name, backend, found))
            asks.append(ask)
            ask.addBoth(settled)
        return done

    async def _ask(self, name: str, backend: Backend, found: dict[str, list[str]]) -> None:
        try:
            found[name] = list(await backend.models())
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn("{backend}: cannot list its models ({error}); using config",
                          backend=name, error=type(e).__name__)


def _missing_key(backend: Backend) -> bool:
    """
    Whether the backend wants a key it was not given (the demo's C{openai}
    without C{OPENAI_API_KEY}): its models could not be used, so they are
    not listed.
    """
    return not backend.config.keys and backend.config.key_env is not None


def _cancel_all(asks: list[Deferred[None]]) -> None:
    for ask in asks:
        ask.cancel()


def _stop(call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


__all__ = ["LISTING_DEADLINE", "ModelListing"]
