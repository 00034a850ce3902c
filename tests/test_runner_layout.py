"""The runner package keeps the project's size rule and its callers' API.

No class over 400 lines and no function over 80 in `mh_watchd/runner/` (read with `ast`,
nothing run), and `Runner`'s constructor and step methods keep the signatures the daemon and
the service call.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mh_watchd.runner
from mh_watchd.runner import IntakeResult, Runner, StepOutcome, original_path

RUNNER_DIR = Path(mh_watchd.runner.__file__).parent
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(RUNNER_DIR.glob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_runner_module_keeps_the_size_rule(path: Path) -> None:
    too_long: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{path.name}:{node.lineno} {node.name} is {lines} lines")
    assert too_long == []


def test_runner_keeps_its_public_names() -> None:
    assert {IntakeResult, Runner, StepOutcome, original_path} <= {
        getattr(mh_watchd.runner, name) for name in mh_watchd.runner.__all__
    }


SIGNATURES = {
    "__init__": "(self, *, client_factory, fs, journal, temp_dir, clock)",
    "intake": "(self, folder, root, rel_path, *, start_seconds, max_seconds, hash_now)",
    "upload": "(self, job, progress)",
    "create": "(self, job)",
    "poll": "(self, job)",
    "download": "(self, job, progress)",
    "deliver": "(self, job)",
    "file_failure": "(self, job, reason, *, request, service)",
    "restore_failed": "(self, job)",
}


@pytest.mark.parametrize("method", sorted(SIGNATURES))
def test_runner_method_keeps_its_signature(method: str) -> None:
    signature = inspect.signature(getattr(Runner, method))
    bare = signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )
    assert str(bare) == SIGNATURES[method]
