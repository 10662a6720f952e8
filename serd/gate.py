"""Voice-activity gate: splits the stream into speech segments, cheaply.

The gate looks at 10 ms blocks.  Per block it needs one mean-square (vectorised over the
whole chunk), one log and a few comparisons, so a silent room costs almost nothing: no
features and no inference run outside speech segments.

Energy backend: a block is a speech *candidate* when its level exceeds both an absolute
floor (``min_level_dbfs``) and the tracked noise floor by ``threshold_db``.  The noise
floor follows quiet blocks quickly and loud ones very slowly, so it adapts to a room's hum
or a fan within seconds but does not climb into a long stretch of speech.  A segment opens
after ``min_speech_seconds`` of candidates (clicks and door slams are shorter) and starts
``preroll_seconds`` before the first candidate so word onsets are kept; it closes after
``hangover_seconds`` without candidates, so pauses between words do not split it.

The optional ``webrtc`` backend (``pip install webrtcvad``) replaces the candidate test
by WebRTC's GMM classifier; segmentation logic is the same.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from serd.validate import require

_LOGGER = logging.getLogger(__name__)

SILENCE_DB = -120.0


@dataclass(frozen=True)
class VadSettings:
    """Voice-activity gate settings."""

    backend: Literal["energy", "webrtc"] = "energy"
    threshold_db: float = 9.0
    """A block is speech-like when this many dB above the tracked noise floor."""
    min_level_dbfs: float = -50.0
    """Blocks quieter than this (dB relative to full scale) are never speech."""
    min_speech_seconds: float = 0.15
    """Candidate speech needed before a segment opens."""
    hangover_seconds: float = 0.4
    """Silence needed before a segment closes."""
    preroll_seconds: float = 0.2
    """Audio kept before the first speech block, so onsets are not clipped."""
    max_segment_seconds: float = 20.0
    """Long monologues are split into utterances of at most this length."""
    floor_rise_seconds: float = 4.0
    """Time constant of the noise floor rising towards louder input."""
    floor_fall_seconds: float = 0.1
    """Time constant of the noise floor falling towards quieter input."""
    webrtc_aggressiveness: int = 2
    """0..3, webrtc backend only."""

    def __post_init__(self) -> None:
        require(self.threshold_db > 0, "threshold_db", "must be > 0 dB")
        require(-120 <= self.min_level_dbfs <= 0, "min_level_dbfs", "must be in -120..0 dBFS")
        # Upper bounds keep buffers sized from these settings small (and catch typos like
        # 200 for 0.2): nothing useful lies beyond them.
        require(0 <= self.min_speech_seconds <= 5, "min_speech_seconds", "must be 0..5 s")
        require(0 <= self.hangover_seconds <= 10, "hangover_seconds", "must be 0..10 s")
        require(0 <= self.preroll_seconds <= 2, "preroll_seconds", "must be 0..2 s")
        require(
            1 <= self.max_segment_seconds <= 600, "max_segment_seconds", "must be 1..600 s"
        )
        require(0 < self.floor_rise_seconds <= 600, "floor_rise_seconds", "must be in (0, 600] s")
        require(0 < self.floor_fall_seconds <= 600, "floor_fall_seconds", "must be in (0, 600] s")
        require(
            0 <= self.webrtc_aggressiveness <= 3, "webrtc_aggressiveness", "must be 0, 1, 2 or 3"
        )


@dataclass(frozen=True)
class GateEvent:
    """A segment boundary, in blocks since the gate's last reset.

    ``kind == "start"``: the segment begins at block ``block`` (pre-roll included; it may
    lie before the block that triggered it).  ``kind == "end"``: the segment ends just
    before block ``block`` (exclusive).
    """

    kind: Literal["start", "end"]
    block: int


class EnergyGate:
    """Stateful segmenter over fixed 10 ms blocks: ``__call__(levels_db)`` -> events."""

    def __init__(self, settings: VadSettings, block_seconds: float) -> None:
        self.settings = settings
        self.block_seconds = block_seconds
        s = settings
        self._min_speech = max(1, round(s.min_speech_seconds / block_seconds))
        self._hangover = max(1, round(s.hangover_seconds / block_seconds))
        self._preroll = round(s.preroll_seconds / block_seconds)
        self._max_blocks = round(s.max_segment_seconds / block_seconds)
        self._rise = 1.0 - math.exp(-block_seconds / s.floor_rise_seconds)
        self._fall = 1.0 - math.exp(-block_seconds / s.floor_fall_seconds)
        self.reset()

    @property
    def lookback_blocks(self) -> int:
        """How many blocks before the current one a ``start`` event may point at."""
        return self._min_speech + self._preroll

    def reset(self) -> None:
        self.block = 0
        self.in_speech = False
        self.noise_floor_db: float | None = None
        self._run = 0  # consecutive candidate blocks while silent
        self._quiet = 0  # consecutive non-candidate blocks while in speech
        self._seg_start = 0
        self._last_end = 0

    def candidates(self, levels_db: npt.NDArray[np.float64]) -> list[bool]:
        """Speech-candidate flags per block; updates the noise floor."""
        s = self.settings
        out: list[bool] = []
        floor = self.noise_floor_db
        for level in levels_db.tolist():
            if floor is None:
                floor = level
            out.append(level > s.min_level_dbfs and level > floor + s.threshold_db)
            # Asymmetric tracking: fall fast, rise slowly.
            floor += (level - floor) * (self._fall if level < floor else self._rise)
        self.noise_floor_db = floor
        return out

    def __call__(self, levels_db: npt.NDArray[np.float64]) -> list[GateEvent]:
        return self.segment(self.candidates(levels_db))

    def segment(self, flags: list[bool]) -> list[GateEvent]:
        """Turn per-block candidate flags into segment start/end events."""
        events: list[GateEvent] = []
        for is_speech in flags:
            b = self.block
            if not self.in_speech:
                self._run = self._run + 1 if is_speech else 0
                if self._run >= self._min_speech:
                    first = b - self._run + 1
                    # Pre-roll, but never back into the previous segment.
                    start = max(first - self._preroll, self._last_end, 0)
                    events.append(GateEvent("start", start))
                    self.in_speech = True
                    self._seg_start = start
                    self._quiet = 0
                    self._run = 0
            else:
                self._quiet = 0 if is_speech else self._quiet + 1
                if self._quiet >= self._hangover:
                    end = b + 1
                    events.append(GateEvent("end", end))
                    self.in_speech = False
                    self._last_end = end
                    self._run = 0
                elif b + 1 - self._seg_start >= self._max_blocks:
                    end = b + 1
                    events.append(GateEvent("end", end))
                    events.append(GateEvent("start", end))
                    self._seg_start = end
                    self._last_end = end
            self.block += 1
        return events

    def close(self) -> list[GateEvent]:
        """End of stream: close an open segment."""
        if self.in_speech:
            self.in_speech = False
            self._last_end = self.block
            return [GateEvent("end", self.block)]
        return []


class WebRtcGate(EnergyGate):
    """Same segmentation, candidates from WebRTC's VAD (needs the ``webrtcvad`` package)."""

    def __init__(self, settings: VadSettings, block_seconds: float, sample_rate: int) -> None:
        try:
            import webrtcvad  # noqa: PLC0415  (optional; mypy: ignore_missing_imports)
        except ImportError as exc:
            raise RuntimeError(
                "vad.backend is 'webrtc' but the webrtcvad package is not installed; "
                "pip install webrtcvad, or set vad.backend: energy"
            ) from exc
        super().__init__(settings, block_seconds)
        self._vad = webrtcvad.Vad(settings.webrtc_aggressiveness)
        self._rate = sample_rate

    def classify_blocks(self, blocks: npt.NDArray[np.float32]) -> list[bool]:
        pcm = (np.clip(blocks, -1.0, 1.0) * 32767).astype("<i2")
        levels = block_levels_db(blocks)
        floor_ok = levels > self.settings.min_level_dbfs
        return [
            bool(ok) and self._vad.is_speech(row.tobytes(), self._rate)
            for row, ok in zip(pcm, floor_ok, strict=True)
        ]


def block_levels_db(blocks: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Mean-square level of each row of ``blocks`` (n, block) in dBFS (full-scale sine = -3)."""
    ms = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64) / max(blocks.shape[1], 1)
    if all(0.0 < v < math.inf for v in ms.tolist()):
        # The usual case (no digital silence, NaN or inf): the same numbers without the
        # errstate context and nan_to_num, which cost more than the rest of this together.
        db = np.log10(ms)
        db *= 10.0
        return np.maximum(db, SILENCE_DB, out=db)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(ms)
    return np.maximum(np.nan_to_num(db, nan=SILENCE_DB, neginf=SILENCE_DB), SILENCE_DB)


def make_gate(settings: VadSettings, block_seconds: float, sample_rate: int) -> EnergyGate:
    if settings.backend == "webrtc":
        return WebRtcGate(settings, block_seconds, sample_rate)
    return EnergyGate(settings, block_seconds)
