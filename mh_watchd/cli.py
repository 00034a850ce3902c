"""The `mh-watchd` command line: argparse subcommands mapped to exit codes. Nothing else."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    raise NotImplementedError
