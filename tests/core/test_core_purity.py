"""`mh_watchd/core/` stays pure: stdlib imports only, no I/O, no clock, no processes, no output.

The check reads every module's source with `ast` (nothing is imported), so it covers whatever
modules exist, and names the file and line of each offence.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mh_watchd.core

CORE_DIR = Path(mh_watchd.core.__file__).parent
REPO_ROOT = CORE_DIR.parent.parent

# Modules that are standard library but reach the outside world, the clock or the console:
# any reference to something they define (a call, an attribute like os.environ) is an offence.
FORBIDDEN_MODULES: dict[str, str] = {
    "os": "touches the operating system",
    "time": "reads the clock",
    "subprocess": "runs processes",
    "shutil": "touches files",
    "socket": "opens sockets",
    "io": "opens files",
    "tempfile": "creates files",
    "glob": "lists directories",
    "logging": "logs (the core never logs)",
    "sqlite3": "opens databases",
}
FORBIDDEN_BUILTINS: dict[str, str] = {
    "open": "opens a file",
    "print": "writes to the console",
    "input": "reads the console",
    "breakpoint": "stops in a debugger",
}
# Methods that read the clock whatever object they hang on (datetime.now(), date.today()).
CLOCK_METHODS = frozenset({"now", "utcnow", "today"})
# pathlib's concrete paths do I/O; the core uses PurePosixPath.
CONCRETE_PATHS = frozenset({"Path", "PosixPath", "WindowsPath"})


def _core_modules() -> list[Path]:
    return sorted(CORE_DIR.rglob("*.py"))


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def _dotted(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _import_offence(node: ast.Import | ast.ImportFrom, package: str) -> Iterator[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            # A relative import: resolve it against the module's package.
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        modules = [module]
    else:
        modules = [alias.name for alias in node.names]
    for module in modules:
        top = module.split(".")[0]
        if module == "mh_watchd.core" or module.startswith("mh_watchd.core."):
            continue
        if top == "mh_watchd":
            yield f"imports {module}: the core may import only mh_watchd.core.*"
        elif top not in sys.stdlib_module_names:
            yield f"imports {module}: not in the standard library"


def find_offences(source: str, filename: str, package: str = "mh_watchd.core") -> list[str]:
    """Return "file:line: what" for every impurity in `source` (empty when pure)."""
    tree = ast.parse(source, filename=filename)
    offences: list[tuple[int, str]] = []
    # Local names bound to a forbidden module (import os as o) or to something from one
    # (from time import monotonic), and to pathlib's concrete classes.
    module_aliases: dict[str, str] = {}
    imported_names: dict[str, str] = {}

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            offences.extend((node.lineno, what) for what in _import_offence(node, package))
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    module_aliases[alias.asname or top] = top
                if alias.name == "pathlib":
                    module_aliases[alias.asname or "pathlib"] = "pathlib"
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            top = node.module.split(".")[0]
            for alias in node.names:
                local = alias.asname or alias.name
                if top in FORBIDDEN_MODULES:
                    if alias.name == "*":
                        offences.append((node.lineno, f"star-imports {node.module}"))
                    imported_names[local] = f"{node.module}.{alias.name}"
                elif node.module == "pathlib" and alias.name in CONCRETE_PATHS:
                    imported_names[local] = f"pathlib.{alias.name}"

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            root = _root(node)
            if isinstance(root, ast.Name) and root.id in module_aliases:
                module = module_aliases[root.id]
                # Name it by the module, not the local alias: "import time as t" -> time.time.
                name = module + _dotted(node)[len(root.id) :]
                if module == "pathlib":
                    if node.attr in CONCRETE_PATHS:
                        offences.append((node.lineno, f"uses {name}: use PurePosixPath"))
                else:
                    offences.append((node.lineno, f"uses {name}: {FORBIDDEN_MODULES[module]}"))
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id in imported_names
        ):
            full = imported_names[node.id]
            why = FORBIDDEN_MODULES.get(full.split(".")[0], "does I/O: use PurePosixPath")
            offences.append((node.lineno, f"uses {full}: {why}"))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                offences.append((node.lineno, f"calls {func.id}(): {FORBIDDEN_BUILTINS[func.id]}"))
            elif isinstance(func, ast.Attribute) and func.attr in CLOCK_METHODS:
                offences.append((node.lineno, f"calls {_dotted(func)}(): reads the clock"))
            elif _dotted(func) in {"builtins.open", "builtins.print"}:
                offences.append((node.lineno, f"calls {_dotted(func)}()"))

    return [f"{filename}:{line}: {what}" for line, what in sorted(set(offences))]


def _package_of(path: Path) -> str:
    # The package a relative import starts from: the directory, for modules and __init__ alike.
    return ".".join(path.relative_to(REPO_ROOT).parent.parts)


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    shown = path.relative_to(REPO_ROOT).as_posix()
    offences = find_offences(path.read_text(encoding="utf-8"), shown, _package_of(path))
    assert not offences, "the core must stay pure:\n" + "\n".join(offences)


def test_the_core_modules_this_test_covers_exist() -> None:
    names = {path.name for path in _core_modules()}
    assert {"intake.py", "naming.py", "settle.py", "errors.py"} <= names


BAD_SOURCES = [
    ("import httpx\n", 1, "imports httpx: not in the standard library"),
    ("from structlog import get_logger\n", 1, "imports structlog"),
    ("import mh_watchd.adapters.fs\n", 1, "the core may import only mh_watchd.core"),
    ("from ..adapters import fs\n", 1, "imports mh_watchd.adapters"),
    ("import os\n\nx = os.environ['HOME']\n", 3, "uses os.environ"),
    ("import os.path\ny = os.path.join('a', 'b')\n", 2, "uses os.path.join"),
    ("import time\n\n\ndef f():\n    return time.monotonic()\n", 5, "uses time.monotonic"),
    ("import time as t\nt.time()\n", 2, "uses time.time"),
    ("from time import monotonic\nmonotonic()\n", 2, "uses time.monotonic"),
    ("from os import getcwd as cwd\ncwd()\n", 2, "uses os.getcwd"),
    ("import subprocess\nsubprocess.run(['ls'])\n", 2, "uses subprocess.run"),
    ("def f(p):\n    return open(p).read()\n", 2, "calls open()"),
    ("print('hi')\n", 1, "calls print()"),
    ("import builtins\nbuiltins.open('x')\n", 2, "calls builtins.open()"),
    ("import datetime\nd = datetime.datetime.now()\n", 2, "calls datetime.datetime.now()"),
    ("from datetime import date\nd = date.today()\n", 2, "calls date.today()"),
    ("from pathlib import Path\np = Path('x')\n", 2, "uses pathlib.Path"),
    ("import pathlib\np = pathlib.Path('x').read_text()\n", 2, "uses pathlib.Path"),
    ("import logging\nlog = logging.getLogger(__name__)\n", 2, "uses logging.getLogger"),
]


@pytest.mark.parametrize(("source", "line", "words"), BAD_SOURCES)
def test_the_checker_names_file_and_line_of_each_offence(
    source: str, line: int, words: str
) -> None:
    offences = find_offences(source, "mh_watchd/core/bad.py")
    assert any(o.startswith(f"mh_watchd/core/bad.py:{line}: ") and words in o for o in offences), (
        offences
    )


GOOD_SOURCE = """
from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterator
from pathlib import PurePosixPath

from mh_watchd.core.errors import MediaError
from . import api
from .jobs import JobState


def f(p: PurePosixPath, now: float) -> float:
    return math.floor(now) + len(p.name)
"""


def test_the_checker_accepts_pure_code() -> None:
    assert find_offences(GOOD_SOURCE, "mh_watchd/core/good.py") == []
