# -*- test-case-name: tests.test_codex_client -*-
"""
Responses C{namespace} tools flattened into plain function tools for a Chat
upstream, and the model's calls mapped back.

A namespace tool groups function tools under one name:
C{{"type": "namespace", "name": "multi_agent_v1", "description", "tools":
[{"type": "function", "name": "spawn_agent", ...}]}}; the model calls one
of them with a C{function_call} item carrying both C{namespace} and
C{name}.  Chat has neither, so each inner function goes to a Chat upstream
as C{<namespace>__<name>} (L{flat_name}), and a call to that name comes
back as C{namespace} + C{name}.

The mapping is a table built from the request's own tools
(L{NamespaceTable.of}), never a parse of the flat name: a namespace or a
tool name may contain C{__} itself.  A flat name that breaks the Chat rule
C{^[a-zA-Z0-9_-]{1,64}$}, or that two tools would share (another flattened
tool, a plain function tool), is not flattened: the tool is left out and
reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = ["SEPARATOR", "NamespaceTable", "flat_name", "has_namespaces"]

#: What joins a namespace and a tool name in a flat name.
SEPARATOR = "__"

_CHAT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def flat_name(namespace: str, name: str) -> str:
    """
    The Chat name of tool C{name} of C{namespace}; whether it is usable is
    for L{NamespaceTable} to say.
    """
    return f"{namespace}{SEPARATOR}{name}"


def has_namespaces(tools: Any) -> bool:
    """
    Whether a Responses C{tools} value holds a namespace tool: the cheap
    test that keeps every other request off this module.
    """
    return isinstance(tools, list) and any(
        isinstance(tool, Mapping) and tool.get("type") == "namespace" for tool in tools
    )


def _report(namespace: Any, name: Any) -> str:
    """
    How a namespace tool left out is reported in
    C{x-llmproxy-dropped-params}: C{tools.namespace.<ns>.<name>} when both
    names are header-safe, else C{tools.namespace}.
    """
    if all(isinstance(part, str) and _CHAT_NAME.fullmatch(part) for part in (namespace, name)):
        return f"tools.namespace.{namespace}.{name}"
    return "tools.namespace"


@dataclass(frozen=True)
class NamespaceTable:
    """
    The namespace tools of one Responses request, as Chat function tools.

    @ivar names: flat name to C{(namespace, name)}, for every tool that was
        flattened.
    @ivar tools: the flattened tools in the Responses function shape, in
        request order, each with the index in the request's C{tools} of
        the namespace it came from.
    @ivar dropped: what could not be flattened, as reported.
    """

    names: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    tools: Sequence[tuple[int, Mapping[str, Any]]] = ()
    dropped: Sequence[str] = ()

    @classmethod
    def of(cls, tools: Any) -> NamespaceTable:
        """
        Flatten the namespace tools among a Responses C{tools} value.
        Plain function names are taken first, so a flat name equal to one
        of them is a collision; a flat name two namespace tools share is
        a collision for both.
        """
        if not has_namespaces(tools):
            return cls()
        taken = {t.get("name") for t in tools if isinstance(t, Mapping) and t.get("type") == "function"}
        candidates: list[_Candidate] = []
        dropped: list[str] = []
        for index, group in enumerate(tools):
            if isinstance(group, Mapping) and group.get("type") == "namespace":
                _candidates(index, group, candidates, dropped)
        counts: dict[str, int] = {}
        for flat, *_ in candidates:
            counts[flat] = counts.get(flat, 0) + 1
        names: dict[str, tuple[str, str]] = {}
        flattened: list[tuple[int, Mapping[str, Any]]] = []
        for flat, namespace, name, index, tool in candidates:
            if flat in taken or counts[flat] > 1:
                dropped.append(_report(namespace, name))
                continue
            names[flat] = (namespace, name)
            flattened.append((index, tool))
        return cls(names, tuple(flattened), tuple(dict.fromkeys(dropped)))

    def group(self, index: int) -> list[Mapping[str, Any]]:
        """
        The flattened tools of the namespace at C{index} in the request's
        C{tools}.
        """
        return [tool for at, tool in self.tools if at == index]

    def call(self, name: str) -> tuple[str | None, str]:
        """
        The C{(namespace, name)} a Chat tool call's C{name} stands for;
        C{(None, name)} for a name that was not flattened.
        """
        namespace, original = self.names.get(name, (None, name))
        return namespace, original


# A flattenable tool: flat name, namespace, name, index of its namespace
# in the request's tools, and the flattened tool.
_Candidate = tuple[str, str, str, int, Mapping[str, Any]]


def _candidates(
    index: int, group: Mapping[str, Any], out: list[_Candidate], dropped: list[str]
) -> None:
    """
    Append the flattenable function tools of the namespace tool at
    C{index} to C{out}; the others go to C{dropped}.
    The namespace's description leads each tool's own.
    """
    namespace = group.get("name")
    inner = group.get("tools")
    for tool in inner if isinstance(inner, list) else []:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        usable = (
            isinstance(namespace, str)
            and isinstance(name, str)
            and isinstance(tool, Mapping)
            and tool.get("type") == "function"
            and _CHAT_NAME.fullmatch(flat_name(namespace, name)) is not None
        )
        if not usable:
            dropped.append(_report(namespace, name))
            continue
        assert isinstance(namespace, str) and isinstance(name, str) and isinstance(tool, Mapping)
        flat = flat_name(namespace, name)
        out.append((flat, namespace, name, index, _flattened(group, tool, flat)))
    if not isinstance(inner, list) or not inner:
        dropped.append("tools.namespace")


def _flattened(group: Mapping[str, Any], tool: Mapping[str, Any], flat: str) -> dict[str, Any]:
    """
    One inner function tool as a top-level Responses function tool named
    C{flat}; the namespace's description is kept ahead of the tool's.
    """
    described = [d for d in (group.get("description"), tool.get("description"))
                 if isinstance(d, str) and d]
    result = {key: value for key, value in tool.items() if key not in ("name", "description")}
    result["name"] = flat
    if described:
        result["description"] = "\n\n".join(described)
    return result
