# -*- test-case-name: tests.test_events -*-
"""
The access log (C{access_log: true}): an observer of the reply events that
logs one line per reply on the main log, in namespace L{ACCESS_NAMESPACE}:

    127.0.0.1 "POST /v1/chat/completions HTTP/1.1" 200 512 0.012s
    route=openai:gpt-4o key=openai#2 attempts=2 stream=no
    prompt=12 completion=5 total=17 cached=0 reasoning=0 "OpenAI/Python 1.54.0"

(one line), with C{client-left} at its end when the client left first.  The
token counts (L{llmproxy.translate.usage}) are there when the upstream
reported them (for a stream, also when llmproxy asked on the client's
behalf).
Key names only: a reply event never carries a key's value.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from llmproxy.exchange.events import REPLY_NAMESPACE
from llmproxy.translate.usage import usage_line

ACCESS_NAMESPACE = "llmproxy.access"
ACCESS_FORMAT = ('{client} "{method} {path} {protocol}" {status} {bytes} {duration:.3f}s '
                 'route={route} key={key} attempts={attempts} stream={stream}{usage} '
                 '"{user_agent}"{left}')


def _quoted(text: str) -> str:
    """
    C{text} made safe between double quotes on one line.
    """
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _usage(usage: Any) -> str:
    """
    The token counts of a reply's usage, with their leading space; nothing
    when unknown.
    """
    return " " + usage_line(usage) if isinstance(usage, dict) else ""


@implementer(ILogObserver)
class AccessLog:
    """
    Log one line per reply event to C{log} (by default, the main log).
    """

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log or Logger(namespace=ACCESS_NAMESPACE)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != REPLY_NAMESPACE:
            return
        self.log.info(
            ACCESS_FORMAT,
            client=event["client"], method=_quoted(event["method"]),
            path=_quoted(event["path"]), protocol=_quoted(event["protocol"]),
            status=event["status"], bytes=event["bytes"] or "-", duration=event["duration"],
            route=_quoted(event["route"] or "-"), key=_quoted(event["key"] or "-"),
            attempts=event["attempts"], stream="yes" if event["streamed"] else "no",
            usage=_usage(event.get("usage")),
            user_agent=_quoted(event["user_agent"] or "-"),
            left="" if event["completed"] else " client-left",
        )


__all__ = ["ACCESS_FORMAT", "ACCESS_NAMESPACE", "AccessLog"]
