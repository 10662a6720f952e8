"""Which source files a computation depends on, for cache keys and fold keys.

:func:`source_files` follows the imports of the given modules recursively, within the
``serd`` and ``train`` packages (subpackages included), so a key built from the files it
returns changes whenever any code that the cached result depends on changes, wherever in
those packages that code lives.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path

_PACKAGES = ("serd", "train")


def _file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, module: str) -> set[str]:
    """The serd/train modules that ``module`` (source ``path``) imports, and the packages
    above them (whose ``__init__`` runs first)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            # ``from pkg import name``: name may be a submodule.
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in _PACKAGES:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


@cache
def source_files(*modules: str) -> tuple[tuple[str, Path], ...]:
    """(module name, source file) of ``modules`` and of every serd/train module they
    import, recursively, sorted by name."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _file(name)
        if path is None:  # a name imported from a module, not a module
            continue
        seen[name] = path
        todo.extend(_imports(path, name) - seen.keys())
    return tuple(sorted(seen.items()))


def source_hash(modules: Iterable[str]) -> str:
    """SHA-256 over the modules of :func:`source_files` (name and source)."""
    h = hashlib.sha256()
    for name, path in source_files(*sorted(modules)):
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
