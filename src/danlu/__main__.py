"""``python -m danlu ...`` is the ``danlu`` command."""

import sys

from danlu.cli import main

if __name__ == "__main__":
    sys.exit(main())
