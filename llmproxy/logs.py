# -*- test-case-name: tests.test_tap -*-
"""
Log observers for C{--log-level}: twistd's standard text format on standard
output, keeping only events at or above the level.  twistd takes a log
observer factory by dotted name (its C{--logger} option), hence one factory
per level.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)

LEVELS = ("debug", "info", "warn", "error")


def observer(level: str) -> ILogObserver:
    """
    An observer printing events of C{level} and above to standard output.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])


def debug() -> ILogObserver:
    return observer("debug")


def info() -> ILogObserver:
    return observer("info")


def warn() -> ILogObserver:
    return observer("warn")


def error() -> ILogObserver:
    return observer("error")
