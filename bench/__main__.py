"""`python -m bench [--code DIR] [NAME...]` (or `make bench`): every benchmark in turn, or the
NAMEs given; results land in bench/results/. `--code DIR` runs the daemon benchmarks against the
`mh_watchd` package in DIR (e.g. `git archive HEAD mh_watchd | tar -x -C DIR`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import (
    detect_latency,
    idle_cost,
    intake_latency,
    journal_scale,
    poller_cost,
    throughput,
    upload_memory,
)

# name -> (entry point, whether it runs the daemon as a subprocess and so takes --code)
BENCHMARKS: dict[str, tuple[Callable[[list[str] | None], int], bool]] = {
    "upload_memory": (upload_memory.main, False),
    "poller_cost": (poller_cost.main, False),
    "detect_latency": (detect_latency.main, False),
    "intake_latency": (intake_latency.main, True),
    "throughput": (throughput.main, True),
    "idle_cost": (idle_cost.main, True),
    "journal_scale": (journal_scale.main, True),
}


def main(argv: list[str] | None = None) -> int:
    """Run each chosen benchmark with its defaults; returns the first non-zero exit code, else 0."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--code", default=None, help="mh_watchd package dir for the daemon runs")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    for name in args.names or BENCHMARKS:
        run, takes_code = BENCHMARKS[name]
        print(f"== {name}", flush=True)
        code = run(["--code", args.code] if takes_code and args.code else [])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
