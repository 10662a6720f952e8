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
    double_talk_margin_db: float | None = None
    """null: mute whenever the agent speaks.  A number: not while the analysed channel is
    louder than the agent's channel minus this many dB (both speak at once, and the
    caller's voice dominates); it must exceed how far the agent's bleed lies below the
    agent's own channel, or bleed would pass for double talk."""

    def __post_init__(self) -> None:
        if self.double_talk_margin_db is not None:
            require(math.isfinite(self.double_talk_margin_db) and
                    0 < self.double_talk_margin_db <= 60, "double_talk_margin_db",
                    "must be 0..60 dB or null")
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
    """One analysed channel's muting: ``__call__(agent_audio, own_audio)`` per block (the
    agent channels' samples, 1-D or (n, k), and this channel's), then :meth:`mutes` for
    each of this channel's windows over the same samples."""

    def __init__(self, settings: CrosstalkSettings, sample_rate: int) -> None:
        self.settings = settings
        self.block = max(1, round(_BLOCK_SECONDS * sample_rate))
        # The energy gate's candidate test and noise floor, nothing of its segmenting.
        self._gate = EnergyGate(
            VadSettings(threshold_db=settings.threshold_db,
                        min_level_dbfs=settings.min_level_dbfs), _BLOCK_SECONDS)
        self._preroll = round(settings.preroll_seconds / _BLOCK_SECONDS)
        self._hangover = round(settings.hangover_seconds / _BLOCK_SECONDS)
        self._keep = round(_KEEP_SECONDS / _BLOCK_SECONDS)
        self.sample_rate = sample_rate
        self.reset()

    def reset(self) -> None:
        self._gate.reset()
        self._leftover = np.zeros((0, 2), np.float32)
        self._first = 0  # block index of _ref[0] / _own[0]
        # Per 10 ms block: the loudest agent level whose muting reaches it (-inf: none)
        # and this channel's own level.  A few blocks beyond the last one read are kept
        # for the hangover of the latest agent speech.
        self._ref = np.full(0, -np.inf)
        self._own = np.zeros(0)
        self._blocks = 0
        self.samples_in = 0
        self.agent_blocks = 0
        """10 ms blocks in which the agent was heard (for measurements)."""

    def __call__(self, agent: npt.NDArray[np.float32], own: npt.NDArray[np.float32]) -> None:
        a = np.asarray(agent, dtype=np.float32)
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        x = np.concatenate((a, np.asarray(own, dtype=np.float32).reshape(-1, 1)), axis=1)
        self.samples_in += x.shape[0]
        if self._leftover.shape[1] != x.shape[1]:
            self._leftover = np.zeros((0, x.shape[1]), np.float32)
        x = np.concatenate((self._leftover, x)) if self._leftover.shape[0] else x
        n = x.shape[0] // self.block
        self._leftover = x[n * self.block:].copy()
        if n == 0:
            return
        levels = [block_levels_db(np.ascontiguousarray(x[: n * self.block, j]).reshape(
            n, self.block)) for j in range(x.shape[1])]
        # Several agent channels: the loudest one speaks for them all.
        agent_db = np.max(levels[:-1], axis=0)
        b0 = self._blocks
        need = b0 + n + self._hangover - self._first
        if self._ref.size < need:
            self._ref = np.concatenate((self._ref, np.full(need - self._ref.size, -np.inf)))
        self._own = np.concatenate((self._own, levels[-1]))
        for i, loud in enumerate(self._gate.candidates(agent_db)):
            if loud:
                self.agent_blocks += 1
                lo = max(b0 + i - self._preroll, self._first) - self._first
                hi = b0 + i + self._hangover + 1 - self._first
                np.maximum(self._ref[lo:hi], agent_db[i], out=self._ref[lo:hi])
        self._blocks += n
        drop = self._blocks - self._keep - self._first
        if drop > 0:
            self._ref, self._own = self._ref[drop:], self._own[drop:]
            self._first += drop

    def muted_blocks(self, start: int, end: int) -> npt.NDArray[np.bool_]:
        """Per 10 ms block of the samples ``start:end``: muted or not."""
        lo = max(start // self.block - self._first, 0)
        hi = max(min(-(-end // self.block), self._blocks) - self._first, lo)
        ref = self._ref[lo:hi]
        muted = ref > -np.inf
        margin = self.settings.double_talk_margin_db
        if margin is not None:
            # This channel much louder than the agent's bleed could be: the caller speaks
            # too (double talk), and the window is the caller's voice.
            muted &= self._own[lo:hi] <= ref - margin
        return muted

    def mutes(self, start: int, end: int) -> bool:
        """True when the window ``start:end`` must not be classified."""
        blocks = self.muted_blocks(start, end)
        if blocks.size == 0:
            return False
        return float(blocks.mean()) > self.settings.max_muted_fraction
