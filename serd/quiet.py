"""Silence native libraries' own stderr lines under ``serd -q``.

LiteRT's C++ writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
file descriptor 2 when an interpreter is built; neither Python logging nor
``TF_CPP_MIN_LOG_LEVEL`` reaches it.  :func:`native_stderr_quiet` points descriptor 2 at
/dev/null for the duration of such a call when :func:`set_quiet` was called, and restores
it after, so nothing else (a later error, a crash report) is hidden.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet  # noqa: PLW0603  (one process-wide switch, set once by the command line)
    _quiet = quiet


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Discard what native code writes to descriptor 2 inside the block (when quiet)."""
    if not _quiet:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 to redirect
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
