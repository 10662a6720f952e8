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
stretch from ``preroll_seconds`` before it to ``hangover_seconds`` after it, and muted
audio of the analysed channel is replaced, before its pipeline sees it, by noise at that
channel's own noise floor: the agent's voice never reaches its features or its classifier,
and to the gate the agent's turn is a pause in the line (so a caller's short reply between
two of the agent's turns is an utterance of its own).  With ``double_talk_margin_db`` set,
a block in which the analysed channel is that much louder than the agent's bleed could be
is the caller speaking over the agent, and is kept.  Only levels are read from the agent's
channel; its audio is never kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serd.gate import EnergyGate, VadSettings, block_levels_db
from serd.validate import require

_BLOCK_SECONDS = 0.01


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
        for name in ("threshold_db", "min_level_dbfs", "preroll_seconds", "hangover_seconds"):
            value = getattr(self, name)
            require(math.isfinite(value), name, f"must be a finite number, got {value}")
        require(self.threshold_db > 0, "threshold_db", "must be > 0 dB")
        require(-120 <= self.min_level_dbfs <= 0, "min_level_dbfs", "must be in -120..0 dBFS")
        require(0 <= self.preroll_seconds <= 1, "preroll_seconds", "must be 0..1 s")
        require(0 <= self.hangover_seconds <= 5, "hangover_seconds", "must be 0..5 s")


class Crosstalk:
    """One analysed channel's muting: ``__call__(agent_audio, own_audio) -> own_audio``
    per block (the agent channels' samples, 1-D or (n, k), and this channel's), the
    stretches where the agent speaks replaced by noise at this channel's own noise floor;
    ``flush()`` at the end of the stream returns what is still held.

    The output lags the input by ``preroll_seconds`` (and part of a 10 ms block): a block
    leaves only once every block that could mute it has been read, so the result does not
    depend on how the stream was cut into blocks.  Sample positions are kept: the n-th
    sample out is the n-th sample in.
    """

    def __init__(self, settings: CrosstalkSettings, sample_rate: int, seed: int = 0) -> None:
        self.settings = settings
        self.block = max(1, round(_BLOCK_SECONDS * sample_rate))
        # The energy gate's candidate test and noise floor, nothing of its segmenting: one
        # for the agent's speech, one to know this channel's noise floor.  No confirm
        # stage: it would load the speech check's weights for nothing (and a missing file
        # would stop serd even with vad.confirm: none).
        vad = VadSettings(threshold_db=settings.threshold_db,
                          min_level_dbfs=settings.min_level_dbfs, confirm="none")
        self._agent_gate = EnergyGate(vad, _BLOCK_SECONDS)
        self._own_gate = EnergyGate(vad, _BLOCK_SECONDS)
        self._preroll = round(settings.preroll_seconds / _BLOCK_SECONDS)
        self._hangover = round(settings.hangover_seconds / _BLOCK_SECONDS)
        self.sample_rate = sample_rate
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        self._agent_gate.reset()
        self._own_gate.reset()
        self._rng = np.random.default_rng(self._seed)
        self._partial = np.zeros((0, 2), np.float32)  # read, not a whole block yet
        self._held = np.zeros(0, np.float32)  # this channel's whole blocks not yet out
        # Per block from the first one held: the loudest agent level whose muting reaches
        # it (-inf: none; runs ``hangover`` blocks past the last one read), this channel's
        # level and its noise floor then.
        self._ref = np.full(self._hangover, -np.inf)
        self._own_db = np.zeros(0)
        self._floor_db = np.zeros(0)
        self._last_muted = False
        self.samples_in = 0
        self.muted_samples = 0
        """Samples of this channel replaced while the agent spoke (for health)."""

    @property
    def muted_seconds(self) -> float:
        return self.muted_samples / self.sample_rate

    def __call__(self, agent: npt.NDArray[np.float32],
                 own: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        a = np.asarray(agent, dtype=np.float32)
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        x = np.concatenate((a, np.asarray(own, dtype=np.float32).reshape(-1, 1)), axis=1)
        self.samples_in += x.shape[0]
        if self._partial.shape[1] != x.shape[1]:
            self._partial = np.zeros((0, x.shape[1]), np.float32)
        x = np.concatenate((self._partial, x)) if self._partial.shape[0] else x
        n = x.shape[0] // self.block
        self._partial = x[n * self.block:].copy()
        if n:
            self._read(x[: n * self.block], n)
        # Blocks whose preroll window has been read in full may leave.
        return self._release(max(0, self._own_db.size - self._preroll))

    def flush(self) -> npt.NDArray[np.float32]:
        """End of stream: everything still held (the last part block as the block before)."""
        out = self._release(self._own_db.size)
        tail = self._partial[:, -1].copy()
        self._partial = self._partial[:0]
        if tail.size and self._last_muted:
            tail = self._noise(tail.size, np.full(1, self._own_gate.noise_floor_db or -90.0),
                               tail.size)
            self.muted_samples += tail.size
        return np.concatenate((out, tail))

    def _read(self, x: npt.NDArray[np.float32], n: int) -> None:
        levels = [block_levels_db(np.ascontiguousarray(x[:, j]).reshape(n, self.block))
                  for j in range(x.shape[1])]
        # Several agent channels: the loudest one speaks for them all.
        agent_db = np.max(levels[:-1], axis=0)
        own_db = levels[-1]
        floors = np.empty(n)
        for i, level in enumerate(own_db):
            self._own_gate.candidates(own_db[i:i + 1])  # tracks this channel's noise floor
            floors[i] = self._own_gate.noise_floor_db if self._own_gate.noise_floor_db \
                is not None else level
        first = self._own_db.size  # index of the first new block in the held arrays
        self._ref = np.concatenate((self._ref, np.full(n, -np.inf)))
        for i, loud in enumerate(self._agent_gate.candidates(agent_db)):
            if loud:
                b = first + i
                span = slice(max(b - self._preroll, 0), b + self._hangover + 1)
                np.maximum(self._ref[span], agent_db[i], out=self._ref[span])
        self._own_db = np.concatenate((self._own_db, own_db))
        self._floor_db = np.concatenate((self._floor_db, floors))
        self._held = np.concatenate((self._held, x[:, -1]))

    def _release(self, k: int) -> npt.NDArray[np.float32]:
        """The first ``k`` held blocks, muted where the agent speaks."""
        if k == 0:
            return np.zeros(0, np.float32)
        ref, own_db, floor_db = self._ref[:k], self._own_db[:k], self._floor_db[:k]
        out = self._held[: k * self.block].copy()
        self._ref, self._own_db = self._ref[k:], self._own_db[k:]
        self._floor_db, self._held = self._floor_db[k:], self._held[k * self.block:]
        muted = ref > -np.inf
        margin = self.settings.double_talk_margin_db
        if margin is not None:
            # This channel much louder than the agent's bleed could be: the caller speaks
            # over the agent (double talk), and that is the caller's voice.
            muted &= own_db <= ref - margin
        self._last_muted = bool(muted[-1])
        if muted.any():
            mask = np.repeat(muted, self.block)
            count = int(np.count_nonzero(mask))
            out[mask] = self._noise(count, floor_db[muted], self.block)
            self.muted_samples += count
        return out

    def _noise(self, count: int, floors_db: npt.NDArray[np.float64],
               per: int) -> npt.NDArray[np.float32]:
        """``count`` samples of white noise, ``per`` samples at each level of ``floors_db``."""
        rms = np.repeat(10 ** (floors_db / 20), per)[:count]
        return (self._rng.standard_normal(count) * rms).astype(np.float32)
