"""Notebooks read as the paper's argument: each code cell does one step in at most
MAX_CELL_LINES lines and defines no function, class or lambda (those live in resa_utils, tested).
The `parameters` cell is exempt from the length rule: papermill needs every parameter in that one
cell, one per line with its comment."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_CELL_LINES = 25


def code_cells(path: Path) -> list[tuple[int, str, bool]]:
    """(1-based code cell number, source, is the parameters cell)."""
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return [(i + 1, "".join(c["source"]), "parameters" in c.get("metadata", {}).get("tags", []))
            for i, c in enumerate(code)]


def cell_problems(source: str, max_lines: int = MAX_CELL_LINES) -> list[str]:
    """Why a cell breaks the rule: too long, or it defines a function, class or lambda."""
    out = []
    lines = [ln for ln in source.splitlines() if ln.strip()]
    if len(lines) > max_lines:
        out.append(f"{len(lines)} lines (max {max_lines})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(f"defines {node.name!r} (line {node.lineno})")
        elif isinstance(node, ast.Lambda):
            out.append(f"a lambda (line {node.lineno})")
    return out


def test_rule_can_fail():
    assert cell_problems("def f():\n    return 1\n")
    assert cell_problems("g = sorted(x, key=lambda v: v)\n")
    assert cell_problems("\n".join(f"x{i} = {i}" for i in range(26)))
    assert cell_problems("x = 1\ny = x + 1\n") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_cells_are_short_steps(path):
    bad = {n: p for n, src, is_params in code_cells(path)
           if (p := cell_problems(src, 10**6 if is_params else MAX_CELL_LINES))}
    assert not bad, f"{path.name}: code cells that break the rule: {bad}"
