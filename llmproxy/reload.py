# -*- test-case-name: tests.test_reload -*-
"""
Hot reload: on C{SIGHUP}, or when the config file changes (C{reload: {watch:
true}}, a L{TimerService} polling its modification time), read the
configuration again the way startup did (same file, environment and
command line) and, if it is valid, swap it in (L{ProxyService.use_config}).

An invalid configuration changes nothing: one error line names the key and
the file, and llmproxy keeps serving the one it has.  The requests in
flight finish on the runtime they started with; key cooldowns, breakers,
conversations (the runtime's successor) and the Responses store (the
application's) carry over.  The listener is left alone unless C{listen}
changed; then the new one is bound before the old one is closed, and a
new address that cannot be bound fails the reload.

Every reload emits one event in namespace L{RELOAD_NAMESPACE}, to the
application's event observers (L{ExchangeEvents.publish}) and to the main
log, with the keys C{ok} (bool), C{error} (the one-line reason, or
L{None}), C{digest} (of the configuration now running) and C{path}.
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.logger import ILogObserver, Logger, globalLogPublisher

from llmproxy.backends.base import IUpstreamReactor
from llmproxy.config import Config, ConfigError
from llmproxy.service import ProxyService, with_backlog
from llmproxy.startup import cannot_listen
from llmproxy.workers import ReusePortService

#: The namespace of reload events.
RELOAD_NAMESPACE = "llmproxy.reload"
OK_FORMAT = "config reloaded from {path} (digest {digest})"
FAILED_FORMAT = "config reload failed, still serving the previous config: {error}"
#: Settings a running process cannot take over: each needs a restart.
RESTART_ONLY = ("workers", "capture", "log_level", "reload")


def config_digest(config: Config) -> str:
    """
    A short digest of a configuration: equal for equal configurations, in
    any process (workers agree), and changed by a key's new value while
    saying nothing of it.
    """
    h = hashlib.sha256(repr(config).encode("utf-8"))
    for backend in config.backends.values():
        for key in backend.keys:
            h.update(b"\0" + key.value.encode("utf-8"))
    for proxy_key in config.proxy_keys:
        h.update(b"\1" + proxy_key.encode("utf-8"))
    return h.hexdigest()[:16]


@dataclass
class ConfigState:
    """
    What C{/v1/llmproxy/status} says of the configuration.

    @ivar reloads: reloads tried since startup, failed ones included.
    @ivar last_error: why the last reload failed; L{None} once one succeeds.
    """

    path: str | None
    digest: str
    loaded_at: float
    reloads: int = 0
    last_error: str | None = None

    def status(self) -> dict[str, Any]:
        return {"digest": self.digest, "loaded_at": self.loaded_at, "path": self.path,
                "reloads": self.reloads, "last_error": self.last_error}


class Reloader(Service):
    """
    Reloads C{proxy}'s configuration with C{load}; once started, on
    C{SIGHUP} too (L{SignalHook}).

    @ivar state: the configuration's status, shown by the application.
    """

    def __init__(
        self, proxy: ProxyService, load: Callable[[], Config], path: str | None,
        reactor: IUpstreamReactor, clock: IReactorTime | None = None,
        observer: ILogObserver = globalLogPublisher,
    ) -> None:
        """
        @param load: the configuration as startup reads it (raises
            L{ConfigError}).
        @param reactor: binds a new C{listen}.
        @param observer: the main log (tests pass their own).
        """
        self.proxy = proxy
        self.load = load
        self.reactor = reactor
        self.clock = clock or reactor
        self.state = ConfigState(path, config_digest(proxy.config), self.clock.seconds())
        self._main_log = observer
        self.log = Logger(namespace=RELOAD_NAMESPACE, observer=cast(ILogObserver, self._emit))
        #: The main log only: what is not a reload's outcome.
        self.notes = Logger(namespace="llmproxy.config", observer=observer)
        self._running = False
        self._again = False
        self._waiters: list[Deferred[bool]] = []
        proxy.app.config_status = self.state.status

    def _emit(self, event: dict[str, Any]) -> None:
        self.proxy.app.events.publish(event)
        self._main_log(event)

    def reload(self) -> Deferred[bool]:
        """
        Reload now; a reload asked for while one runs runs once more after
        it.  Fires with whether the (last) reload succeeded.
        """
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if self._running:
            self._again = True
        else:
            Deferred.fromCoroutine(self._reloads())
        return waiter

    async def _reloads(self) -> None:
        self._running = True
        try:
            ok = await self._guarded()
            while self._again:
                self._again = False
                ok = await self._guarded()
        finally:
            self._running = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(ok)

    async def _guarded(self) -> bool:
        try:
            return await self._reload_once()
        except CancelledError:
            raise
        except Exception as e:  # a bug, not the file: say so, keep serving
            return self._failed(f"internal error while reloading ({type(e).__name__})")

    async def _reload_once(self) -> bool:
        self.state.reloads += 1
        try:
            config = self.load()
        except ConfigError as e:
            return self._failed(str(e))
        old = self.proxy.config
        listener: Service | None = None
        if config.listen != old.listen:
            try:
                listener = await self._bind(config.listen)
            except CancelledError:
                raise
            except ConfigError as e:
                return self._failed(str(e))
        self.proxy.use_config(config)
        if listener is not None:
            self._replace_listener(listener)
        for note in (*config.warnings, *_needs_restart(old, config)):
            self.notes.warn("{note}", note=note)
        self.state.digest = config_digest(config)
        self.state.loaded_at = self.clock.seconds()
        self.state.last_error = None
        self.log.info(OK_FORMAT, ok=True, error=None, digest=self.state.digest,
                      path=self.state.path)
        return True

    def _failed(self, error: str) -> bool:
        self.state.last_error = error
        self.log.error(FAILED_FORMAT, ok=False, error=error, digest=self.state.digest,
                       path=self.state.path)
        return False

    async def _bind(self, listen: str) -> Service:
        """
        A listener of the application on C{listen}, bound beside the
        running one.

        @raise ConfigError: C{listen} cannot be bound, or the running
            listener cannot be moved (workers).
        """
        where = f"{self.state.path or '<config>'}: listen"
        if isinstance(self.proxy.endpoint_service, ReusePortService):
            raise ConfigError(f"{where}: changed to {listen!r}, but with --workers the "
                              "address only changes with a restart")
        endpoint = endpoints.serverFromString(self.reactor, with_backlog(listen))
        try:
            port = await endpoint.listen(self.proxy.app.site())
        except CancelledError:
            raise
        except Exception as e:
            raise ConfigError(f"{where}: {cannot_listen(listen, e)}")
        return BoundListener(port)

    def _replace_listener(self, listener: Service) -> None:
        old = self.proxy.endpoint_service
        old.disownServiceParent()
        self.proxy.endpoint_service = listener
        # Started already: added to a running parent, it would listen again.
        listener.parent = self.proxy
        self.proxy.services.append(listener)

    def startService(self) -> None:
        super().startService()
        self.state.loaded_at = self.clock.seconds()


class BoundListener(Service):
    """
    A port a reload bound, closed when the service stops.
    """

    def __init__(self, port: IListeningPort) -> None:
        self.port: IListeningPort | None = port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return succeed(None) if stopped is None else cast("Deferred[None]", stopped)


def _needs_restart(old: Config, new: Config) -> list[str]:
    """
    A note for each setting that changed but only takes effect on restart.
    """
    return [f"config reload: {name} changed; it takes effect on restart"
            for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


class SignalHook(Service):
    """
    Call C{callback} in the reactor's thread whenever the process gets
    C{signum}, from when the reactor runs until this service stops (the
    previous handler is then put back).  Installed once the reactor runs,
    so that it follows twistd's own signal handling.
    """

    def __init__(self, reactor: IReactorCore, signum: int, callback: Callable[[], object]) -> None:
        self.reactor = reactor
        self.signum = signum
        self.callback = callback
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if not self.running or self._installed:
            return
        from_thread = getattr(self.reactor, "callFromThread")
        self._previous = signal.signal(
            self.signum, lambda signum, frame: from_thread(self.callback))
        self._installed = True

    def stopService(self) -> None:
        super().stopService()
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False


class ConfigWatch(TimerService):
    """
    Poll C{path} every C{interval} seconds; call C{changed} when its
    modification time, size or inode differ from the last poll's (a file
    replaced by a rename counts).
    """

    def __init__(self, path: str, interval: float, changed: Callable[[], object],
                 clock: IReactorTime) -> None:
        super().__init__(interval, self._poll)
        self.clock = clock
        self.path = path
        self.changed = changed
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _poll(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return  # a file gone for a moment (an editor's save) is no change
        self._seen = stamp
        self.changed()

    def stopService(self) -> Deferred[None] | None:
        if not self.running:
            return None
        return super().stopService()


def install(
    proxy: ProxyService, load: Callable[[], Config], path: str | None,
    reactor: IUpstreamReactor, relay: Callable[[int], None] | None = None,
) -> Reloader:
    """
    Give C{proxy} its reloader: on C{SIGHUP} (first relayed, with
    C{relay}, to the worker processes) and, with C{reload.watch} and a
    file, when the file changes.
    """
    reloader = Reloader(proxy, load, path, reactor)
    reloader.setServiceParent(proxy)

    def hangup() -> None:
        if relay is not None:
            relay(signal.SIGHUP)
        reloader.reload()

    SignalHook(IReactorCore(reactor), signal.SIGHUP, hangup).setServiceParent(proxy)
    settings = proxy.config.reload
    if settings.watch and path:
        ConfigWatch(path, settings.interval, reloader.reload, reactor).setServiceParent(proxy)
    return reloader


__all__ = ["ConfigState", "ConfigWatch", "RELOAD_NAMESPACE", "Reloader", "SignalHook",
           "config_digest", "install"]

