"""``python -m jopt``: the ``jopt`` command."""

import sys

from jopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
