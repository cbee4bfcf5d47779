"""``python -m linly_engine`` is the ``linly`` command."""

import sys

from linly_engine.cli import main

sys.exit(main())
