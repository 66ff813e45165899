"""``python -m pdd.cli``: the same as the ``pdd`` console script."""

import sys

from pdd.cli import main

sys.exit(main())
