"""``python -m mdctr.cli``."""

import sys

from mdctr.cli import main

sys.exit(main())
