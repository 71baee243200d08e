# -*- test-case-name: tests.test_state_redis -*-
"""
A real C{redis-server} for tests: started on a free port with a temporary
directory and no persistence, stopped (or killed, and started again on the
same port) on demand, so an outage is a real one; with C{tls=True} it
speaks TLS only, with a certificate from a CA of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: What the server prints once it accepts connections.
READY = b"Ready to accept connections"


def free_port() -> int:
    """
    A TCP port nothing listens on now (the server takes it a moment later).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tls_files(directory: Path, host: str = "127.0.0.1") -> Path:
    """
    Write a self-signed CA (C{ca.pem}) and a server certificate for C{host}
    signed by it (C{server.pem}, C{server.key}) into C{directory}.

    @return: the CA file, for the client's C{ssl_ca_certs}.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - day).not_valid_after(now + day)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("llmproxy test CA", ca_key, "llmproxy test CA", ca_key, True)
    server = certificate(host, key, "llmproxy test CA", ca_key, False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    (directory / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "ca.pem"


class _Server(ProcessProtocol):
    """
    One run of the server: its output, whether it is ready, when it ended.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if READY in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "redis-server ended before it was ready: " + self.output.decode()[-2000:]))
        self.ended.callback(None)


class RedisServer:
    """
    A C{redis-server} this test owns.

    Typical use in a trial test::

        server = RedisServer(reactor, password="s3cret")
        await server.start()
        self.addCleanup(server.stop)

    Without persistence (the default) a killed server comes back empty;
    C{persistent=True} writes every change to its append-only file first,
    so it comes back with its data, as a production server would.

    @ivar port: the TCP port, kept across L{kill} and L{start}.
    """

    def __init__(
        self, reactor: Any, password: str | None = None, tls: bool = False,
        persistent: bool = False, binary: str = "redis-server",
    ) -> None:
        self.reactor = reactor
        self.password = password
        self.tls = tls
        self.persistent = persistent
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="llmproxy-redis-")
        self._run: _Server | None = None
        self._process: Any = None

    @property
    def url(self) -> str:
        """
        The C{redis://} URL of this server, with its password if it has one.
        """
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.directory}/ca.pem"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.ended.called

    async def start(self, timeout: float = 10.0) -> None:
        """
        Start the server (again, on the same port) and wait until it accepts
        connections.
        """
        if self.running:
            return
        aof = ["yes", "--appendfsync", "always"] if self.persistent else ["no"]
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory, "--save", "", "--appendonly", *aof,
                "--daemonize", "no", "--logfile", ""]
        if self.tls:
            if not (Path(self.directory) / "ca.pem").exists():
                write_tls_files(Path(self.directory))
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            argv += ["--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
                     "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self._run = run = _Server()
        self._process = self.reactor.spawnProcess(
            run, self.binary, argv, env={}, path=self.directory)
        await run.ready.addTimeout(timeout, self.reactor)

    async def kill(self) -> None:
        """
        End the server at once (SIGKILL), as a crash or a lost host would.
        """
        await self._signal("KILL")

    def pause(self) -> None:
        """
        Freeze the server (SIGSTOP): connections stay open, nothing answers.
        """
        self._process.signalProcess(signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let a paused server go on (SIGCONT).
        """
        self._process.signalProcess(signal.SIGCONT)

    async def stop(self) -> None:
        """
        End the server (SIGTERM) and remove its directory.
        """
        try:
            await self._signal("TERM")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def _signal(self, name: str) -> None:
        run = self._run
        if run is None or run.ended.called:
            return
        try:
            self._process.signalProcess(signal.SIGCONT)
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass
        await run.ended


__all__ = ["RedisServer", "free_port", "write_tls_files"]
