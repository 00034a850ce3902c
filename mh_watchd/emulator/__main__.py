"""`python -m mh_watchd.emulator [options]`: the emulator without the console script."""

from __future__ import annotations

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
