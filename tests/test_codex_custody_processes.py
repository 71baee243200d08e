"""
Two processes with the same owned ChatGPT login
(C{llmproxy.backends.codex_tokens}): this one and a real second Python
process refresh it against one fake token endpoint without ever reusing
(and so burning) a rotated refresh token.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from llmproxy.backends.codex_auth import Account, CodexAuthError
from llmproxy.backends.codex_tokens import REFRESH_MARGIN, open_account
from llmproxy.testing import listen_tokens
from llmproxy.testing.codex import auth_data, write_auth_file
from tests.test_codex_custody import HOUR, CustodyCase, sub


#: The other process: an owned account on the same login and store, asking
#: for credentials for C{duration} seconds, as this one does.
CHILD = r"""
import sys
from pathlib import Path
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool
from llmproxy.backends.codex_auth import CodexAuthError, jwt_claims
from llmproxy.backends.codex_tokens import open_account

async def main(reactor, auth, store, url, duration):
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    account = open_account("child", Path(auth), "owned", token_url=url, store_dir=Path(store),
                           agent=agent, clock=reactor, reactor=reactor)
    await account.credentials()
    print("ready", flush=True)
    await deferToThread(sys.stdin.readline)
    end, refused = reactor.seconds() + float(duration), 0
    while reactor.seconds() < end:
        try:
            await account.credentials()
        except CodexAuthError as e:
            refused += 1
            print("refused", e.message, file=sys.stderr, flush=True)
        await task.deferLater(reactor, 0.002, lambda: None)
    print("done", refused, flush=True)
    await deferToThread(sys.stdin.readline)
    final = await account.credentials()
    print("final", jwt_claims(final.access_token)["sub"], flush=True)

def run(reactor, *argv):
    return Deferred.fromCoroutine(main(reactor, *argv))

task.react(run, sys.argv[1:])
"""


class Child(ProcessProtocol):
    """
    The other process, its output read line by line.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.errors = b""
        self.lines: list[str] = []
        self.waiting: list[tuple[str, Deferred[str]]] = []
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.lines.append(line.decode())
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        for _, d in self.waiting:
            d.errback(AssertionError(f"child ended: {self.errors.decode()[-2000:]}"))
        self.waiting = []

    def line(self, prefix: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.waiting.append((prefix, d))
        self._check()
        return d.addTimeout(10, reactor)

    def _check(self) -> None:
        for prefix, d in list(self.waiting):
            found = [line for line in self.lines if line.startswith(prefix)]
            if found:
                self.waiting.remove((prefix, d))
                d.callback(found[0])


class TwoProcessesTests(CustodyCase):
    def spawn(self, url: str, duration: float) -> tuple[Child, Any]:
        """
        Start the other process on this test's login and store.
        """
        child = Child()
        repo = str(Path(__file__).resolve().parent.parent)
        process = reactor.spawnProcess(
            child, sys.executable,
            [sys.executable, "-c", CHILD, str(self.auth_file), str(self.store_dir), url,
             str(duration)],
            env={**os.environ, "PYTHONPATH": repo})
        self.addCleanup(lambda: child.ended)
        self.addCleanup(lambda: process.signalProcess("KILL") if process.pid else None)
        return child, process

    async def use(self, account: Account, duration: float) -> int:
        """
        Ask C{account} for credentials for C{duration} seconds; how many
        times it refused.
        """
        end, refused = time.time() + duration, 0
        while time.time() < end:
            try:
                await account.credentials()
            except CodexAuthError:
                refused += 1
            await deferLater(reactor, 0.002, lambda: None)
        return refused

    async def test_two_processes_refresh_without_burning_the_login(self) -> None:
        """
        This process and another use the same owned login at once, its
        tokens due for a refresh a tenth of a second after they are
        issued: each rotation is refreshed once (by whichever process
        gets the lock; the other adopts its token), none is reused, no
        request is refused, and both end on the same token.
        """
        duration, lifetime = 0.6, 0.1
        fake, port, url = await listen_tokens(reactor, delay=0.01, ttl=REFRESH_MARGIN + lifetime)
        self.addCleanup(port.stopListening)
        write_auth_file(self.auth_file, auth_data("one", exp=time.time() + HOUR))
        child, process = self.spawn(url, duration)
        account = open_account("main", self.auth_file, "owned", token_url=url,
                               store_dir=self.store_dir, agent=self.agent,
                               clock=reactor, reactor=reactor)
        await child.line("ready")
        await account.credentials()
        # Due at once, for both.
        write_auth_file(self.store_dir / "acct-1.json", auth_data("one", exp=time.time()))
        process.writeToChild(0, b"go\n")
        refused = await self.use(account, duration)
        theirs_refused = int((await child.line("done")).split()[1])
        process.writeToChild(0, b"final\n")
        theirs = (await child.line("final")).split()[1]
        ours = sub(await account.credentials())
        self.assertEqual((refused, theirs_refused), (0, 0), child.errors.decode())
        self.assertEqual({c.outcome for c in fake.calls}, {"rotated"})
        self.assertGreaterEqual(len(fake.calls), 2)
        gaps = [b.at - a.at for a, b in zip(fake.calls, fake.calls[1:])]
        self.assertGreater(min(gaps), lifetime / 2, gaps)
        self.assertEqual((ours, theirs), (f"access-{fake.issued}",) * 2)
        self.assertEqual(self.store()["tokens"]["refresh_token"], fake.current)
