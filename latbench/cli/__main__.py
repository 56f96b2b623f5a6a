"""`python -m latbench.cli` (torchrun starts distributed searches this way)."""

import sys

from latbench.cli import main

sys.exit(main())
