"""``python -m framework``: see :mod:`framework.cli`."""
import sys

from framework.cli import main

sys.exit(main())
