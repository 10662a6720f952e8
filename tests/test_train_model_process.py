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


class _TwoArgError(Exception):
    """Pickles, but does not unpickle: ``__init__`` wants other arguments than ``args``."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def _raise_two_arg_error() -> None:
    raise _TwoArgError("fold 3", "bad things")


def test_an_exception_that_does_not_unpickle_is_named_not_taken_for_a_death() -> None:
    proc = InProcess("test", _raise_two_arg_error)
    with pytest.raises(RuntimeError, match=r"_TwoArgError: fold 3: bad things") as raised:
        proc.result()
    assert "died" not in str(raised.value)
    assert "_TwoArgError" in str(raised.value.__cause__)  # the worker's traceback
    proc.stop()


def _state(pid: int) -> str:
    """A process's state letter from /proc ('' once it is gone; 'Z' while unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


_KILLED_PARENT = """
import os, signal, sys, time
from train.processes import InProcess, spawned_pool
model = InProcess("test", time.sleep, 120)
folds = spawned_pool(2)
futures = [folds.submit(time.sleep, 120) for _ in range(2)]
time.sleep(1)
pids = [p.pid for p in model._pool._processes.values()] + [p.pid for p in folds._processes.values()]
with open(sys.argv[1], "w") as f:
    f.write(" ".join(map(str, pids)))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_end_when_serd_train_is_killed(tmp_path) -> None:
    """serd-train killed outright (SIGKILL, the out-of-memory killer): its workers, the
    model's and the folds', end too instead of training on and then waiting forever."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # The pids through a file: a worker left behind would hold a pipe open.
    out = tmp_path / "pids"
    subprocess.run([sys.executable, "-c", _KILLED_PARENT, str(out)], timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    pids = [int(p) for p in out.read_text().split()]
    assert len(pids) == 3, pids
    t0 = time.time()
    while any(_state(p) not in ("", "Z") for p in pids) and time.time() - t0 < 20:
        time.sleep(0.2)
    alive = [p for p in pids if _state(p) not in ("", "Z")]
    for p in alive:  # do not leave them behind when the test fails
        os.kill(p, 9)
    assert not alive


_TERMINATED = """
import sys, tempfile, time
import train.__main__ as cli
from train.processes import InProcess

def fake_main(argv):
    with tempfile.TemporaryDirectory(prefix="serd-final-") as tmp:
        proc = InProcess("test", time.sleep, 120)
        print(tmp, " ".join(str(p.pid) for p in proc._pool._processes.values()), flush=True)
        try:
            return proc.result()
        finally:
            proc.stop()

cli._main = fake_main
sys.exit(cli.main([]))
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_sigterm_cleans_up_as_ctrl_c_does() -> None:
    """``kill`` (SIGTERM) on serd-train: the worker is stopped and the staging folder
    removed, not left behind as Python's default action for SIGTERM would."""
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    proc = subprocess.Popen([sys.executable, "-c", _TERMINATED], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    tmp, *pids = proc.stdout.readline().split()
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    time.sleep(0.5)
    alive = [int(p) for p in pids if _state(int(p)) not in ("", "Z")]
    for p in alive:  # do not leave them behind when the test fails
        os.kill(p, 9)
    assert code == 128 + signal.SIGTERM
    assert not Path(tmp).exists()
    assert not alive


def test_the_model_s_death_is_reported_while_the_folds_still_run() -> None:
    """``serd-train all`` waits for the folds with the model's process beside them: the
    model's death is raised as it happens, not after the last fold (up to an hour)."""
    from train.processes import completed  # noqa: PLC0415

    pool = spawned_pool(2)
    folds = {pool.submit(time.sleep, 60): "a", pool.submit(time.sleep, 60): "b"}
    model = InProcess("test", os._exit, 9)
    t0 = time.time()
    try:
        with pytest.raises(RuntimeError, match=r"test process died"):
            for _ in completed(folds, model):
                pass
        assert time.time() - t0 < 30
    finally:
        stop_now(pool)
        model.stop()


def test_completed_yields_every_fold_and_a_model_that_succeeds_is_no_error() -> None:
    from train.processes import completed  # noqa: PLC0415

    pool = spawned_pool(2)
    folds = {pool.submit(abs, -i): i for i in range(3)}
    model = InProcess("test", abs, -5)
    try:
        got = {tag: f.result() for tag, f in completed(folds, model)}
        assert got == {0: 0, 1: 1, 2: 2}
        assert model.result() == 5
    finally:
        pool.shutdown()
        model.stop()
