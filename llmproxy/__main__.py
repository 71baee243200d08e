"""
C{python -m llmproxy [options]} is C{twistd -n llmproxy [options]};
C{python -m llmproxy check [options]} is C{twistd -n llmproxy --check
[options]} (L{llmproxy.check}).
"""

import sys

from twisted.scripts.twistd import run


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["check"]:
        args = ["--check", *args[1:]]
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "llmproxy", *args]
    run()


if __name__ == "__main__":
    main()
