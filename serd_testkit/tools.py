"""The external programs the kit starts, and the one error for a missing one."""

from __future__ import annotations

import shutil


class ToolMissingError(RuntimeError):
    """A program the kit needs is not installed: tests skip, benches stop, with this text."""


def require(tools: tuple[str, ...], what: str, packages: str) -> None:
    """Raise :class:`ToolMissingError` naming the missing ``tools`` and the Debian packages."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ToolMissingError(f"{what} needs {', '.join(missing)} (apt-get install {packages})")
