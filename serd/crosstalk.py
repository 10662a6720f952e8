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
    stretches where the agent speaks replaced by noise at this channel's own noise floor."""

    def __init__(self, settings: CrosstalkSettings, sample_rate: int, seed: int = 0) -> None:
        self.settings = settings
        self.block = max(1, round(_BLOCK_SECONDS * sample_rate))
        # The energy gate's candidate test and noise floor, nothing of its segmenting: one
        # for the agent's speech, one to know this channel's noise floor.
        vad = VadSettings(threshold_db=settings.threshold_db,
                          min_level_dbfs=settings.min_level_dbfs)
        self._agent_gate = EnergyGate(vad, _BLOCK_SECONDS)
        self._own_gate = EnergyGate(vad, _BLOCK_SECONDS)
        self._preroll = round(settings.preroll_seconds / _BLOCK_SECONDS)
        self._hangover = round(settings.hangover_seconds / _BLOCK_SECONDS)
        self.sample_rate = sample_rate
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self._agent_gate.reset()
        self._own_gate.reset()
        self._leftover = np.zeros((0, 2), np.float32)
        # Per 10 ms block from the last one read on: the loudest agent level whose muting
        # reaches it (-inf: none), for the hangover of the latest agent speech.
        self._ref = np.full(self._hangover + 1, -np.inf)
        self._muted_now = False  # the last whole block read was muted
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
        own = np.asarray(own, dtype=np.float32).reshape(-1)
        x = np.concatenate((a, own[:, None]), axis=1)
        self.samples_in += x.shape[0]
        if self._leftover.shape[1] != x.shape[1]:
            self._leftover = np.zeros((0, x.shape[1]), np.float32)
        carried = self._leftover.shape[0]
        x = np.concatenate((self._leftover, x)) if carried else x
        n = x.shape[0] // self.block
        self._leftover = x[n * self.block:].copy()
        muted = np.zeros(n, bool)
        if n:
            muted = self._blocks_muted(x[: n * self.block], n)
            self._muted_now = bool(muted[-1])
        # Samples past the last whole block: as that block was (the agent's speech and its
        # hangover go on for far longer than a block).
        mask = np.concatenate((np.repeat(muted, self.block),
                               np.full(x.shape[0] - n * self.block, self._muted_now)))[carried:]
        count = int(np.count_nonzero(mask))
        if not count:
            return own
        self.muted_samples += count
        floor = self._own_gate.noise_floor_db
        rms = 10 ** ((floor if floor is not None else -90.0) / 20)
        out = own.copy()
        out[mask] = (self._rng.standard_normal(count) * rms).astype(np.float32)
        return out

    def _blocks_muted(self, x: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.bool_]:
        levels = [block_levels_db(np.ascontiguousarray(x[:, j]).reshape(n, self.block))
                  for j in range(x.shape[1])]
        # Several agent channels: the loudest one speaks for them all.
        agent_db = np.max(levels[:-1], axis=0)
        own_db = levels[-1]
        self._own_gate.candidates(own_db)  # tracks this channel's noise floor
        ref = np.concatenate((self._ref, np.full(n, -np.inf)))  # ref[0] = first new block
        for i, loud in enumerate(self._agent_gate.candidates(agent_db)):
            if loud:
                # The preroll reaches back only into this call's blocks: earlier ones have
                # gone to the pipeline already (and the agent's onset is loud at once).
                lo = max(i - self._preroll, 0)
                np.maximum(ref[lo:i + self._hangover + 1], agent_db[i],
                           out=ref[lo:i + self._hangover + 1])
        self._ref = ref[n:]
        ref = ref[:n]
        muted = ref > -np.inf
        margin = self.settings.double_talk_margin_db
        if margin is not None:
            # This channel much louder than the agent's bleed could be: the caller speaks
            # too (double talk), and the window is the caller's voice.
            muted &= own_db <= ref - margin
        return muted
