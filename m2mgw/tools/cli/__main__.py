"""``python -m m2mgw.tools.cli``: the ``m2mgw`` command, as the tests run it."""

import sys

from m2mgw.tools.cli import main

sys.exit(main())
