"""
C{python -m llmproxy.capture}: read a capture file back.

  - C{show FILE [--request-id ID] [--session S]}: each request's timeline;
  - C{replay FILE --serve PORT [--fast]}: the captured upstream answers,
    served as a fake upstream;
  - C{to-test FILE --request-id ID [--out DIR]}: a trial test replaying
    one request in memory.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from llmproxy.capture.replay import serve_forever
from llmproxy.capture.timeline import read_capture, timeline
from llmproxy.capture.totest import write_test


def show(path: str, request_id: str | None, session: str | None, out: TextIO) -> int:
    """
    Print the timelines of the requests of C{path} that match.
    """
    requests, dropped = read_capture(path)
    chosen = [c for c in requests.values()
              if (request_id is None or c.request_id == request_id)
              and (session is None or c.session_id == session)]
    if not chosen:
        print(f"{path}: no request matches", file=sys.stderr)
        return 1
    out.write("\n\n".join(timeline(c) for c in chosen) + "\n")
    if dropped:
        out.write(f"\n{dropped} entries of this file were dropped: the disk was slower than "
                  "the traffic, so some requests are incomplete\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmproxy.capture",
                                description="Read an llmproxy wire capture back.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("show", help="each request's timeline")
    s.add_argument("file")
    s.add_argument("--request-id")
    s.add_argument("--session")
    r = sub.add_parser("replay", help="serve the captured upstream answers")
    r.add_argument("file")
    r.add_argument("--serve", type=int, required=True, metavar="PORT")
    r.add_argument("--interface", default="127.0.0.1")
    r.add_argument("--fast", action="store_true", help="no pauses between stream chunks")
    t = sub.add_parser("to-test", help="write a trial test replaying one request")
    t.add_argument("file")
    t.add_argument("--request-id", required=True)
    t.add_argument("--out", default=".", help="the folder to write the test into")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    if args.command == "show":
        return show(args.file, args.request_id, args.session, out)
    if args.command == "replay":
        return serve_forever(args.file, args.serve, args.interface, args.fast)
    return write_test(args.file, args.request_id, args.out, out)


if __name__ == "__main__":
    sys.exit(main())
