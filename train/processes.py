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
import multiprocessing.connection
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds to wait for a worker to end after SIGTERM, then after SIGKILL.
_END_SECONDS = 10.0


def spawned_pool(workers: int) -> ProcessPoolExecutor:
    """An executor of ``workers`` spawned processes, each of which ends when this process
    does (:func:`_end_with_parent`)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_end_with_parent)


def _end_with_parent() -> None:
    """In a worker: end it as soon as the process that started it is gone.  A worker of
    an executor waits for its next task on a queue whose writing end it holds itself, so
    when ``serd-train`` is killed (SIGKILL, the out-of-memory killer, a SIGTERM without a
    handler) its workers would otherwise train on to the end and then wait forever, each
    holding the corpus scan and a TensorFlow heap."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="serd-train-parent", daemon=True).start()


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


def answerable(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker, its exception made one that comes back.  The executor
    pickles a worker's exception as it is; one that pickles but does not unpickle (an
    ``__init__`` with other arguments than ``args``) breaks the executor's result thread
    in this process, and the task then reads as a worker that died (``BrokenProcessPool``:
    "killed: out of memory?"); one that does not pickle comes back as the pickling error.
    Either comes back instead as a RuntimeError naming it, its traceback the cause."""
    try:
        return fn(*args)
    except BaseException as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        raise


def died(what: str) -> RuntimeError:
    """The error for a worker process (``what``) that died without an answer."""
    return RuntimeError(f"{what} died without an answer (killed: out of memory?); fewer "
                        "folds side by side need less memory: --set parallel_folds=1")


class InProcess:
    """``fn(*args)`` in a spawned process of its own, started at once: the shipped model's
    training beside the folds (:func:`train.final.run_all`)."""

    def __init__(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self._what = what
        self._pool = spawned_pool(1)
        self._future = self._pool.submit(answerable, fn, *args)

    def result(self) -> Any:
        """``fn``'s result once it is done; raises its exception (the process's traceback
        as the cause), or RuntimeError when the process died without an answer."""
        try:
            return self._future.result()
        except BrokenProcessPool:
            raise died(f"the {self._what} process") from None

    def stop(self) -> None:
        """End the process (at once if it is still working) and reap it."""
        stop_now(self._pool)


def completed(futures: dict[Future[Any], T], beside: InProcess | None = None
              ) -> Iterator[tuple[T, Future[Any]]]:
    """``(tag, future)`` of each of ``futures`` as it completes.  With ``beside``, its
    failure is raised as soon as it happens (:meth:`InProcess.result`), rather than once
    every future here is done: the shipped model's training that dies a minute into
    ``serd-train all`` is reported then, not after an hour of folds."""
    waits: set[Future[Any]] = set(futures)
    if beside is not None:
        waits.add(beside._future)
    for future in as_completed(waits):
        if future in futures:
            yield futures[future], future
        elif future.exception() is not None:
            assert beside is not None
            beside.result()  # raises, with its one-line advice
