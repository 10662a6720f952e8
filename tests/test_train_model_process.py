"""serd-train all trains the shipped model in a process of its own: its result, its
exception, and its death (the out-of-memory killer) come back instead of a hang."""

from __future__ import annotations

import math
import os
import time

import pytest

from train.final import _ModelProcess


def test_the_result_comes_back() -> None:
    proc = _ModelProcess(abs, -2)
    assert proc.result() == 2
    proc.stop()


def test_the_exception_comes_back() -> None:
    proc = _ModelProcess(math.sqrt, -1.0)
    with pytest.raises(ValueError, match="math domain error"):
        proc.result()
    proc.stop()


def test_a_process_that_dies_is_an_error_not_a_hang() -> None:
    # os._exit leaves without an answer, as a process the kernel kills does.
    proc = _ModelProcess(os._exit, 9)
    with pytest.raises(RuntimeError, match=r"died with exit code 9.*parallel_folds=2"):
        proc.result()
    proc.stop()


def test_stop_ends_a_running_process() -> None:
    proc = _ModelProcess(time.sleep, 60)
    proc.stop()
    assert not proc._proc.is_alive()
