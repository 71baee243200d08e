"""
C{python -m llmproxy [options]} is C{twistd -n llmproxy [options]}.
"""

import sys

from twisted.scripts.twistd import run


def main() -> None:
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "llmproxy", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
