"""
C{python -m bench [--quick] [--rounds N] [--duration S] ...}: run the
benchmark, print a Markdown report on stdout, write JSON to
C{bench/results/<timestamp>.json} and C{bench/results/latest.json}.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, NoReturn

from bench import RESULTS_DIR
from bench.arms import ARMS, EXTRA_ARMS
from bench.report import evaluate, markdown, write_json
from bench.runner import Settings, run, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark llmproxy against a direct upstream and a bare Twisted floor.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 1 s loads (~1-2 minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per c=16/64 load (default 5)")
    parser.add_argument("--c1-duration", type=float, help="seconds of c=1 latency per round")
    parser.add_argument("--streams", type=int, dest="soak_streams",
                        help="concurrent streams of the memory test (default 1000)")
    parser.add_argument("--arms", help="comma-separated subset of: "
                        + ", ".join(a.name for a in ARMS + EXTRA_ARMS))
    parser.add_argument("--no-nginx", action="store_true",
                        help="use the Twisted upstream even if nginx is installed")
    parser.add_argument("--no-wrk", action="store_true",
                        help="use the built-in load generator even if wrk is installed")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' logs and configs (path printed)")
    parser.add_argument("--no-write", action="store_true", help="do not write JSON results")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """
    L{Settings} from the command line.
    """
    overrides: dict[str, Any] = {}
    for name in ("rounds", "duration", "c1_duration", "soak_streams"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.arms:
        names = tuple(a.strip() for a in args.arms.split(",") if a.strip())
        unknown = set(names) - {a.name for a in ARMS + EXTRA_ARMS}
        if unknown:
            raise SystemExit(f"unknown arms: {', '.join(sorted(unknown))}")
        overrides["arms"] = names
    overrides.update(use_nginx=not args.no_nginx, use_wrk=not args.no_wrk,
                     keep_logs=args.keep_logs)
    settings = Settings.quick(**overrides) if args.quick else Settings(**overrides)
    if settings.rounds < 1 or settings.duration <= 0 or settings.c1_duration <= 0:
        raise SystemExit("--rounds must be >= 1 and durations > 0")
    return settings


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """
    Run, report, write; the exit status is 0 whatever the targets say
    (a MISS is a finding, not a failure), 1 if the run itself broke.
    """
    args = parse_args(argv)
    settings = settings_from(args)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = run(settings)
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        return 130
    targets = evaluate(results)
    print(markdown(results, targets))
    if not args.no_write:
        path = write_json(results, targets, RESULTS_DIR)
        say(f"wrote {path} and {RESULTS_DIR / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
