"""serd-train all trains the shipped model in a process of its own, beside the CV folds
in theirs (train/processes.py): a result, an exception, and a death (the out-of-memory
killer) come back instead of a hang, and a failure ends the rest at once."""

from __future__ import annotations

import math
import os
import time

import pytest

from train.processes import InProcess, spawned_pool, stop_now


def test_the_result_comes_back() -> None:
    proc = InProcess("test", abs, -2)
    assert proc.result() == 2
    proc.stop()


def test_the_exception_comes_back(capfd: pytest.CaptureFixture[str]) -> None:
    proc = InProcess("test", math.sqrt, -1.0)
    with pytest.raises(ValueError, match="math domain error") as raised:
        proc.result()
    # Raised here with the process's traceback as its cause ...
    assert "Traceback" in str(raised.value.__cause__)
    proc.stop()
    # ... and not printed by the process as well: serd-train prints a CorpusError from
    # the model's training as one line, which a traceback above it would belie.
    assert "Traceback" not in capfd.readouterr().err


def test_a_process_that_dies_is_an_error_not_a_hang() -> None:
    # os._exit leaves without an answer, as a process the kernel kills does.
    proc = InProcess("test", os._exit, 9)
    with pytest.raises(RuntimeError, match=r"test process died.*parallel_folds=1"):
        proc.result()
    proc.stop()


def test_stop_ends_a_running_process() -> None:
    proc = InProcess("test", time.sleep, 60)
    t0 = time.time()
    while not proc._future.running() and time.time() - t0 < 60:
        time.sleep(0.1)
    procs = list(proc._pool._processes.values())
    proc.stop()
    _wait_reaped(procs, t0)


def test_a_failed_fold_stops_the_other_folds_at_once() -> None:
    """``CrossValidation.in_processes`` on an error: folds not started are cancelled and
    running ones end now, instead of the executor's exit waiting for all of them."""
    pool = spawned_pool(2)
    futures = [pool.submit(time.sleep, 60) for _ in range(3)]
    t0 = time.time()
    while not all(f.running() for f in futures[:2]) and time.time() - t0 < 60:
        time.sleep(0.1)
    procs = list(pool._processes.values())
    stop_now(pool)
    # never run: cancelled, or failed with the pool that was ended under it
    assert futures[2].cancelled() or futures[2].exception(timeout=10) is not None
    _wait_reaped(procs, t0)


def _wait_reaped(procs: list, t0: float) -> None:
    """The processes ended, not left to sleep out their minute (reaped by stop_now or the
    executor's own thread, whichever polls first, hence the short wait)."""
    while any(p.is_alive() for p in procs) and time.time() - t0 < 50:
        time.sleep(0.1)
    assert not any(p.is_alive() for p in procs)
