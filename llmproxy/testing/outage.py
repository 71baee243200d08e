# -*- test-case-name: tests.test_breakers -*-
"""
L{Outage}: one model of a L{FakeOpenAI} down for a while (a 503, or any
behaviour), then healthy again, by the fake's clock; it notes when each
request for the model came and whether it was answered as down.
"""

from __future__ import annotations

from typing import Callable

from llmproxy.testing.upstream import Behaviour, FakeOpenAI, Recorded, Reply

#: What an overloaded upstream answers.
UNAVAILABLE = Reply(503, {"error": {"message": "The server is overloaded", "type": "server_error",
                                    "param": None, "code": None}})


class Outage:
    """
    Makes C{fake} answer requests for C{model} with C{down} until C{until}
    on its clock, and as usual from then on.

    @ivar seen: (time, down) of every request for the model, in order.
    """

    def __init__(self, fake: FakeOpenAI, model: str, until: float,
                 down: Behaviour = UNAVAILABLE) -> None:
        self.fake, self.model, self.until, self.down = fake, model, until, down
        self.seen: list[tuple[float, bool]] = []
        self._chained: Callable[[Recorded], None] | None = fake.on_request
        fake.on_request = self._request

    def _request(self, recorded: Recorded) -> None:
        if self._chained is not None:
            self._chained(recorded)
        if recorded.model != self.model:
            return
        now = self.fake.clock.seconds()
        down = now < self.until
        self.seen.append((now, down))
        if down:
            self.fake.by_model[self.model] = [self.down]
        else:
            self.fake.by_model.pop(self.model, None)

    def while_down(self) -> list[float]:
        """
        When the requests answered as down came.
        """
        return [at for at, down in self.seen if down]

    def first_served(self) -> float | None:
        """
        When the first request after the outage came (L{None}: none yet).
        """
        return next((at for at, down in self.seen if not down), None)
