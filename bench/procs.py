"""
Subprocesses of the bench: spawn on a free port, wait for the first served
request, read RSS from /proc, and stop everything at the end.

Every process is started in its own session (process group) so that a
server which forks workers is stopped whole, by its group id.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


def raise_fd_limit() -> tuple[int, int]:
    """
    Raise this process's open-files soft limit to the hard limit (children
    inherit it); returns the new (soft, hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """
    One running subprocess serving HTTP on 127.0.0.1:port.
    """

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        """
        The process id of the server's main process.
        """
        return self.popen.pid

    def alive(self) -> bool:
        """
        Whether the main process still runs.
        """
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """
        The end of its output, for error messages.
        """
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """
    The subprocesses of one bench run; L{stop_all} (called from a
    C{finally}) ends them all, by process group id.
    """

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = env
        self.servers: list[Server] = []

    def spawn(self, name: str, argv: Sequence[str], port: int, cwd: Path | None = None) -> Server:
        """
        Start C{argv} with its output in a log file.
        """
        log = self.log_dir / f"{name}-{port}.log"
        out = log.open("wb")
        try:
            popen = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(cwd) if cwd else None, env=self.env, start_new_session=True,
            )
        finally:
            out.close()
        server = Server(name, port, popen, log)
        self.servers.append(server)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        """
        SIGTERM the server's process group, SIGKILL it after C{grace} s.
        """
        if server in self.servers:
            self.servers.remove(server)
        _signal_group(server.popen, signal.SIGTERM)
        try:
            server.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(server.popen, signal.SIGKILL)
            server.popen.wait(timeout=grace)
        # Workers of a forking server may outlive their parent briefly.
        _signal_group(server.popen, signal.SIGKILL)

    def stop_all(self) -> None:
        """
        Stop every server still running.
        """
        for server in list(reversed(self.servers)):
            try:
                self.stop(server)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(probe: Callable[[], bool], timeout: float, server: Server | None = None,
               interval: float = 0.005) -> float:
    """
    Call C{probe} until it returns True; the seconds that took.  Raises
    L{RuntimeError} on timeout or if C{server} dies meanwhile.
    """
    start = time.perf_counter()
    deadline = start + timeout
    while time.perf_counter() < deadline:
        if probe():
            return time.perf_counter() - start
        if server is not None and not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.popen.returncode}:\n"
                               f"{server.log_tail()}")
        time.sleep(interval)
    detail = f":\n{server.log_tail()}" if server is not None else ""
    raise RuntimeError(f"not ready after {timeout:g} s{detail}")


# memory and process trees


def rss_kib(pid: int) -> int:
    """
    VmRSS of one process in KiB (0 if it is gone).
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        after = stat.rsplit(b")", 1)[-1].split()
        if len(after) > 1:
            parents[int(entry)] = int(after[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and all its descendants.
    """
    parents = _parent_map()
    tree = [pid]
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        tree += children
        frontier += children
    return tree


def tree_rss_kib(pid: int) -> int:
    """
    The summed VmRSS of C{pid} and its descendants (shared pages count once
    per process, so forked workers are over-counted a little).
    """
    return sum(rss_kib(p) for p in process_tree(pid))


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of one process so far (0 if it is gone).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(pid: int) -> float:
    """
    The CPU time of C{pid} and its descendants (live ones).
    """
    return sum(cpu_seconds(p) for p in process_tree(pid))


class CpuMeter:
    """
    How much of the machine's CPU other processes (not this one nor its
    reaped descendants) used between L{start} and L{stop}: a busy machine
    makes every number of the run noisier.  Approximate: interrupt time is
    left out, and descendants still running at L{stop} count as others.
    """

    def __init__(self) -> None:
        self.cpus = os.cpu_count() or 1
        self._start: tuple[float, float, float] | None = None
        self._loadavg = 0.0

    @staticmethod
    def _machine_busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system = fields[0], fields[1], fields[2]
        return (user + nice + system) / _TICK

    @staticmethod
    def _ours() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self) -> None:
        """
        Start measuring.
        """
        self._loadavg = os.getloadavg()[0]
        self._start = (time.monotonic(), self._machine_busy(), self._ours())

    def stop(self) -> dict[str, float]:
        """
        The wall time, the CPU seconds others used and their share of all
        CPUs (0..1), and the 1-minute load average at L{start}.
        """
        assert self._start is not None
        wall0, busy0, ours0 = self._start
        wall = time.monotonic() - wall0
        others = max(0.0, (self._machine_busy() - busy0) - (self._ours() - ours0))
        return {"wall_s": wall, "others_cpu_s": others,
                "others_share": others / (wall * self.cpus) if wall > 0 else 0.0,
                "loadavg_1m_at_start": self._loadavg}


class RssSampler:
    """
    Sample the RSS of a process tree in the background, keeping the peak.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._tree = process_tree(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        refresh = 0
        while not self._stop.is_set():
            refresh += 1
            if refresh % 20 == 0:
                self._tree = process_tree(self.pid)
            total = sum(rss_kib(p) for p in self._tree)
            self.peak_kib = max(self.peak_kib, total)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = ["CpuMeter", "ProcessSet", "RssSampler", "Server", "cpu_seconds", "free_port",
           "process_tree", "raise_fd_limit", "rss_kib", "tree_cpu_seconds", "tree_rss_kib",
           "wait_until"]
