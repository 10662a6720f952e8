"""The device package never depends on the training package."""

from __future__ import annotations

import ast
from pathlib import Path

SERD = Path(__file__).resolve().parent.parent / "serd"


def test_serd_does_not_import_train() -> None:
    offenders = []
    for path in sorted(SERD.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n == "train" or n.startswith("train.")]
    assert not offenders, offenders
