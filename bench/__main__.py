"""`python -m bench` (or `make bench`): every benchmark in turn; results land in bench/results/."""

from __future__ import annotations

import sys

from bench import detect_latency, poller_cost, upload_memory


def main() -> int:
    """Run each benchmark with its defaults; returns the first non-zero exit code, else 0."""
    for name, run in (
        ("upload_memory", upload_memory.main),
        ("poller_cost", poller_cost.main),
        ("detect_latency", detect_latency.main),
    ):
        print(f"== {name}", flush=True)
        code = run([])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
