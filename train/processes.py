"""Work in spawned processes for ``serd-train``: CV folds side by side, and the shipped
model beside them.

Both use :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method
(TensorFlow does not survive fork), not a ``multiprocessing.Pool``: when the kernel's
out-of-memory killer takes a Pool's worker, the Pool starts another and waits for the
lost task forever (a three-fold ``serd-train all`` beside other jobs did just that), while
the executor marks itself broken and every waiting result raises ``BrokenProcessPool``.
A worker's exception comes back with the worker's traceback as its cause, and the worker
prints nothing itself, so ``serd-train`` can still print a ``CorpusError`` as one line.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

# Seconds to wait for a worker to end after SIGTERM, then after SIGKILL.
_END_SECONDS = 10.0


def spawned_pool(workers: int) -> ProcessPoolExecutor:
    """An executor of ``workers`` spawned processes."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def stop_now(pool: ProcessPoolExecutor) -> None:
    """Cancel the tasks not started and end the running ones now; the executor's own
    shutdown would wait for every queued and running task first, which can be most of an
    hour.  (The executor has no public way to end a running task before Python 3.14's
    ``terminate_workers``, hence its private process table, read defensively.)"""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=_END_SECONDS)
        if proc.is_alive():  # still starting up, or busy in C code: no more waiting
            proc.kill()
            proc.join(timeout=_END_SECONDS)


class InProcess:
    """``fn(*args)`` in a spawned process of its own, started at once: the shipped model's
    training beside the folds (:func:`train.final.run_all`)."""

    def __init__(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self._what = what
        self._pool = spawned_pool(1)
        self._future = self._pool.submit(fn, *args)

    def result(self) -> Any:
        """``fn``'s result once it is done; raises its exception (the process's traceback
        as the cause), or RuntimeError when the process died without an answer."""
        try:
            return self._future.result()
        except BrokenProcessPool:
            raise RuntimeError(
                f"the {self._what} process died without an answer (killed: out of "
                "memory?); fewer folds side by side need less memory: "
                "--set parallel_folds=1") from None

    def stop(self) -> None:
        """End the process (at once if it is still working) and reap it."""
        stop_now(self._pool)
