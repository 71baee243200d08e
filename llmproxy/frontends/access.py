# -*- test-case-name: tests.test_access_json -*-
"""
The access log (C{access_log: true}, or a mapping: C{format}, C{path},
C{max_bytes}, C{max_files}; on by default in the foreground): an observer
of the reply events that writes one line per reply, either on the main log
in namespace L{ACCESS_NAMESPACE} (no C{path}), or bare to standard output
(C{path: -}) or to a file rotated by size (L{LogFile}).  The text line:

    127.0.0.1 "POST /v1/chat/completions HTTP/1.1" 200 512 0.012s
    route=openai:gpt-4o key=openai#2 attempts=2 stream=no
    prompt=12 completion=5 total=17 cached=0 reasoning=0 "OpenAI/Python 1.54.0"

(one line), with C{client-left} at its end when the client left first.  The
token counts (L{llmproxy.translate.usage}) are there when the upstream
reported them (for a stream, also when llmproxy asked on the client's
behalf).
The JSON line (C{format: json}, L{json_record}) says the same and more:
request id, session key (a digest), frontend, backend and model, time to
first event.  Key names only: a reply event never carries a key's value, a
bearer or a body, and neither does either line.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any, Protocol

from twisted.application.service import Service
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.logfile import LogFile
from zope.interface import implementer

from llmproxy.config.operations import AccessLogConfig
from llmproxy.exchange.events import REPLY_NAMESPACE
from llmproxy.translate.usage import usage_counts, usage_line

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


def text_fields(event: LogEvent) -> dict[str, Any]:
    """
    The fields of L{ACCESS_FORMAT} for a reply event.
    """
    return dict(
        client=event["client"], method=_quoted(event["method"]),
        path=_quoted(event["path"]), protocol=_quoted(event["protocol"]),
        status=event["status"], bytes=event["bytes"] or "-", duration=event["duration"],
        route=_quoted(event["route"] or "-"), key=_quoted(event["key"] or "-"),
        attempts=event["attempts"], stream="yes" if event["streamed"] else "no",
        usage=_usage(event.get("usage")),
        user_agent=_quoted(event["user_agent"] or "-"),
        left="" if event["completed"] else " client-left",
    )


def _json_usage(usage: Any) -> dict[str, Any] | None:
    """
    A usage object's counts (L{usage_counts}), C{estimated} when marked so.
    """
    if not isinstance(usage, dict):
        return None
    counts: dict[str, Any] = dict(usage_counts(usage))
    if usage.get("estimated"):
        counts["estimated"] = True
    return counts


def json_record(event: LogEvent) -> dict[str, Any]:
    """
    The JSON access record of a reply event.
    """
    get = event.get
    when = get("log_time")
    return {
        "time": None if when is None else
        datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": get("request_id"), "client": event["client"],
        "method": event["method"], "path": event["path"], "protocol": event["protocol"],
        "status": event["status"], "bytes": event["bytes"],
        "duration": round(event["duration"], 6),
        "time_to_first_event": _rounded(get("time_to_first_event")),
        "frontend": get("frontend"), "route": event["route"], "backend": get("backend"),
        "model": get("model"), "key": event["key"], "attempts": event["attempts"],
        "streamed": event["streamed"], "completed": event["completed"],
        "continued": get("continued"), "session": get("session"),
        "usage": _json_usage(get("usage")), "user_agent": event["user_agent"],
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


@implementer(ILogObserver)
class AccessLog:
    """
    Log one line per reply event to C{log} (by default, the main log).
    """

    def __init__(self, log: Logger | None = None, form: str = "text") -> None:
        self.log = log or Logger(namespace=ACCESS_NAMESPACE)
        self.form = form

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != REPLY_NAMESPACE:
            return
        if self.form == "json":
            self.log.info("{line}", line=json.dumps(json_record(event)))
        else:
            self.log.info(ACCESS_FORMAT, **text_fields(event))


class Lines(Protocol):
    """
    Where bare lines go: standard output, or a L{LogFile}.
    """

    def write(self, data: Any) -> Any: ...

    def flush(self) -> Any: ...


@implementer(ILogObserver)
class AccessWriter(Service):
    """
    Write one bare line per reply event to C{out}; as a service, close it
    when the process stops (unless it is standard output).
    """

    def __init__(self, out: Lines, form: str, binary: bool, close: bool) -> None:
        self.out = out
        self.form = form
        self.binary = binary
        self.close = close

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") != REPLY_NAMESPACE:
            return
        if self.form == "json":
            line = json.dumps(json_record(event), separators=(",", ":"))
        else:
            line = ACCESS_FORMAT.format(**text_fields(event))
        line += "\n"
        self.out.write(line.encode("utf-8") if self.binary else line)
        if not self.binary:
            self.out.flush()

    def stopService(self) -> None:
        super().stopService()
        if self.close and isinstance(self.out, LogFile) and not self.out.closed:
            self.out.close()


def access_observer(config: AccessLogConfig, stdout: IO[str] | None = None) -> ILogObserver:
    """
    The access log C{config} says: on the main log (no path), bare on
    standard output (C{-}), or in a file rotated past C{max_bytes}.
    """
    if config.path is None:
        return AccessLog(form=config.format)
    if config.path == "-":
        # Not sys.stdout: twistd sends that to the main log.
        out = stdout or sys.__stdout__
        assert out is not None
        return AccessWriter(out, config.format, binary=False, close=False)
    logfile = LogFile.fromFullPath(config.path, rotateLength=config.max_bytes,
                                   defaultMode=0o640,
                                   maxRotatedFiles=config.max_files or None)
    return AccessWriter(logfile, config.format, binary=True, close=True)


__all__ = ["ACCESS_FORMAT", "ACCESS_NAMESPACE", "AccessLog", "AccessWriter", "access_observer",
           "json_record", "text_fields"]
