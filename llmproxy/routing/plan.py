# -*- test-case-name: tests.test_plan -*-
"""
Expand a failover route into the ordered list of attempts.

A route is a sequence of elements C{(backend, model, number_of_keys)}; a
policy says how elements and keys are combined:

 - C{k}: every key of the first element only;
 - C{m} and C{ordered}: each element once, with its first available key;
 - C{km}: for each element, every one of its keys;
 - C{mk}: key 0 of every element, then key 1 of every element, and so on.

Key indices are positions in the order the caller got from
L{llmproxy.backends.keypool.KeyPool.ordered} for this request, so index 0 is
the first available key.  A keyless element (0 keys) is one attempt with key
index L{None}.  No C{(backend, model, key_index)} is ever planned twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

Element = tuple[str, str, int]


@dataclass(frozen=True)
class Attempt:
    """
    One planned upstream attempt.

    @ivar backend: the backend instance name.
    @ivar model: the upstream model name.
    @ivar key_index: index into that backend's rotated key list for this
        request; L{None} for a keyless backend.
    """

    backend: str
    model: str
    key_index: int | None


def _key_indices(count: int) -> list[int | None]:
    """
    The key indices of an element with C{count} keys.

    @return: C{[0, ..., count - 1]}, or C{[None]} when keyless.
    """
    if count == 0:
        return [None]
    return list(range(count))


def _policy_k(elements: Sequence[Element]) -> Iterator[Attempt]:
    """
    Every key of the first element.
    """
    for backend, model, count in elements[:1]:
        for index in _key_indices(count):
            yield Attempt(backend, model, index)


def _policy_m(elements: Sequence[Element]) -> Iterator[Attempt]:
    """
    Each element once, with its first key.
    """
    for backend, model, count in elements:
        yield Attempt(backend, model, _key_indices(count)[0])


def _policy_km(elements: Sequence[Element]) -> Iterator[Attempt]:
    """
    For each element, every one of its keys.
    """
    for backend, model, count in elements:
        for index in _key_indices(count):
            yield Attempt(backend, model, index)


def _policy_mk(elements: Sequence[Element]) -> Iterator[Attempt]:
    """
    Key index outer, element inner; elements run out of keys at their size.
    """
    rounds = max((max(count, 1) for _, _, count in elements), default=0)
    for position in range(rounds):
        for backend, model, count in elements:
            indices = _key_indices(count)
            if position < len(indices):
                yield Attempt(backend, model, indices[position])


_POLICIES: dict[str, Callable[[Sequence[Element]], Iterator[Attempt]]] = {
    "k": _policy_k,
    "m": _policy_m,
    "km": _policy_km,
    "mk": _policy_mk,
    "ordered": _policy_m,
}

#: The policy names L{plan_attempts} accepts.
POLICIES: frozenset[str] = frozenset(_POLICIES)


def _unique(attempts: Iterable[Attempt]) -> tuple[Attempt, ...]:
    """
    Drop repeated attempts, keeping the first occurrence of each.
    """
    return tuple(dict.fromkeys(attempts))


def _validate(elements: Sequence[Element]) -> None:
    """
    Reject elements with a negative key count.

    @raise ValueError: if any element has fewer than zero keys.
    """
    for backend, model, count in elements:
        if count < 0:
            raise ValueError(f"negative key count for {backend}:{model}")


def plan_attempts(elements: Sequence[Element], policy: str) -> tuple[Attempt, ...]:
    """
    The ordered attempts for a route under a failover policy.

    @param elements: C{(backend, model, number_of_keys)} in route order.
    @param policy: C{k}, C{m}, C{km}, C{mk} or C{ordered} (case-insensitive).
    @return: the attempts, without duplicates; empty for an empty route.
    @raise ValueError: for an unknown policy or a negative key count.
    """
    expand = _POLICIES.get(policy.strip().lower())
    if expand is None:
        allowed = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown failover policy {policy!r}; allowed: {allowed}")
    _validate(elements)
    return _unique(expand(elements))
