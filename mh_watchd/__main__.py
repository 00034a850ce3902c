"""`python -m mh_watchd` runs the same command line as the `mh-watchd` console script."""

from mh_watchd.cli import main

raise SystemExit(main())
