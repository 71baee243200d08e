"""
C{python -m bench.adversary [--only bad|faults|stall|burst] [--json PATH]
[--verbose] [--keep-logs]}: run the adversarial checks of issue #10 against
llmproxy, print a Markdown summary on stdout (progress on stderr), and exit
0 only when every target holds.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn

from bench.adversary.report import exit_status, markdown, write_json
from bench.adversary.runner import PHASES, Settings, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.adversary",
        description="Bad requests, upstream faults, stalled readers and a burst of connects "
                    "against llmproxy (loopback only, about a minute).")
    parser.add_argument("--only", action="append", choices=PHASES,
                        help="run only this phase (repeatable)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every result here")
    parser.add_argument("--verbose", action="store_true",
                        help="show every case as it is judged, and every verdict in the summary")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the proxy's log and config (the path is printed)")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: object) -> NoReturn:
    # Turn SIGTERM into an exception so the finally clauses stop the proxy.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """
    Run, report, and return the exit status.
    """
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    phases = tuple(p for p in PHASES if p in args.only) if args.only else PHASES
    results = run(Settings(phases=phases, verbose=args.verbose, keep_logs=args.keep_logs))
    sys.stdout.write(markdown(results, args.verbose))
    if args.json is not None:
        write_json(results, args.json)
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
