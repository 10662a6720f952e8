"""Audio files as a microphone: the daemon's :class:`~serd.daemon.AudioSource` over files.

Used by ``serd --once --publish`` (replay recordings through the daemon's event path), by
the bench (streaming throughput, fleets of simulated devices) and by tests.  ``speed`` 1.0
paces blocks in real time like a microphone; 0 hands them out as fast as they are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serd.decode import read_blocks


class ReplaySource:
    """Mono files, one after another (optionally looping), in blocks of ``block_seconds``."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        rate: int = 16000,
        *,
        block_seconds: float = 0.05,
        speed: float = 1.0,
        loop: bool = False,
        gap_seconds: float = 0.0,
        channels: int | None = None,
    ) -> None:
        """``channels``: None mixes each file to mono; a number keeps that many of each
        file's first channels apart, as a multi-channel microphone would deliver them."""
        if not paths:
            raise ValueError("ReplaySource needs at least one file")
        self.paths = [Path(p) for p in paths]
        self.rate = rate
        self.block = max(1, round(block_seconds * rate))
        self.speed = speed
        self.loop = loop
        self.channels = channels
        width = 1 if channels is None else channels
        self.gap = np.zeros((round(gap_seconds * rate), width), np.float32)
        self.is_open = False
        self.device_name: str | None = f"replay:{self.paths[0].name}"
        self.overflows = 0
        self.reopens = 0
        self.finished = False
        self._blocks: Iterator[npt.NDArray[np.float32]] | None = None
        self._pending = np.zeros((0, width), np.float32)
        self._t0 = 0.0
        self._samples = 0

    def _audio(self) -> Iterator[npt.NDArray[np.float32]]:
        while True:
            for p in self.paths:
                for block in read_blocks(p, self.rate, block_seconds=1.0,
                                         mix=self.channels is None):
                    yield block[:, None] if block.ndim == 1 else block[:, : self.channels]
                if self.gap.size:
                    yield self.gap
            if not self.loop:
                return

    def open(self) -> None:
        self._blocks = self._audio()
        self.is_open = True
        self._t0 = time.monotonic()
        self._samples = 0

    def close(self) -> None:
        self.is_open = False
        self._blocks = None

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        """The next (block, channels) array, or None when finished (after waiting
        ``timeout``)."""
        if self._blocks is None:
            return None
        while self._pending.shape[0] < self.block:
            nxt = next(self._blocks, None)
            if nxt is None:
                break
            self._pending = np.concatenate((self._pending, nxt))
        if self._pending.size == 0:
            self.finished = True
            time.sleep(min(timeout_seconds, 0.05))
            return None
        out, self._pending = self._pending[: self.block], self._pending[self.block :]
        self._samples += out.shape[0]
        if self.speed > 0:
            due = self._t0 + self._samples / (self.rate * self.speed)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return out
