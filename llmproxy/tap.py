# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd llmproxy} command line: options, and C{makeService}.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from dataclasses import replace
from typing import Callable, NoReturn, cast

import twisted
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorProcess, IReactorSocket
from twisted.python import usage

from llmproxy import __version__, check, reload, service
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
        ["check", None, "Validate the configuration, print it resolved (secrets masked, "
                        "each value's source) and exit: 0 if valid, 1 if not."],
        ["probe", None, "With --check: also ask each backend's /models with each key."],
    ]
    #: Set by --workers in the processes it spawns; not for people.
    hidden = ("worker-index=", "worker-port=")

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

    def getUsage(self, width: int | None = None) -> str:
        """
        The usage text, without the options only llmproxy itself passes.
        """
        every = self.longOpt
        self.longOpt = [option for option in every if option not in self.hidden]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = every

    def opt_version(self) -> NoReturn:
        """
        Print llmproxy's and Twisted's versions and exit.
        """
        print(f"llmproxy {__version__}")
        print(f"Twisted {twisted.__version__}")
        sys.exit(0)

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

    def load(self) -> Config:
        """
        The configuration these options name, read and checked (at startup
        and at each reload alike).

        @raise ConfigError: naming the key and the file.
        """
        config = load_config(self.overrides(), kinds=REGISTRY.kinds)
        check_strong_model(config)
        return worker_capture(config, self["worker-index"])

    def config_path(self) -> str | None:
        """
        The config file these options name, if any.
        """
        return self["config"] or os.environ.get("CONFIG_FILE") or None

    def postOptions(self) -> None:
        if self["check"] or self["probe"]:
            check.main(self.overrides(), bool(self["probe"]), REGISTRY.kinds)
        self._foreground_pidfile()
        try:
            self.config: Config = self.load()
        except ConfigError as e:
            raise StartupError(str(e))
        self._apply_log_level()
        self._foreground_access_log()
        self._check_capture()
        self._check_state()
        if self.config.workers > 1 and parse_tcp(self.config.listen) is None:
            raise StartupError(
                f"workers: needs a plain tcp: listen endpoint, not {self.config.listen!r}"
            )

    def _foreground_pidfile(self) -> None:
        """
        In the foreground (C{twistd -n}), write no pidfile unless one is
        asked for: twistd's default, C{twistd.pid} in the working
        directory, would stop a second llmproxy started there.
        """
        parent = self.parent
        if parent is None or not parent.get("nodaemon"):
            return
        if parent.get("pidfile") == "twistd.pid" and not any(
                arg.startswith("--pidfile") for arg in sys.argv[1:]):
            parent["pidfile"] = ""

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
    def _foreground_access_log(self) -> None:
        """
        In the foreground, the access log is on unless the file says.
        """
        parent = self.parent
        if parent is not None and parent.get("nodaemon") and not self.config.access.said:
            self.config = replace(self.config, access_log=True)

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


class FrozenStartup(Service):
    """
    Started last: what startup built (modules, configuration, runtime)
    lives as long as the process, so the cyclic garbage collector's passes
    leave it out from then on (C{gc.freeze}); walking it again and again
    cost each request about 3% of its CPU.
    """

    def startService(self) -> None:
        super().startService()
        gc.freeze()


def makeService(options: Options, reactor: IProxyReactor | None = None) -> service.ProxyService:
    """
    The twistd entry point.  With C{--workers N}, this process and N-1
    spawned siblings share the port.
    """
    proxy = _makeService(options, reactor)
    FrozenStartup().setServiceParent(proxy)
    return proxy


def _makeService(options: Options, reactor: IProxyReactor | None) -> service.ProxyService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IProxyReactor, _reactor)
    index = options["worker-index"]
    config = options.config
    if config.workers <= 1 and index is None:
        proxy = service.makeService(config, reactor)
        reload.install(proxy, options.load, options.config_path(), reactor)
        return proxy
    address = parse_tcp(config.listen)
    assert address is not None
    if options["worker-port"] is not None:
        address = replace(address, port=options["worker-port"])
    proxy = service.ProxyService(
        config, reactor, listener=lambda site: ReusePortService(reactor, address, site)
    )
    listener = proxy.endpoint_service
    assert isinstance(listener, ReusePortService)
    relay = None
    if index is None:
        children = WorkerChildren(reactor, config.workers, options.argv, listener)
        children.setServiceParent(proxy)
        relay = children.relay
    else:
        ParentWatch(reactor).setServiceParent(proxy)
    reload.install(proxy, options.load, options.config_path(), reactor, relay)
    return proxy
