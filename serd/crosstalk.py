"""Bleed muting: the agent's channel silences the analysed channels while the agent speaks.

On a call the agent's own voice reaches the caller's channel too (the telephone's
sidetone and line echo, a headset's acoustic leak), some 15 to 30 dB down.  The caller's
gate cannot tell that bleed from the caller: left alone, the agent's voice would be
classified under the caller's name, which is exactly what must not happen (an employee's
emotions, see docs/lawful-use.md).  The agent's channel is clean of the caller by
comparison, so it says reliably when the agent is speaking.

:class:`Crosstalk` reads the agent channel(s) in 10 ms blocks: a block is agent speech when
it is ``threshold_db`` above that channel's tracked noise floor and above
``min_level_dbfs`` (the energy gate's own test, :class:`serd.gate.EnergyGate`, without its
minimum duration, so muting starts at the first loud block).  Each such block mutes the
stretch from ``preroll_seconds`` before it to ``hangover_seconds`` after it.  A window of an
analysed channel whose audio is muted for more than ``max_muted_fraction`` of its length is
not classified at all (:class:`serd.pipeline.Pipeline` asks :meth:`Crosstalk.mutes`): the
audio itself is left untouched, so the analysed channel's noise floor and segmentation see
the real line.  Only the agent channel's levels are read here; its audio is never kept.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serd.gate import EnergyGate, VadSettings, block_levels_db
from serd.validate import require

_BLOCK_SECONDS = 0.01
# Muted stretches are remembered this long (windows are judged well within it).
_KEEP_SECONDS = 60.0


@dataclass(frozen=True)
class CrosstalkSettings:
    """``audio.bleed_mute``: muting the analysed channels while an agent channel speaks."""

    enabled: bool = True
    """Mute while the agent speaks (takes effect only when a channel has the agent role)."""
    threshold_db: float = 9.0
    """The agent speaks when its channel is this many dB above its tracked noise floor ..."""
    min_level_dbfs: float = -50.0
    """... and louder than this (dB relative to full scale)."""
    preroll_seconds: float = 0.1
    """Muting starts this long before the first loud block of the agent."""
    hangover_seconds: float = 0.3
    """Muting lasts this long after the agent's last loud block (echo tails, word gaps)."""
    max_muted_fraction: float = 0.0
    """A window of an analysed channel muted for more than this share of its length is
    not classified; 0 = any muted audio in a window keeps it from the classifier."""

    def __post_init__(self) -> None:
        for name in ("threshold_db", "min_level_dbfs", "preroll_seconds", "hangover_seconds",
                     "max_muted_fraction"):
            value = getattr(self, name)
            require(math.isfinite(value), name, f"must be a finite number, got {value}")
        require(self.threshold_db > 0, "threshold_db", "must be > 0 dB")
        require(-120 <= self.min_level_dbfs <= 0, "min_level_dbfs", "must be in -120..0 dBFS")
        require(0 <= self.preroll_seconds <= 1, "preroll_seconds", "must be 0..1 s")
        require(0 <= self.hangover_seconds <= 5, "hangover_seconds", "must be 0..5 s")
        require(0 <= self.max_muted_fraction < 1, "max_muted_fraction", "must be in 0..1 "
                "(1 would never mute)")


class Crosstalk:
    """``__call__(agent_audio)`` per block (the agent channels' samples, 1-D or (n, k)),
    then :meth:`mutes` for each window of an analysed channel over the same samples."""

    def __init__(self, settings: CrosstalkSettings, sample_rate: int) -> None:
        self.settings = settings
        self.block = max(1, round(_BLOCK_SECONDS * sample_rate))
        # The energy gate's candidate test and noise floor, nothing of its segmenting.
        self._gate = EnergyGate(
            VadSettings(threshold_db=settings.threshold_db,
                        min_level_dbfs=settings.min_level_dbfs), _BLOCK_SECONDS)
        self._preroll = round(settings.preroll_seconds * sample_rate)
        self._hangover = round(settings.hangover_seconds * sample_rate)
        self._keep = round(_KEEP_SECONDS * sample_rate)
        self.sample_rate = sample_rate
        self.reset()

    def reset(self) -> None:
        self._gate.reset()
        self._leftover = np.zeros((0, 1), np.float32)
        self._blocks = 0
        self._spans: deque[list[int]] = deque()  # [start, end) sample ranges, merged
        self.samples_in = 0
        self.agent_blocks = 0
        """10 ms blocks in which the agent was heard (for health and measurements)."""

    @property
    def agent_seconds(self) -> float:
        return self.agent_blocks * self.block / self.sample_rate

    def __call__(self, audio: npt.NDArray[np.float32]) -> None:
        x = np.asarray(audio, dtype=np.float32)
        x = x.reshape(-1, 1) if x.ndim == 1 else x
        self.samples_in += x.shape[0]
        if self._leftover.shape[1] != x.shape[1]:
            self._leftover = np.zeros((0, x.shape[1]), np.float32)
        x = np.concatenate((self._leftover, x)) if self._leftover.shape[0] else x
        n = x.shape[0] // self.block
        self._leftover = x[n * self.block:].copy()
        if n == 0:
            return
        blocks = x[: n * self.block]
        # Several agent channels: the loudest one counts, each against its own floor would
        # need a gate each; one floor over the loudest is enough to say "an agent speaks".
        levels = np.max([block_levels_db(np.ascontiguousarray(
            blocks[:, j].reshape(n, self.block))) for j in range(blocks.shape[1])], axis=0)
        for i, loud in enumerate(self._gate.candidates(levels)):
            if loud:
                self.agent_blocks += 1
                b = self._blocks + i
                self._mark(b * self.block - self._preroll,
                           (b + 1) * self.block + self._hangover)
        self._blocks += n
        horizon = self.samples_in - self._keep
        while self._spans and self._spans[0][1] < horizon:
            self._spans.popleft()

    def _mark(self, start: int, end: int) -> None:
        start = max(0, start)
        if self._spans and start <= self._spans[-1][1]:
            self._spans[-1][1] = max(self._spans[-1][1], end)
        else:
            self._spans.append([start, end])

    def muted_samples(self, start: int, end: int) -> int:
        """How many of the samples ``start:end`` (since the last reset) are muted."""
        total = 0
        for a, b in self._spans:
            if b <= start:
                continue
            if a >= end:
                break
            total += min(b, end) - max(a, start)
        return total

    def mutes(self, start: int, end: int) -> bool:
        """True when the window ``start:end`` must not be classified."""
        if end <= start:
            return False
        return self.muted_samples(start, end) > self.settings.max_muted_fraction * (end - start)
