"""``python -m m2mgw.tools.terminal``: the ``m2mgw-terminal`` command."""

from m2mgw.tools.terminal import main

main()
