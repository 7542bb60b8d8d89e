"""The layers import downwards only: ``ir/`` (``qdq_passes.ir``) imports nothing of the rest of
``qdq_passes``, and ``infra/`` nothing of the passes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute module a file imports (``from x import y`` gives ``x``), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(folder: Path, allowed: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for each import of ``qdq_passes`` outside ``allowed``."""
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in _imports(path):
            if (module == "qdq_passes" or module.startswith("qdq_passes.")) and not module.startswith(allowed):
                bad.append(f"{path.relative_to(folder)}:{line} imports {module}")
    return bad


def test_ir_imports_nothing_of_the_rest_of_qdq_passes():
    assert _violations(ROOT / "ir", ("qdq_passes.ir",)) == []


def test_infra_imports_only_ir_and_itself():
    allowed = ("qdq_passes.infra", "qdq_passes.ir", "qdq_passes.model_io", "qdq_passes.runtime")
    assert _violations(ROOT / "qdq_passes" / "infra", allowed) == []


@pytest.mark.parametrize("module", ["qdq_passes.passes", "qdq_passes.adaround"])
def test_the_checker_sees_a_violation(tmp_path, module):
    """The check itself can fail: a file importing upwards is reported."""
    (tmp_path / "bad.py").write_text(f"import onnx\nfrom {module} import x\nimport qdq_passes.ir.dialect\n",
                                     encoding="utf-8")
    assert _violations(tmp_path, ("qdq_passes.ir",)) == [f"bad.py:2 imports {module}"]


def test_adaround_modules_are_short_enough_to_read_in_one_sitting():
    """Every module of ``qdq_passes/adaround/`` under 350 lines, every function under 60, and no
    ``noqa: ANN`` (torch is imported where it is used, so every annotation can name its types)."""
    folder = ROOT / "qdq_passes" / "adaround"
    long = []
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 350:
            long.append(f"{path.name}: {len(text.splitlines())} lines")
        if "noqa: ANN" in text:
            long.append(f"{path.name}: noqa: ANN")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}: {node.name} has {node.end_lineno - node.lineno + 1} lines")
    assert long == []
