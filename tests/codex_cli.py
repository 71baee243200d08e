"""
The real Codex CLI (C{codex exec}) as a test client of an in-process
llmproxy: a hermetic run (its own C{CODEX_HOME}, C{HOME} and working
directory, a custom model provider, no update check, plugin sync,
analytics or feedback) spawned through the reactor, never blocking it.

L{codex_binary} finds the CLI that C{.ci/run} installs; L{run_codex} runs
one prompt against any provider; L{codex_on} starts llmproxy and its fake
upstream (L{tests.harness.start}), puts a recording relay in front of it
and runs Codex through both, so a test sees what Codex sent, what llmproxy
answered (headers included) and what the upstream received.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, IResponse
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.harness import Proxy, start

#: The CLI version C{.ci/run} installs, and how (at the repository root).
CODEX_VERSION = "0.171.0"
INSTALL = f"npm install --prefix .cache/codex @openai/codex@{CODEX_VERSION}"
_ROOT = Path(__file__).resolve().parent.parent
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer",
                         b"upgrade", b"proxy-connection", b"host", b"content-length"})


def codex_binary() -> str:
    """
    The Codex CLI: C{$LLMPROXY_CODEX_BIN}, else the project-local install.

    @raise SkipTest: when there is none, naming the install command.
    """
    path = os.environ.get("LLMPROXY_CODEX_BIN") or str(
        _ROOT / ".cache" / "codex" / "node_modules" / ".bin" / "codex")
    if not os.access(path, os.X_OK):
        raise SkipTest(f"the Codex CLI is not installed at {path}: run `{INSTALL}` "
                       "at the repository root (.ci/run does)")
    return path


@dataclass(frozen=True)
class Provider:
    """
    The custom model provider Codex is given (C{model_providers.<id>}).

    @ivar env_key: the variable Codex reads the API key from; it is set to
        C{api_key} in Codex's environment.
    @ivar extra: more provider fields, as TOML-ready values.
    """

    base_url: str
    id: str = "llmproxy"
    env_key: str | None = "LLMPROXY_API_KEY"
    api_key: str = "unused"
    wire_api: str = "responses"
    extra: Mapping[str, Any] = field(default_factory=dict)


def config_toml(provider: Provider, model: str) -> str:
    """
    A C{config.toml} that selects C{provider} and turns off every startup
    call that is not the model's (update check, plugin sync, analytics,
    feedback, telemetry); all else is Codex's default.
    """
    fields = {"name": provider.id, "base_url": provider.base_url,
              "env_key": provider.env_key, "wire_api": provider.wire_api, **provider.extra}
    fields = {k: v for k, v in fields.items() if v is not None}
    lines = [f"model = {json.dumps(model)}", f"model_provider = {json.dumps(provider.id)}",
             "check_for_update_on_startup = false", "",
             "[features]", "plugins = false", "remote_plugin = false", "",
             "[analytics]", "enabled = false", "", "[feedback]", "enabled = false", "",
             "[otel]", 'exporter = "none"', "", f"[model_providers.{provider.id}]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CodexRun:
    """
    How one C{codex exec} ended.
    """

    code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[int | None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.ended.callback(code)


async def run_codex(
    case: TestCase, provider: Provider, prompt: str, *, model: str = "gpt-x",
    files: Mapping[str, str] | None = None, args: Sequence[str] = (), timeout: float = 120.0,
    codex_home: Path | None = None, environ: Mapping[str, str] | None = None,
) -> CodexRun:
    """
    Run C{codex exec PROMPT} once, with commands allowed to run unattended.

    @param files: more files for the temporary C{CODEX_HOME} (such as an
        C{auth.json}), by name.
    @param codex_home: a C{CODEX_HOME} to use instead of a temporary one
        (its C{config.toml} is written over).
    @param environ: more variables for Codex's environment.
    @param timeout: a safety net in real seconds: past it Codex is
        killed and the run says C{timed_out}.
    """
    binary = codex_binary()
    root = Path(tempfile.mkdtemp(prefix="llmproxy-codex-"))
    case.addCleanup(shutil.rmtree, root, True)
    home, work, user = root / "codex-home", root / "work", root / "home"
    for folder in (home, work, user):
        folder.mkdir()
    if codex_home is not None:
        home = codex_home
    (home / "config.toml").write_text(config_toml(provider, model))
    for name, text in (files or {}).items():
        (home / name).write_text(text)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(user),
           "CODEX_HOME": str(home), **(environ or {})}
    if provider.env_key is not None:
        env[provider.env_key] = provider.api_key
    argv = [binary, "exec", "--skip-git-repo-check", "--color", "never",
            "--dangerously-bypass-approvals-and-sandbox", *args, prompt]
    collect = _Collect()
    process = reactor.spawnProcess(collect, binary, argv, env=env, path=str(work))
    timed_out: list[bool] = []

    def kill() -> None:
        timed_out.append(True)
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    guard = reactor.callLater(timeout, kill)
    code = await collect.ended
    if guard.active():
        guard.cancel()
    return CodexRun(code, b"".join(collect.out).decode(errors="replace"),
                    b"".join(collect.err).decode(errors="replace"), bool(timed_out))


@dataclass
class Exchanged:
    """
    One request Codex made to llmproxy, as the relay saw it.

    @ivar body: the request body, parsed when it is JSON.
    @ivar status, headers: llmproxy's answer (lower-cased header names,
        last value), once it came.
    """

    method: str
    path: str
    body: Any
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Pipe(Protocol):
    def __init__(self, request: Request, done: Deferred[None]) -> None:
        self.request, self.done = request, done

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


class Relay(Resource):
    """
    An HTTP relay to C{target} that records each request and the headers
    of its answer, streaming the answer through as it comes.
    """

    isLeaf = True

    def __init__(self, target: str, agent: Agent) -> None:
        super().__init__()
        self.target, self.agent = target, agent
        self.records: list[Exchanged] = []

    def render(self, request: Request) -> int:
        Deferred.fromCoroutine(self._forward(request)).addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _forward(self, request: Request) -> None:
        assert request.content is not None
        raw = request.content.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        record = Exchanged(request.method.decode(), request.path.decode(), body)
        self.records.append(record)
        headers = Headers({k: v for k, v in request.requestHeaders.getAllRawHeaders()
                           if k.lower() not in _HOP_BY_HOP})
        producer = FileBodyProducer(io.BytesIO(raw)) if raw else None
        response: IResponse = await self.agent.request(
            request.method, self.target.encode() + request.uri, headers, producer)
        record.status = response.code
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            record.headers[name.decode().lower()] = values[-1].decode()
            if name.lower() not in _HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, values)
        done: Deferred[None] = Deferred()
        response.deliverBody(_Pipe(request, done))
        await done
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        request.setResponseCode(502)
        request.write(json.dumps({"error": {"message": failure.getErrorMessage()}}).encode())
        request.finish()


@dataclass(frozen=True)
class CodexResult:
    """
    A Codex run through llmproxy: how it ended, what Codex sent and was
    answered (L{Relay} records), and llmproxy with its fake upstream (whose
    C{fake.requests} are what the upstream received).
    """

    run: CodexRun
    exchanged: list[Exchanged]
    proxy: Proxy


async def codex_on(
    case: TestCase, make_config: Callable[[str], Mapping[str, Any]], prompt: str, *,
    model: str, api_key: str = "unused", env_key: str = "LLMPROXY_API_KEY",
    provider_fields: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
    prepare: Callable[[Proxy], None] | None = None, **options: Any,
) -> CodexResult:
    """
    Start llmproxy with C{make_config(upstream)} and run Codex on it: its
    provider's C{base_url} is a L{Relay} in front of llmproxy's C{/v1}, its
    key C{api_key} in C{env_key}, with C{provider_fields} on top.

    @param environ: the environment llmproxy's configuration reads.
    @param prepare: called with the started proxy before Codex runs (to
        script the fake upstream).
    @param options: passed to L{run_codex}.
    """
    proxy = await start(case, make_config, environ=environ)
    if prepare is not None:
        prepare(proxy)
    pool = HTTPConnectionPool(reactor, persistent=False)
    case.addCleanup(pool.closeCachedConnections)
    relay = Relay(proxy.url, Agent(reactor, pool=pool))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(relay))
    case.addCleanup(port.stopListening)
    provider = Provider(f"http://127.0.0.1:{port.getHost().port}/v1", env_key=env_key,
                        api_key=api_key, extra=dict(provider_fields or {}))
    run = await run_codex(case, provider, prompt, model=model, **options)
    return CodexResult(run, relay.records, proxy)
