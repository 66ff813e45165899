"""``python -m pdd.cli``: the same as the ``pdd`` console script."""

import sys

from pdd.cli import run

sys.exit(run())
