"""``python loadtest/bench [--quick] [--out docs/bench] ...``: see ``cli``."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a directory (python loadtest/bench): import this folder as the package `bench`.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]
    sys.path.insert(0, str(Path(here).parent))

from bench.cli import main

sys.exit(main())
