"""`python -m genaccel ...` is the `genaccel` command (for environments whose scripts dir is not on PATH)."""

import sys

from .cli import main

sys.exit(main())
