"""`mh-watchd emulator`: its options and its foreground run until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .options import EmulatorOptions

EXIT_OK = 0
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options (defaults as in the contract) to `parser`."""
    defaults = EmulatorOptions()
    parser.add_argument("--host", default=defaults.host, help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port; 0 picks a free one")
    parser.add_argument(
        "--token", default=None, help="the one accepted API key (default: any non-empty bearer)"
    )
    parser.add_argument("--credits", type=int, default=defaults.credits, help="starting balance")
    parser.add_argument(
        "--queue-seconds", type=float, default=defaults.queue_seconds, help="time spent queued"
    )
    parser.add_argument(
        "--render-seconds",
        type=float,
        default=defaults.render_seconds,
        help="time spent rendering (at least)",
    )
    parser.add_argument(
        "--url-ttl-seconds",
        type=float,
        default=defaults.url_ttl_seconds,
        help="lifetime of upload and download URLs",
    )
    parser.add_argument(
        "--tier", default=defaults.tier, help="plan: free (576 px), creator (1024), pro (1472)"
    )
    parser.add_argument(
        "--faults", default=None, help="fault plan as a JSON string, or @FILE holding one"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for fault rates")


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Return the options `args` describe; ValueError for a bad value (faults JSON, file)."""
    faults: dict[str, Any] | None = None
    if args.faults:
        text = args.faults
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"--faults: cannot read {text[1:]}: {exc.strerror}") from exc
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--faults is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError("--faults must be a JSON object with 'rules'")
        faults = loaded
    return EmulatorOptions(
        host=args.host,
        port=args.port,
        token=args.token,
        credits=args.credits,
        queue_seconds=args.queue_seconds,
        render_seconds=args.render_seconds,
        url_ttl_seconds=args.url_ttl_seconds,
        tier=args.tier,
        faults=faults,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, printing the base URL as stdout's first line.

    Returns 0 after a signal, 64 for bad option values, 69 when the port cannot be bound.
    Must run in the main thread (it installs signal handlers, restored on return).
    """
    try:
        from .server import EmulatorServer  # PyAV and the server load only when one runs

        server = EmulatorServer(options_from_args(args))
    except ValueError as exc:
        print(f"mh-watchd emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        try:
            server.start()
        except OSError as exc:
            print(
                f"mh-watchd emulator: cannot listen on {args.host}:{args.port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        try:
            print(server.base_url, flush=True)
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m mh_watchd.emulator [options]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="mh-watchd emulator", description="Magic Hour API emulator"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
