"""The code keeps a shape a newcomer can change safely: no class over 400 lines and no
function over 80 in the package (ruff's C901/PLR0912/PLR0915 cap their complexity)."""

from __future__ import annotations

import ast
from pathlib import Path

import mh_watchd

PACKAGE = Path(mh_watchd.__file__).resolve().parent
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80


def sizes() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                found.append((kind, f"{path.relative_to(PACKAGE)}:{node.name}", lines))
    return found


def test_no_class_over_400_lines_and_no_function_over_80() -> None:
    found = sizes()
    assert any(kind == "class" for kind, _, _ in found)  # the walk really saw the package
    too_big = [
        f"{kind} {name}: {lines} lines"
        for kind, name, lines in found
        if lines > (MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES)
    ]
    assert not too_big, "\n".join(too_big)
