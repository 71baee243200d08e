"""
One bench run, phase by phase:

  1. upstreams: nginx (non-streaming, when installed) and the Twisted
     canned upstream (streams; non-streaming too without nginx);
  2. startup: llmproxy spawned a few times, time to first served chat
     request and idle RSS;
  3. non-streaming: rounds of c=1 latency, c=16 and c=64 load, arms
     interleaved within each load (A B C D A B C D ...);
  4. streaming: rounds of c=1 TTFT / gaps, c=16 and c=64 streams/s;
  5. 1,000 concurrent streams on a fresh instance of each arm: frames
     lost and peak RSS.

Every subprocess is stopped in a C{finally}.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable

from bench import REPO_ROOT
from bench import arms as armsmod
from bench.arms import ARMS, EXTRA_ARMS, Arm, Running
from bench.client import latency_run, probe_chat, stream_run
from bench.load import Loader, run_streams
from bench.payloads import request_body
from bench.procs import (CpuMeter, ProcessSet, RssSampler, Server, free_port, process_tree,
                         raise_fd_limit, tree_cpu_seconds, tree_rss_kib, wait_until)
from bench.stats import median, percentile
from bench.upstream import nginx_argv, nginx_binary, twisted_argv


#: One measurement of one arm: its result dict.
Measure = Callable[[Running], dict[str, Any]]


@dataclass
class Settings:
    """
    What one run does; L{quick} is the ~1 minute smoke run.
    """

    rounds: int = 3
    duration: float = 5.0
    c1_duration: float = 2.0
    concurrency: tuple[int, ...] = (16, 64)
    c1_streams: int = 15
    stream_chunks: int = 20
    stream_gap_ms: float = 10.0
    soak_streams: int = 1000
    soak_chunks: int = 20
    soak_gap_ms: float = 50.0
    startup_runs: int = 3
    use_nginx: bool = True
    use_wrk: bool = True
    arms: tuple[str, ...] = tuple(a.name for a in ARMS)
    keep_logs: bool = False

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        """
        Short durations and one round.
        """
        base: dict[str, Any] = dict(rounds=1, duration=1.0, c1_duration=1.0, c1_streams=5,
                                    startup_runs=1)
        base.update(overrides)
        return cls(**base)


def say(message: str) -> None:
    """
    Progress, on stderr (stdout carries the report).
    """
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Upstreams:
    """
    The upstream ports: non-streaming, paced stream, and the many-streams
    test's slower stream.
    """

    json_port: int
    stream_port: int
    soak_port: int
    json_kind: str
    twisted: Server
    nginx: Server | None = None

    @property
    def json_pid(self) -> int:
        """
        The process serving non-streaming requests.
        """
        return (self.nginx or self.twisted).pid


@dataclass
class Bench:
    """
    The state of one run.
    """

    settings: Settings
    workdir: Path
    procs: ProcessSet
    loader: Loader
    results: dict[str, Any] = field(default_factory=dict)

    # helpers

    def arms(self) -> list[Arm]:
        """
        The arms selected for this run.
        """
        return [a for a in ARMS + EXTRA_ARMS if a.name in self.settings.arms]

    def error(self, message: str) -> None:
        """
        Record (and show) a problem that did not stop the run.
        """
        say("ERROR: " + message)
        self.results.setdefault("errors", []).append(message)

    def arm_info(self, arm: Arm) -> dict[str, Any]:
        """
        The C{arms} entry of the results for C{arm}.
        """
        return self.results.setdefault("arms", {}).setdefault(
            arm.name, {"label": arm.label, "available": True})

    # phase 1

    def start_upstreams(self) -> Upstreams:
        """
        Start the Twisted upstream, and nginx when installed and wanted.
        """
        s = self.settings
        stream_port, soak_port = free_port(), free_port()
        serves = [(stream_port, s.stream_chunks, s.stream_gap_ms / 1000),
                  (soak_port, s.soak_chunks, s.soak_gap_ms / 1000)]
        nginx = nginx_binary() if s.use_nginx else None
        json_port = free_port()
        if nginx is None:
            serves.append((json_port, 1, 0.0))
        twisted = self.procs.spawn("upstream", twisted_argv(serves), stream_port, cwd=REPO_ROOT)
        body = request_body(False)
        wait_until(lambda: probe_chat(stream_port, body) == 200, 30, twisted)
        ng_server = None
        kind = "Twisted (bench/upstream.py)"
        if nginx is not None:
            (self.workdir / "nginx").mkdir(exist_ok=True)
            ng_server = self.procs.spawn("nginx", nginx_argv(nginx, self.workdir / "nginx",
                                                             json_port), json_port)
            wait_until(lambda: probe_chat(json_port, body) == 200, 30, ng_server)
            kind = f"nginx ({nginx}, 1 worker, return 200)"
        else:
            wait_until(lambda: probe_chat(json_port, body) == 200, 30, twisted)
        return Upstreams(json_port, stream_port, soak_port, kind, twisted, ng_server)

    # arms

    def start_arm(self, arm: Arm, upstream: int, upstream_pid: int | None = None
                  ) -> Running | None:
        """
        Start C{arm} against C{upstream} (served by C{upstream_pid}); None
        (recorded) if it fails.
        """
        info = self.arm_info(arm)
        if not info.get("available", True):
            return None
        try:
            running = armsmod.start(arm, upstream, self.procs, self.workdir, upstream_pid)
        except RuntimeError as e:
            self.error(f"{arm.name} did not start: {e}")
            info["available"] = False
            info.setdefault("note", "failed to start")
            return None
        if arm.kind != "direct":
            info["processes"] = max(info.get("processes", 0), running.processes)
        return running

    def start_arms(self, upstream: int, upstream_pid: int) -> list[Running]:
        """
        Every selected arm, started against C{upstream}.
        """
        started = []
        for arm in self.arms():
            running = self.start_arm(arm, upstream, upstream_pid)
            if running is not None:
                started.append(running)
        return started

    def stop_arms(self, running: list[Running]) -> None:
        """
        Stop the arms' servers and note how many processes each had at the end.
        """
        for r in running:
            if r.server is None:
                continue
            info = self.arm_info(r.arm)
            info["processes"] = max(info.get("processes", 0), len(process_tree(r.server.pid)))
            self.procs.stop(r.server)

    def note_workers(self) -> None:
        """
        Say so when an arm asked for workers but fewer processes served.
        """
        for arm in self.arms():
            info = self.arm_info(arm)
            seen = info.get("processes", 0)
            if arm.workers and info.get("available") and seen < arm.workers:
                info["note"] = (f"--workers {arm.workers} is accepted, but {seen} process "
                                "served (the option has no effect yet)")

    # phase 2

    def startup(self, upstreams: Upstreams) -> None:
        """
        Spawn-to-first-served-chat-request time and idle RSS.
        """
        runs: dict[str, list[float]] = {a.name: [] for a in self.arms() if a.kind != "direct"}
        rss: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(self.settings.startup_runs):
            for arm in self.arms():
                if arm.kind == "direct" or (arm.workers and i > 0):
                    continue
                running = self.start_arm(arm, upstreams.json_port)
                if running is None or running.server is None or running.startup_s is None:
                    continue
                runs[arm.name].append(running.startup_s)
                time.sleep(1.0)
                rss[arm.name].append(tree_rss_kib(running.server.pid))
                self.stop_arms([running])
        out: dict[str, dict[str, Any]] = {}
        for name, values in runs.items():
            if values:
                out[name] = {"runs_s": values, "median_s": median(values),
                             "idle_rss_kib": median(rss[name])}
                say(f"startup {name}: {out[name]['median_s']:.3f} s, idle RSS "
                    f"{(out[name]['idle_rss_kib'] or 0) / 1024:.1f} MB")
        self.results["startup"] = out

    # phases 3 and 4

    def loads(self, first: tuple[str, Measure], stream: bool) -> list[tuple[str, Measure]]:
        """
        C{first} (the c=1 timing), then throughput at each concurrency.
        """
        s = self.settings
        out = [first]
        for c in s.concurrency:
            out.append((f"c{c}", partial(self._throughput, conns=c, stream=stream)))
        return out

    def _throughput(self, running: Running, conns: int, stream: bool) -> dict[str, Any]:
        return self.loader.run(running.port, conns, self.settings.duration, stream)

    def interleaved(self, running: list[Running], loads: list[tuple[str, Measure]]
                    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """
        For each round, for each load, run it against every arm in turn.
        Returns raw results: arm -> load -> one dict per round.
        """
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {
            r.arm.name: {name: [] for name, _ in loads} for r in running}
        for rnd in range(self.settings.rounds):
            for load_name, measure in loads:
                for r in running:
                    cpu = tree_cpu_seconds(r.pid) if r.pid else None
                    try:
                        result = measure(r)
                    except Exception as e:  # noqa: BLE001 - one failed load is reported
                        self.error(f"round {rnd + 1} {load_name} {r.arm.name}: {e}")
                        continue
                    done = result.get("requests") or result.get("streams")
                    if cpu is not None and done and r.pid:
                        used = tree_cpu_seconds(r.pid) - cpu
                        result["cpu_us_per_req"] = used / done * 1e6
                    raw[r.arm.name][load_name].append(result)
                    say(f"round {rnd + 1} {load_name:>10} {r.arm.name:<12} " + _brief(result))
        return raw

    def nonstream(self, upstreams: Upstreams) -> None:
        """
        The non-streaming rounds.
        """
        s = self.settings
        body = request_body(False)
        running = self.start_arms(upstreams.json_port, upstreams.json_pid)
        try:
            c1: Measure = lambda r: _latency(r.port, body, s.c1_duration)  # noqa: E731
            raw = self.interleaved(running, self.loads(("c1", c1), stream=False))
        finally:
            self.stop_arms(running)
        self.results.setdefault("rounds", {})["nonstream"] = raw
        self.results["nonstream"] = {arm: _medians(per) for arm, per in raw.items()}

    def stream(self, upstreams: Upstreams) -> None:
        """
        The streaming rounds.
        """
        s = self.settings
        body = request_body(True)
        events = s.stream_chunks + 1
        running = self.start_arms(upstreams.stream_port, upstreams.twisted.pid)
        try:
            c1: Measure = lambda r: _streams(r.port, body, s.c1_streams, events)  # noqa: E731
            raw = self.interleaved(running, self.loads(("c1-stream", c1), stream=True))
        finally:
            self.stop_arms(running)
        self.results.setdefault("rounds", {})["stream"] = raw
        out = {}
        for arm, per in raw.items():
            merged = _medians(per)
            merged.update(merged.pop("c1-stream", {}))
            out[arm] = merged
        self.results["stream"] = out

    # phase 5

    def soak(self, upstreams: Upstreams) -> None:
        """
        1,000 concurrent streams against a fresh instance of each arm.
        """
        s = self.settings
        events = s.soak_chunks + 1
        timeout = s.soak_chunks * s.soak_gap_ms / 1000 + 60
        out = {}
        for arm in self.arms():
            running = self.start_arm(arm, upstreams.soak_port, upstreams.twisted.pid)
            if running is None:
                continue
            try:
                pid = running.pid or upstreams.twisted.pid
                time.sleep(0.5)
                idle = tree_rss_kib(pid)
                with RssSampler(pid) as sampler:
                    result = run_streams(running.port, s.soak_streams, events, timeout)
                result.update(rss_idle_kib=idle, rss_peak_kib=sampler.peak_kib,
                              rss_samples=sampler.samples)
                out[arm.name] = result
                say(f"{s.soak_streams} streams {arm.name:<12} completed {result['completed']}, "
                    f"peak concurrent {result['peak_receiving']}, frames lost "
                    f"{result['frames_lost']}, RSS peak {sampler.peak_kib / 1024:.1f} MB")
            except Exception as e:  # noqa: BLE001
                self.error(f"{s.soak_streams} streams {arm.name}: {e}")
            finally:
                self.stop_arms([running])
        self.results["soak"] = out


# measurements


def _latency(port: int, body: bytes, duration: float) -> dict[str, Any]:
    result = latency_run(port, body, duration)
    lat = sorted(result.latencies_ms)
    return {"tool": "python-socket", "requests": len(lat), "errors": result.errors,
            "rps": result.rps, "p50_ms": percentile(lat, 50, True),
            "p99_ms": percentile(lat, 99, True)}


def _streams(port: int, body: bytes, streams: int, events: int) -> dict[str, Any]:
    t = stream_run(port, body, streams, events)
    gaps = sorted(t.gaps_ms)
    return {"tool": "python-socket", "streams": len(t.ttft_ms), "errors": t.errors,
            "ttft_p50_ms": percentile(t.ttft_ms, 50), "ttft_p99_ms": percentile(t.ttft_ms, 99),
            "gap_p50_ms": percentile(gaps, 50, True), "gap_p99_ms": percentile(gaps, 99, True),
            "frames_lost": t.events_expected - t.events_received}


def _medians(per_load: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """
    Per load, the median over rounds of each numeric field (sums for
    errors and frames lost).
    """
    out: dict[str, Any] = {}
    for load, rounds in per_load.items():
        if not rounds:
            continue
        keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float))]
        merged: dict[str, Any] = {"tool": rounds[0].get("tool")}
        for key in keys:
            values = [r.get(key) for r in rounds]
            if key in ("errors", "frames_lost", "requests", "streams"):
                merged[key] = sum(v for v in values if v is not None)
            else:
                merged[key] = median(values)
        out[load] = merged
    return out


def _brief(result: dict[str, Any]) -> str:
    parts = []
    for key in ("rps", "p50_ms", "p99_ms", "ttft_p50_ms", "gap_p99_ms", "cpu_us_per_req", "errors",
                "frames_lost"):
        value = result.get(key)
        if value is not None:
            parts.append(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


# environment


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() \
        else "unknown"


def _git_revision() -> str:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    rev = out.stdout.strip() or "no commit"
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def meta(settings: Settings, loader: Loader, upstreams: Upstreams | None,
         workers: bool) -> dict[str, Any]:
    """
    What ran where, and the caveats the reader needs.
    """
    import os

    import twisted

    cpus = os.cpu_count() or 0
    nginx = nginx_binary()
    notes = [
        f"Machine: {cpus} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}, llmproxy {_git_revision()}.",
        f"Non-streaming upstream: {upstreams.json_kind if upstreams else '?'}; "
        "streaming upstream: Twisted (bench/upstream.py), always (paced SSE).",
        f"Load at c=16/64: {loader.tool}. c=1 latency and TTFT/gaps: a blocking-socket "
        "client in the harness process. 1,000 streams: the asyncio generator.",
        f"The load generator, the upstream and the server under test share {cpus} CPUs: "
        "absolute req/s are bounded by that; compare ratios within the run.",
    ]
    if not workers:
        notes.append("llmproxy --workers: not available (not in `python -m llmproxy --help`).")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": cpus,
        "upstream": upstreams.json_kind if upstreams else None,
        "load_tool": loader.tool,
        "nginx": _version([nginx, "-v"]) if nginx and settings.use_nginx else None,
        "wrk": _version([loader.wrk, "-v"]) if loader.wrk else None,
        "settings": asdict(settings),
        "notes": notes,
    }


def run(settings: Settings) -> dict[str, Any]:
    """
    The whole run; returns the results (without targets).
    """
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="llmproxy-bench-"))
    procs = ProcessSet(workdir, armsmod.bench_env())
    bench = Bench(settings, workdir, procs, Loader(workdir, settings.use_wrk))
    workers = armsmod.workers_available(armsmod.llmproxy_help())
    for arm in bench.arms():
        info = bench.arm_info(arm)
        if arm.workers and not workers:
            info.update(available=False, note="not available: no --workers in llmproxy --help")
    upstreams = None
    meter = CpuMeter()
    meter.start()
    try:
        upstreams = bench.start_upstreams()
        say(f"upstreams: json {upstreams.json_port} ({upstreams.json_kind}), stream "
            f"{upstreams.stream_port}, 1,000-stream {upstreams.soak_port}")
        bench.results["meta"] = meta(settings, bench.loader, upstreams, workers)
        bench.startup(upstreams)
        bench.nonstream(upstreams)
        bench.stream(upstreams)
        bench.soak(upstreams)
        bench.note_workers()
    finally:
        procs.stop_all()
        if settings.keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    bench.results.setdefault("meta", meta(settings, bench.loader, upstreams, workers))
    contention = meter.stop()
    bench.results["meta"]["contention"] = contention
    if contention["others_share"] > 0.05 or contention["loadavg_1m_at_start"] > 0.5:
        bench.results["meta"]["notes"].append(
            f"Other processes were busy: they used ~{contention['others_share']:.0%} of all "
            f"CPUs during the run (load average {contention['loadavg_1m_at_start']:.2f} at "
            "start); latencies and req/s are noisier for it, CPU µs per request much less.")
    return bench.results


__all__ = ["Bench", "Settings", "run", "say"]
