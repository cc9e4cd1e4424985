"""``python -m danlu ...`` is the ``danlu`` command."""

import sys

from danlu.cli import main

sys.exit(main())
