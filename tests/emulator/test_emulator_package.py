"""The emulator is a product of its own: it leans on the core's API facts and nothing else of
the daemon, and the daemon's own parts never reach into it (only the CLI and the demo run it)."""

from __future__ import annotations

import ast
from pathlib import Path

import mh_watchd

PACKAGE = Path(mh_watchd.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_emulator_uses_only_the_core_of_the_daemon() -> None:
    for path in sorted((PACKAGE / "emulator").glob("*.py")):
        ours = {m for m in imported_modules(path) if m.startswith("mh_watchd")}
        outside = {m for m in ours if not m.startswith(("mh_watchd.core", "mh_watchd.emulator"))}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_only_the_cli_and_the_demo_run_the_emulator() -> None:
    users = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "emulator") in path.parents:
            continue
        if any(m.startswith("mh_watchd.emulator") for m in imported_modules(path)):
            users.add(path.relative_to(PACKAGE).as_posix())
    assert users <= {"cli.py", "demo.py"}, sorted(users)
    assert users, "the CLI no longer runs the emulator?"
