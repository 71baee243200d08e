# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd llmproxy} command line: options, and C{makeService}.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from typing import Callable, cast

from twisted.internet.interfaces import IReactorProcess, IReactorSocket
from twisted.python import usage

from llmproxy import service
from llmproxy.backends import REGISTRY
from llmproxy.backends.base import IUpstreamReactor
from llmproxy.capture.rotate import open_private
from llmproxy.config import Config, ConfigError, Overrides, load_config, parse_tcp
from llmproxy.config.reader import did_you_mean
from llmproxy.exchange.planning import check_strong_model
from llmproxy.startup import StartupError
from llmproxy.workers import IWatchReactor, ParentWatch, ReusePortService, WorkerChildren


class IProxyReactor(IUpstreamReactor, IWatchReactor, IReactorSocket, IReactorProcess):
    """
    What llmproxy needs from twistd's reactor: the proxy's own (upstream
    connections, timers), and for C{--workers} a shared port
    (L{ReusePortService}), child processes (L{WorkerChildren}) and C{stop}
    (L{ParentWatch}).
    """


def _integer(option: str) -> Callable[[str], int]:
    """
    A coercer for an integer option whose error names the option.
    """
    def coerce(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{option}: expected a whole number, got {text!r}") from None

    return coerce


class Options(usage.Options):
    """
    C{twistd llmproxy} options.  Command-line values override the
    environment, which overrides the YAML file.
    """

    synopsis = "[options]"
    longdesc = ("An OpenAI-compatible LLM proxy. With no config file and no "
                "OPENAI_API_KEY it serves the built-in mock (demo) backend.")

    optParameters = [
        ["config", "c", None, "YAML config file (env CONFIG_FILE)."],
        ["listen", "l", None, "Twisted endpoint to listen on, e.g. tcp:8000:interface=127.0.0.1 "
                              "(default; cannot be combined with --host/--port)."],
        ["host", None, None, "Interface to listen on (shorthand; env APP_HOST)."],
        ["port", "p", None, "TCP port to listen on (shorthand; env APP_PORT).",
         _integer("--port")],
        ["default-backend", "b", None, "Backend for models without a backend: prefix "
                                       "(env LLM_BACKEND)."],
        ["force-model", None, None, "Send every request to this selector, e.g. gpt-4o or "
                                    "openai:gpt-4o?temperature=0.2 (env STATIC_ROUTE)."],
        ["log-level", None, None, "debug, info, warn or error."],
        ["workers", None, None, "Processes serving the (tcp:) listening port together, "
                                "via SO_REUSEPORT.", _integer("--workers")],
        ["capture", None, None, "Write what crosses the wire to this JSONL file, secrets "
                                "redacted (env CAPTURE_FILE)."],
        ["worker-index", None, None, "Internal: set by --workers in the processes it spawns.", int],
        ["worker-port", None, None, "Internal: the port a spawned worker shares.", int],
    ]
    optFlags = [
        ["disable-auth", None, "Serve without proxy keys, even beyond loopback."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["proxy-keys"] = []
        self["model-aliases"] = []
        self.argv: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, check and load the configuration.

        @raise StartupError: for any mistake, in one line (a L{UsageError}
            would make twistd print the whole usage text before it).
        """
        # Kept so --workers can start its siblings with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise StartupError(self._usage_problem(str(e)))

    def _usage_problem(self, problem: str) -> str:
        """
        A command-line syntax error, in one line, with the closest option
        when the one given is unknown.
        """
        problem = problem.removeprefix("Parameter type enforcement failed: ")
        unknown = re.fullmatch(r"option (--?[\w-]+) not recognized", problem)
        if unknown:
            names = [f"--{name.rstrip('=')}" for name in self.longOpt]
            problem += did_you_mean(unknown.group(1), names)
        return f"{problem} (see --help)"

    def opt_proxy_key(self, key: str) -> None:
        """
        A key clients must send as 'Authorization: Bearer KEY' (repeatable).
        """
        self["proxy-keys"].append(key)

    def opt_model_alias(self, rule: str) -> None:
        """
        PATTERN=REPLACEMENT model rewrite, ahead of the file's (repeatable).
        """
        self["model-aliases"].append(rule)

    def opt_static_route(self, selector: str) -> None:
        """
        Synonym of --force-model.
        """
        self["force-model"] = selector

    def overrides(self) -> Overrides:
        return Overrides(
            config_file=self["config"],
            listen=self["listen"],
            host=self["host"],
            port=self["port"],
            default_backend=self["default-backend"],
            force_model=self["force-model"],
            proxy_keys=tuple(self["proxy-keys"]),
            disable_auth=bool(self["disable-auth"]),
            log_level=self["log-level"],
            model_aliases=tuple(self["model-aliases"]),
            workers=self["workers"],
            capture_file=self["capture"],
        )

    def postOptions(self) -> None:
        try:
            self.config: Config = load_config(self.overrides(), kinds=REGISTRY.kinds)
            check_strong_model(self.config)
        except ConfigError as e:
            raise StartupError(str(e))
        self._apply_log_level()
        self._check_capture()
        self._check_state()
        if self.config.workers > 1 and parse_tcp(self.config.listen) is None:
            raise StartupError(
                f"workers: needs a plain tcp: listen endpoint, not {self.config.listen!r}"
            )

    def _check_capture(self) -> None:
        """
        Make sure the capture file, if any, can be written, before anything
        starts.
        """
        capture = self.config.capture
        if capture is None:
            return
        try:
            open_private(capture.file).close()
        except OSError as e:
            raise StartupError(f"capture: cannot write {capture.file}: {e.strerror}")

    def _check_state(self) -> None:
        """
        Make sure a SQLite state file's folder exists, before anything
        starts (a missing one is a mistake, not an outage).
        """
        state = self.config.state
        folder = os.path.dirname(state.path) or "."
        if state.kind == "sqlite" and not os.path.isdir(folder):
            raise StartupError(f"state: {state.url}: no folder {folder}")

    def _apply_log_level(self) -> None:
        """
        Hand twistd a level-filtering observer (foreground, standard-output
        logging only; twistd's own --logger, if given, wins).
        """
        parent = self.parent
        level = self.config.log_level
        if parent is None or parent.get("logger") or (level == "info" and not self["log-level"]):
            return
        if not parent.get("nodaemon") or parent.get("logfile") not in (None, "", "-"):
            raise StartupError("--log-level: applies to foreground logging on standard "
                               "output only (twistd -n, or python -m llmproxy)")
        parent["logger"] = f"llmproxy.logs.{level}"


def worker_capture(config: Config, index: int | None) -> Config:
    """
    C{config} for the process of worker C{index}: with capture on, each
    spawned worker writes (and rotates) a file of its own, C{FILE.worker-N}.
    """
    if index is None or config.capture is None:
        return config
    return replace(config, capture=replace(config.capture,
                                           file=f"{config.capture.file}.worker-{index}"))


def makeService(options: Options, reactor: IProxyReactor | None = None) -> service.ProxyService:
    """
    The twistd entry point.  With C{--workers N}, this process and N-1
    spawned siblings share the port.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IProxyReactor, _reactor)
    index = options["worker-index"]
    config = worker_capture(options.config, index)
    if config.workers <= 1 and index is None:
        return service.makeService(config, reactor)
    address = parse_tcp(config.listen)
    assert address is not None
    if options["worker-port"] is not None:
        address = replace(address, port=options["worker-port"])
    proxy = service.ProxyService(
        config, reactor, listener=lambda site: ReusePortService(reactor, address, site)
    )
    listener = proxy.endpoint_service
    assert isinstance(listener, ReusePortService)
    if index is None:
        WorkerChildren(reactor, config.workers, options.argv, listener).setServiceParent(proxy)
    else:
        ParentWatch(reactor).setServiceParent(proxy)
    return proxy
