"""``python -m aeserve``: the ``aeserve`` command."""

import sys

from aeserve.cli import main

sys.exit(main())
