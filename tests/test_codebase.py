"""The codebase stays readable in an afternoon: no function in bnexp/ over 60 lines (a longer
one is a sign that it does two jobs). Import cycles: tests/test_imports.py."""

from __future__ import annotations

import ast
from pathlib import Path

BNEXP = Path(__file__).parents[1] / "bnexp"
MAX_LINES = 60


def test_no_function_in_bnexp_is_over_60_lines() -> None:
    long = []
    for path in sorted(BNEXP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(BNEXP.parent)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)
