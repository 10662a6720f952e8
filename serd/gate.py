"""Voice-activity gate: splits the stream into speech segments, cheaply.

The gate looks at 10 ms blocks.  Per block it needs one mean-square (vectorised over the
whole chunk), one log and a few comparisons, so a silent room costs almost nothing: no
features and no inference run outside speech segments.

Energy backend: a block is a speech *candidate* when its level exceeds both an absolute
floor (``min_level_dbfs``) and the tracked noise floor by ``threshold_db``.  The noise
floor follows quiet blocks quickly and loud ones very slowly, so it adapts to a room's hum
or a fan within seconds but does not climb into a long stretch of speech; it starts at the
first block's level and falls to the first pause, so a recording that starts with speech
(acted corpora have almost no leading silence) still finds its floor.  A segment opens
after ``min_speech_seconds`` of candidates (clicks and door slams are shorter) and starts
``preroll_seconds`` before the first candidate so word onsets are kept; it closes after
``hangover_seconds`` without candidates, so pauses between words do not split it.

Voiced backend (the default, :class:`VoicedGate`): the same floor and segmentation, but a
segment opens only once the candidate run holds voiced, sustained audio that swells at
least once: typing, clicks, paper, breathing and most of a cough are loud enough to pass
any level test, but are not periodic at a voice's pitch, and a knock's or a cup's ringing
only decays.  (Coughs whose voiced part swells after the burst do open it.)  The voicing
test runs only on candidate blocks while no segment is open.

The optional ``webrtc`` backend (``pip install webrtcvad-wheels``) replaces the candidate
test by WebRTC's GMM classifier; segmentation logic is the same.

Confirm stage (``confirm: silero``, any backend; tiered by default, see
:class:`VadSettings`): when the backend's tests would open a segment, it is only
*tentative* until a speech check over its audio, Silero VAD's 16 kHz model in numpy
(:mod:`serd.speechcheck`), finds ``confirm_chunks`` consecutive 32 ms chunks of speech,
or, more slowly, until it has lasted ``confirm_late_seconds`` with some chunk above
``confirm_late_threshold`` and a mean above ``confirm_late_mean``; either way only while
a cough check on Silero's own encoder outputs and states (:class:`CoughCheck`) reads it
below ``confirm_cough_threshold``; it then opens where the backend's tests put it.  A
tentative segment that would have closed unconfirmed opens nothing: struck cups, knocks,
key presses, machines and most coughs are voiced or loud but not speech to Silero, too
short for the late opening, or coughs to the check.  The check runs only while a segment
is tentative, on audio from a ring of the last ~2.3 s (:class:`SpeechConfirm`), so a
quiet room and ongoing speech cost nothing more.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from serd.speechcheck import CHUNK, RATE, CoughCheck, SileroVad, chunk_trace
from serd.validate import require

_LOGGER = logging.getLogger(__name__)

SILENCE_DB = -120.0
# Digital silence: blocks this quiet are exact zeros (an idle line between calls, the gap
# between files of a replay, a muted sound card), below any converter's own noise (16-bit
# quantisation noise is about -101 dBFS).  They say nothing about the room, so they neither
# set nor move the tracked noise floor; otherwise a few seconds of zeros drag the floor to
# -120 dBFS and the room's ordinary noise then reads as speech until the floor climbs back.
DIGITAL_SILENCE_DB = -110.0


@dataclass(frozen=True)
class VadSettings:
    """Voice-activity gate settings."""

    backend: Literal["voiced", "energy", "webrtc"] = "voiced"
    threshold_db: float = 6.0
    """A block is speech-like when this many dB above the tracked noise floor."""
    min_level_dbfs: float = -80.0
    """Blocks quieter than this (dB relative to full scale) are never speech."""
    min_speech_seconds: float = 0.25
    """Candidate speech needed before a segment opens."""
    voiced_seconds: float = 0.04
    """voiced backend: voiced (periodic) candidate audio needed before a segment opens
    (0.06 s with ``confirm: none``, the gate of docs/gate.md's second round)."""
    voicing_threshold: float = 0.5
    """voiced backend: normalised autocorrelation peak (0..1) that makes a block voiced."""
    max_gap_seconds: float = 0.05
    """voiced backend: a gap in candidate speech longer than this restarts the count."""
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
    confirm: Literal["silero", "none"] = "silero"
    """Confirm stage, any backend: when the backend's own tests would open a segment, it
    opens only once a speech check over its audio (pre-roll included) confirms speech
    before it would have closed again; ``silero``: Silero VAD's 16 kHz model
    (:mod:`serd.speechcheck`, 16 kHz audio only), which tells voices from knocks, key
    presses, machines and many coughs; ``none``: the backend's tests alone.  The check
    runs only while a segment waits for it, so a quiet room and ongoing speech cost
    nothing more.  The defaults are tiered: a segment opens at once on 2 chunks above
    0.3, and late (``confirm_late_seconds``) on any chunk above 0.1 with a mean above
    0.02, which keeps the shouted, clipped and whispered acted speech that Silero doubts
    while a cough or a knock, shorter, and machine hum are refused; a strict stage (2
    chunks above 0.4, no late opening) refuses more coughs but also that speech, below
    the 99.5 % floor on three training corpora (docs/gate.md, third and fifth rounds)."""
    confirm_threshold: float = 0.3
    """confirm: silero's speech probability (0..1) above which a 32 ms chunk is speech."""
    confirm_chunks: int = 2
    """confirm: consecutive speech chunks of 32 ms needed (1: 32 ms)."""
    confirm_late_seconds: float = 0.99
    """confirm: a second, slower way to open (0: none).  A tentative segment that has
    not passed the test above, but in which some chunk's speech probability exceeded
    ``confirm_late_threshold``, opens once it has lasted this long from its first
    candidate block without closing, with the start it would have had.  Coughs, knocks
    and key presses are short; quiet, whispered or shouted speech that Silero doubts
    goes on (docs/gate.md, fourth and fifth rounds)."""
    confirm_late_threshold: float = 0.1
    """confirm: the speech probability (0..1) that some chunk must exceed for a late
    opening (``confirm_late_seconds``)."""
    confirm_late_mean: float = 0.02
    """confirm: for a late opening, the mean speech probability (0..1) of all the chunks
    checked since the segment's start must also exceed this (0: no such test).  A
    machine's hum can lift one chunk above ``confirm_late_threshold`` in a second of
    audio while its mean stays near 0.01-0.03; the acted speech that Silero doubts most
    (ASED's sad and fearful takes) averages 0.02-0.03, so a higher level costs those
    (docs/gate.md, seventh round)."""
    confirm_cough_threshold: float = 0.3
    """confirm: a tentative segment opens (either way above) only while the cough check
    (:class:`serd.speechcheck.CoughCheck`: Silero's encoder outputs and states pooled
    since the segment's start) gives its audio so far a cough probability below this;
    until then it waits, checked chunk by chunk, and closes unopened if it ends first.
    1: no cough check."""

    def __post_init__(self) -> None:
        require(self.threshold_db > 0, "threshold_db", "must be > 0 dB")
        require(-120 <= self.min_level_dbfs <= 0, "min_level_dbfs", "must be in -120..0 dBFS")
        # Upper bounds keep buffers sized from these settings small (and catch typos like
        # 200 for 0.2): nothing useful lies beyond them.
        require(0 <= self.min_speech_seconds <= 5, "min_speech_seconds", "must be 0..5 s")
        require(0 <= self.voiced_seconds <= 5, "voiced_seconds", "must be 0..5 s")
        require(0 < self.voicing_threshold < 1, "voicing_threshold", "must be in (0, 1)")
        require(0 <= self.max_gap_seconds <= 1, "max_gap_seconds", "must be 0..1 s")
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
        require(self.confirm in ("silero", "none"), "confirm", "must be 'silero' or 'none'")
        require(0 < self.confirm_threshold < 1, "confirm_threshold",
                "must be a probability in (0, 1)")
        # 1..30 chunks: 32 ms to about 1 s of speech; more would wait past most words.
        require(1 <= self.confirm_chunks <= 30, "confirm_chunks",
                "must be 1..30 chunks of 32 ms")
        # Up to 2 s: the look-back (and its ring) grows with it, and a reply held longer
        # than that before it opens is held past most one-word answers.
        require(0 <= self.confirm_late_seconds <= 2, "confirm_late_seconds",
                "must be 0..2 s (0: no late opening)")
        require(0 < self.confirm_late_threshold < 1, "confirm_late_threshold",
                "must be a probability in (0, 1)")
        require(0 <= self.confirm_late_mean < 1, "confirm_late_mean",
                "must be a probability in [0, 1), 0 for no such test")
        require(0 < self.confirm_cough_threshold <= 1, "confirm_cough_threshold",
                "must be a probability in (0, 1], 1 for no cough check")
        # A tentative segment is dropped once it reaches max_segment_seconds: a late opening
        # at or past that length could never happen.
        require(self.confirm_late_seconds == 0
                or self.confirm_late_seconds < self.max_segment_seconds,
                "confirm_late_seconds", "must be shorter than vad.max_segment_seconds, or 0")


@dataclass(frozen=True)
class GateEvent:
    """A segment boundary, in blocks since the gate's last reset.

    ``kind == "start"``: the segment begins at block ``block`` (pre-roll included; it may
    lie before the block that triggered it).  ``kind == "end"``: the segment ends just
    before block ``block`` (exclusive).
    """

    kind: Literal["start", "end"]
    block: int


class SpeechConfirm:
    """The confirm stage's speech check over a run's audio, block by block.

    It keeps the gate's recent blocks in a ring (the audio a segment may start with: the
    gate's look-back, bounded by the settings: 2.3 s by default, 1.8 s without the cough
    check) and, from :meth:`start` until :meth:`cancel`, feeds Silero VAD every whole
    32 ms chunk of audio up to the current block; :meth:`advance` says whether
    ``chunks`` consecutive chunks have exceeded ``threshold`` while the cough check
    (when on) reads the audio so far below its threshold.  Chunks are counted from the
    run's start sample and fed as soon as they are whole, so the result does not depend
    on how the stream was cut into calls.
    """

    def __init__(self, settings: VadSettings, block_len: int, history_blocks: int) -> None:
        self.threshold = settings.confirm_threshold
        self.need = settings.confirm_chunks
        self.late_threshold = settings.confirm_late_threshold
        self.late_mean = settings.confirm_late_mean
        self.cough_threshold = settings.confirm_cough_threshold
        self.block_len = block_len
        self._size = history_blocks
        # Loaded now (once per process: the weights are cached), not at the first run to
        # check: a missing or damaged weights file stops every user of the gate (the
        # daemon, serd --once, --check-config, training, the benchmarks) as it builds the
        # gate, with SpeechCheckError's one line, instead of at the first utterance onset.
        self._check = SileroVad()
        self._cough = CoughCheck() if self.cough_threshold < 1 else None
        self.chunks_checked = 0  # for the benchmarks: 32 ms chunks run through the model
        self.reset()

    def reset(self) -> None:
        self._ring = np.zeros((self._size, self.block_len), np.float32)
        self._call: npt.NDArray[np.float32] | None = None
        self._call_first = 0
        self.cancel()

    def cancel(self) -> None:
        """Stop checking (the run ended, or its segment opened)."""
        self.active = False
        self._fed = 0  # stream sample index of the next sample to check
        self._streak = 0
        self._passed = False  # confirm_chunks chunks in a row exceeded threshold
        self._confirmed = False
        self.heard = False  # some chunk checked so far exceeded late_threshold
        self._p_sum = 0.0  # the speech probabilities checked so far, summed ...
        self._p_n = 0  # ... and counted
        self.coughlike = False  # the cough check's verdict on the audio checked so far

    def push(self, blocks: npt.NDArray[np.float32], first_block: int) -> None:
        """The blocks of this ``process`` call (a view: kept in the ring by :meth:`commit`)."""
        self._call = blocks
        self._call_first = first_block

    def commit(self) -> None:
        """End of the call: its last blocks go into the ring."""
        blocks, first = self._call, self._call_first
        if blocks is None:
            return
        self._call = None
        n, size = blocks.shape[0], self._size
        if n > size:
            blocks, first, n = blocks[n - size :], first + n - size, size
        pos = first % size
        k = min(n, size - pos)
        self._ring[pos : pos + k] = blocks[:k]
        self._ring[: n - k] = blocks[k:]

    def start(self, from_block: int, block: int) -> bool:
        """Check the audio from ``from_block`` on, up to ``block``: confirmed yet?"""
        self._check.reset()
        if self._cough is not None:
            self._cough.reset()
        self.cancel()  # every verdict and sum of a previous segment forgotten
        self.active = True
        self._fed = from_block * self.block_len
        return self.advance(block)

    def advance(self, block: int) -> bool:
        """Check the whole chunks that end by ``block``'s end: confirmed yet?"""
        if self._confirmed or not self.active:
            return self._confirmed
        n = ((block + 1) * self.block_len - self._fed) // CHUNK
        if n <= 0:
            return False
        audio = self._samples(self._fed, self._fed + n * CHUNK)
        self._fed += n * CHUNK
        self.chunks_checked += n
        probs = self._check.process(audio.reshape(n, CHUNK)).tolist()
        coughs = (self._cough.update(chunk_trace(self._check)).tolist()
                  if self._cough is not None else [0.0] * n)
        for p, cough in zip(probs, coughs, strict=True):
            self.heard = self.heard or p > self.late_threshold
            self._p_sum += p
            self._p_n += 1
            self._streak = self._streak + 1 if p > self.threshold else 0
            self._passed = self._passed or self._streak >= self.need
            self.coughlike = cough >= self.cough_threshold
            if self._passed and not self.coughlike:
                self._confirmed = True
                break
        return self._confirmed

    @property
    def late_ready(self) -> bool:
        """Whether what was checked so far allows a late opening (the time aside): some
        chunk above ``confirm_late_threshold``, their mean above ``confirm_late_mean``,
        and not a cough."""
        return (self.heard and not self.coughlike
                and self._p_sum > self.late_mean * self._p_n)

    def _samples(self, lo: int, hi: int) -> npt.NDArray[np.float32]:
        """Stream samples ``lo:hi``, from the ring and this call's blocks."""
        if self._call is None:
            raise RuntimeError("vad.confirm needs the audio: feed the gate with process()")
        bl = self.block_len
        b0, b1 = lo // bl, -(-hi // bl)
        if b0 < self._call_first - self._size:
            raise RuntimeError(f"confirm: block {b0} is no longer in the ring")  # a bug
        parts = []
        call_first = self._call_first
        if b0 < call_first:
            idx = [b % self._size for b in range(b0, min(b1, call_first))]
            parts.append(self._ring[idx].reshape(-1))
        if b1 > call_first:
            parts.append(self._call[max(b0, call_first) - call_first : b1 - call_first]
                         .reshape(-1))
        audio = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return audio[lo - b0 * bl : hi - b0 * bl]


class EnergyGate:
    """Stateful segmenter over fixed 10 ms blocks: ``__call__(levels_db)`` -> events."""

    # confirm: how long (s) a run may wait for the speech check after the backend's own
    # tests have passed and still start its segment where they would have (the look-back;
    # longer with a later confirm_late_seconds).
    _CONFIRM_WAIT_SECONDS = 0.5
    # ... and with the cough check on: speech right after a cough reads as a cough until
    # the pool has heard about a second of voice, and should still keep its start.
    _COUGH_WAIT_SECONDS = 1.5

    def __init__(self, settings: VadSettings, block_seconds: float,
                 sample_rate: int = RATE) -> None:
        self.settings = settings
        self.block_seconds = block_seconds
        s = settings
        self._confirm_wait = 0
        self._late = 0  # confirm_late_seconds in blocks (0: no late opening)
        self._confirm: SpeechConfirm | None = None
        if s.confirm == "silero":
            if sample_rate != RATE:
                raise ValueError(f"vad.confirm: silero needs {RATE} Hz audio, not "
                                 f"{sample_rate} Hz; set vad.confirm: none")
            # (At least a block: a setting below half a block is not 0, "never".)
            self._late = (max(1, round(s.confirm_late_seconds / block_seconds))
                          if s.confirm_late_seconds > 0 else 0)
            # A late opening keeps the start its first candidate block gave it.
            self._confirm_wait = round(max(
                self._CONFIRM_WAIT_SECONDS, s.confirm_late_seconds,
                self._COUGH_WAIT_SECONDS if s.confirm_cough_threshold < 1 else 0.0,
            ) / block_seconds)
        self._min_speech = max(1, round(s.min_speech_seconds / block_seconds))
        self._hangover = max(1, round(s.hangover_seconds / block_seconds))
        self._preroll = round(s.preroll_seconds / block_seconds)
        self._max_blocks = round(s.max_segment_seconds / block_seconds)
        self._rise = 1.0 - math.exp(-block_seconds / s.floor_rise_seconds)
        self._fall = 1.0 - math.exp(-block_seconds / s.floor_fall_seconds)
        if s.confirm == "silero":
            self._confirm = SpeechConfirm(s, round(block_seconds * sample_rate),
                                          self.lookback_blocks + 8)
        self.reset()

    @property
    def lookback_blocks(self) -> int:
        """How many blocks before the current one a ``start`` event may point at."""
        return self._min_speech + self._preroll + self._confirm_wait

    def reset(self) -> None:
        if self._confirm is not None:
            self._confirm.reset()
        self._held: int | None = None  # confirm: a tentative segment's start, while held
        self._held_quiet = 0  # ... and its blocks without candidates since the last one
        self.block = 0
        self.in_speech = False
        self.noise_floor_db: float | None = None
        self._run = 0  # consecutive candidate blocks while silent
        self._quiet = 0  # consecutive non-candidate blocks while in speech
        self._seg_start = 0
        self._last_end = 0

    def candidates(self, levels_db: npt.NDArray[np.float64],
                   margins: list[float] | None = None) -> list[bool]:
        """Speech-candidate flags per block; updates the noise floor.  ``margins`` (when
        given) gets each block's level above the floor, in dB."""
        return self._track(levels_db.tolist(), margins)

    def _track(self, levels_db: list[float], margins: list[float] | None) -> list[bool]:
        s = self.settings
        out: list[bool] = []
        floor = self.noise_floor_db
        for level in levels_db:
            if level <= DIGITAL_SILENCE_DB:
                out.append(False)
                if margins is not None:
                    margins.append(SILENCE_DB)
                continue  # the floor holds (see DIGITAL_SILENCE_DB)
            if floor is None:
                floor = level
            out.append(level > s.min_level_dbfs and level > floor + s.threshold_db)
            if margins is not None:
                margins.append(level - floor if level > s.min_level_dbfs else SILENCE_DB)
            # Asymmetric tracking: fall fast, rise slowly.
            floor += (level - floor) * (self._fall if level < floor else self._rise)
        self.noise_floor_db = floor
        return out

    def __call__(self, levels_db: npt.NDArray[np.float64]) -> list[GateEvent]:
        return self.segment(self.candidates(levels_db))

    def process(self, blocks: npt.NDArray[np.float32]) -> list[GateEvent]:
        """Events for the next ``blocks`` (n, block) of the stream."""
        if self._confirm is None:
            return self(block_levels_db(blocks))
        self._confirm.push(blocks, self.block)
        events = self(block_levels_db(blocks))
        self._confirm.commit()
        return events

    def segment(self, flags: list[bool]) -> list[GateEvent]:
        """Turn per-block candidate flags into segment start/end events."""
        events: list[GateEvent] = []
        for is_speech in flags:
            b = self.block
            if not self.in_speech:
                if self._held is not None:  # a tentative segment awaits the speech check
                    first = self._pending(is_speech, b)
                else:
                    first = self._opening(is_speech, b)
                    if first is not None and self._confirm is not None:
                        first = self._tentative(first, b)
                if first is not None:
                    # Pre-roll, but never back into the previous segment.
                    start = max(first - self._preroll, self._last_end, 0)
                    events.append(GateEvent("start", start))
                    self.in_speech = True
                    self._seg_start = start
                    # The blocks without candidates it already had while tentative count
                    # towards its hangover, as they would have had it opened at once: a
                    # late opening in a pause does not start the hangover afresh.
                    self._quiet = min(self._held_quiet, self._hangover - 1)
                    self._restart_opening()
            else:
                self._quiet = 0 if is_speech else self._quiet + 1
                if self._quiet >= self._hangover:
                    end = b + 1
                    events.append(GateEvent("end", end))
                    self.in_speech = False
                    self._last_end = end
                    self._restart_opening()
                elif b + 1 - self._seg_start >= self._max_blocks:
                    end = b + 1
                    events.append(GateEvent("end", end))
                    events.append(GateEvent("start", end))
                    self._seg_start = end
                    self._last_end = end
            self.block += 1
        return events

    def _opening(self, is_speech: bool, b: int) -> int | None:
        """While silent: the first block of the speech that opens a segment at block ``b``,
        or None.  Energy backend: ``min_speech_seconds`` of consecutive candidates."""
        self._run = self._run + 1 if is_speech else 0
        return b - self._run + 1 if self._run >= self._min_speech else None

    def _tentative(self, first: int, b: int) -> int | None:
        """The confirm stage, when the backend's tests would open a segment at block ``b``
        starting at ``first``: open it only once the speech check confirms speech.  Until
        then the segment is *tentative*: held while it would have lasted (it ends after
        ``hangover_seconds`` without candidates, as an open one would), with the check run
        on each new block (:meth:`_pending`); if it ends unconfirmed, nothing opens."""
        confirm = self._confirm
        assert confirm is not None
        self._held = first
        self._held_quiet = 0
        # The audio the segment would hold, pre-roll included: the check sees what the
        # classifier would (and the model's state settles on the pre-roll).
        if confirm.start(max(first - self._preroll, 0), b) or self._late_open(b):
            return self._confirmed_start(b)
        return None

    def _pending(self, is_speech: bool, b: int) -> int | None:
        """A tentative segment's next block: its start once confirmed, else None."""
        confirm = self._confirm
        assert confirm is not None
        assert self._held is not None
        self._held_quiet = 0 if is_speech else self._held_quiet + 1
        if confirm.advance(b):
            return self._confirmed_start(b)
        if self._held_quiet >= self._hangover or b + 1 - self._held >= self._max_blocks:
            # It would have closed unconfirmed: forget it; a new run starts afresh.
            confirm.cancel()
            self._held = None
            self._restart_opening()
            return None
        return self._confirmed_start(b) if self._late_open(b) else None

    def _late_open(self, b: int) -> bool:
        """Whether the tentative segment opens late at block ``b``: it has lasted
        ``confirm_late_seconds`` and the check allows it (:attr:`SpeechConfirm.late_ready`)."""
        assert self._confirm is not None
        assert self._held is not None
        return (bool(self._late) and self._confirm.late_ready
                and b + 1 - self._held >= self._late)

    def _confirmed_start(self, b: int) -> int:
        """The start of a segment confirmed at block ``b``: where the backend's tests put
        it, unless that lies beyond the look-back (a confirmation ``_confirm_wait`` or more
        after the opening), then as far back as it reaches."""
        assert self._confirm is not None
        assert self._held is not None
        self._confirm.cancel()
        start = max(self._held, b - (self.lookback_blocks - self._preroll) + 1)
        self._held = None
        return start

    def _restart_opening(self) -> None:
        self._run = 0

    def close(self) -> list[GateEvent]:
        """End of stream: close an open segment (a tentative one just ends)."""
        if self._held is not None and self._confirm is not None:
            self._confirm.cancel()
            self._held = None
        if self.in_speech:
            self.in_speech = False
            self._last_end = self.block
            return [GateEvent("end", self.block)]
        return []


class VoicedGate(EnergyGate):
    """Energy candidates, confirmed by voicing before a segment opens.

    Speech is voiced: its vowels repeat at the pitch period for tens of milliseconds.
    Typing, clicks, paper, breathing and most of a cough are noise-like or impulsive and
    do not; a knock rings periodically but only decays.  So a segment opens only when a
    candidate run (gaps up to ``max_gap_seconds``) has lasted ``min_speech_seconds``,
    holds ``voiced_seconds`` of voiced, sustained blocks within its last 0.2 s, and has
    risen (see ``_opening``).  Voicing is
    measured only on the blocks of a run while no segment is open: in a quiet room (no
    candidates) and inside speech (the segment is already open) it costs nothing.

    The level of a block is that of the pre-emphasised signal, averaged over the last
    ``_SMOOTH`` blocks: raw 10 ms levels of a room's low-frequency noise swing by several
    dB, which would keep the tracked floor (it follows the quiet blocks) well below the
    noise's mean level and make candidates of the noise itself.
    """

    _SMOOTH = 3  # blocks per level and per voicing frame (30 ms at 10 ms blocks)
    _MIN_PITCH_HZ = 70.0
    _MAX_PITCH_HZ = 400.0
    # Periodicity is measured in this band: below it lie mains hum, fan and rumble tones,
    # above it a quiet voice's harmonics drown in the microphone's hiss.
    _BAND_HZ = (150.0, 2500.0)
    _SUSTAIN_DB = 6.0
    _SUSTAIN_BLOCKS = 8
    # A periodic block must rise this far above an earlier periodic block of the run's
    # last _voiced_window blocks before the run may open a segment: see _opening.
    _RISE_DB = 1.0
    _PREEMPHASIS = 0.9
    # Set by _restart_opening: the voiced-flags ring, its next slot, the rise test's flag.
    _voiced_flags: list[bool]
    _pos: int
    _driven: bool

    def __init__(self, settings: VadSettings, block_seconds: float, sample_rate: int) -> None:
        self._need_voiced = max(1, round(settings.voiced_seconds / block_seconds))
        self._max_gap = round(settings.max_gap_seconds / block_seconds)
        self._voicing_margin = settings.threshold_db / 2
        # Voiced blocks are counted over this many of the run's last blocks.
        self._voiced_window = max(round(0.2 / block_seconds), self._need_voiced)
        # How far back a start may point: enough to gather the voicing at the longest
        # plausible pace (a few syllables); older candidates are forgotten.
        self._max_run = max(round(0.5 / block_seconds), self._need_voiced * 4)
        self._lag_lo = max(2, int(sample_rate / self._MAX_PITCH_HZ))
        self._lag_hi = int(sample_rate / self._MIN_PITCH_HZ)
        self._block_len = round(block_seconds * sample_rate)
        super().__init__(settings, block_seconds, sample_rate)  # calls reset(): needs the above
        self._frame_len = self._block_len * self._SMOOTH
        self._fft_len = 1 << (2 * self._frame_len - 1).bit_length()
        self._starts: dict[int, npt.NDArray[np.intp]] = {}  # block starts by blocks per call
        lags = np.arange(self._lag_hi + 2)
        self._unbias = self._frame_len / np.maximum(self._frame_len - lags, 1)
        freqs = np.fft.rfftfreq(self._fft_len, 1.0 / sample_rate)
        self._band_mask = ((freqs >= self._BAND_HZ[0]) & (freqs <= self._BAND_HZ[1])).astype(
            np.float64)

    @property
    def lookback_blocks(self) -> int:
        return self._max_run + self._preroll + self._confirm_wait

    def reset(self) -> None:
        super().reset()
        self._first = -(1 << 30)  # first block of the current (or the last) candidate run
        self._restart_opening()
        # Smoothed levels of the last _SUSTAIN_BLOCKS blocks of earlier calls, then of this
        # call's blocks; their heights above the noise floor (this call's blocks only).
        self._levels: list[float] = [SILENCE_DB] * self._SUSTAIN_BLOCKS
        self._margins: list[float] = []
        self._levels_first = 0
        self._voicing: npt.NDArray[np.float64] | None = None  # this call's, when batched
        self._tail_ms: tuple[float, float] | None = None  # last two blocks' sums of squares
        self._last_sample: npt.NDArray[np.float32] | None = None  # the last call's last sample
        # The audio voicing may look at: this call's blocks, the last ones of the previous.
        self._blocks = np.zeros((0, self._block_len), np.float32)
        self._prev = np.zeros((self._SMOOTH - 1, self._block_len), np.float32)
        self._before = self._prev

    def process(self, blocks: npt.NDArray[np.float32]) -> list[GateEvent]:
        n, size = blocks.shape
        if n == 0:
            return []
        # Levels of the pre-emphasised signal: it weighs the speech band over the rumble
        # and hum that dominate a room's noise and make its raw level swing by several dB
        # from block to block.  (The stream's first block misses its first sample; a later
        # call's first sample is taken against the previous call's last, so that the levels
        # do not depend on how the stream is cut into calls.)
        x = blocks.reshape(-1)
        if self._last_sample is None:
            d = x[1:] - self._PREEMPHASIS * x[:-1]
            starts = self._starts.get(n)
            if starts is None:  # where each block begins in d (one sample early, but the first)
                starts = self._starts[n] = np.arange(0, n * size, size) - (np.arange(n) > 0)
        else:
            xp = np.concatenate((self._last_sample, x))
            d = xp[1:] - self._PREEMPHASIS * xp[:-1]
            starts = self._starts.get(-n)  # (keyed -n: every block begins at its own start)
            if starts is None:
                starts = self._starts[-n] = np.arange(0, n * size, size)
        self._last_sample = x[-1:].copy()
        d *= d
        sums = np.add.reduceat(d, starts).tolist()
        # Smoothed over _SMOOTH (3) blocks, this one and the two before; in Python: a few
        # floats per call cost less than the numpy calls would.
        levels = []
        a, b = self._tail_ms if self._tail_ms is not None else (sums[0], sums[0])
        scale = 1.0 / (3 * size)
        for c in sums:
            ms = (a + b + c) * scale
            levels.append(10.0 * math.log10(ms) if ms > 1e-12 else SILENCE_DB)
            a, b = b, c
        self._tail_ms = (a, b)
        # Voicing looks at this call's blocks and the two before them; those of the next
        # call are kept now, as a copy (the caller may reuse its buffer).
        self._before = self._prev
        last = blocks[-2:] if n >= 2 else np.concatenate((self._prev, blocks))[-2:]
        self._prev = last.copy()
        self._blocks = blocks
        if self._confirm is not None:
            self._confirm.push(blocks, self.block)
        self._levels = self._levels[len(self._levels) - self._SUSTAIN_BLOCKS :] + levels
        self._levels_first = self.block
        self._margins = []
        flags = self._track(levels, self._margins)
        # While no segment is open, the blocks high enough above the floor to be looked at
        # are looked at in one batch (a few are wasted when a segment opens mid-call);
        # inside a segment, voicing is computed only if it closes and a new run begins.
        self._voicing = None
        if not self.in_speech and self._held is None:  # (a tentative segment needs none)
            rows = [i for i, m in enumerate(self._margins) if m > self._voicing_margin]
            if rows:
                self._voicing = np.zeros(n)
                self._voicing[rows] = self._voicing_of(rows)
        events = self.segment(flags)
        if self._confirm is not None:
            self._confirm.commit()
        return events

    def _opening(self, is_speech: bool, b: int) -> int | None:
        # A run starts at a candidate and lasts while the level stays above half the
        # threshold, with gaps of up to max_gap_seconds.  Inside it, voicing is looked for at
        # that half margin: a quiet voice's vowels are clearly periodic a few dB before they
        # clear the threshold.
        i = b - self._levels_first
        if is_speech:
            # A word just before may have been too short or too weakly voiced to open a
            # segment on its own: the segment will start with it (within _max_run).
            if self._run == 0 and b - self._first > self._max_run:
                self._first = b
            self._run = 1
            self._gap = 0
        elif not self._run:
            return None
        elif self._margins[i] > self._voicing_margin:
            self._gap = 0
        else:
            self._gap += 1
            if self._gap > self._max_gap:
                self._restart_opening()
                return None
        # A struck object (a knock, a dropped pen, a cup) rings periodically too, but only
        # decays: a voice is driven and holds its level through a vowel.  So a periodic
        # block counts as voiced only while within _SUSTAIN_DB of the loudest periodic block
        # of the last few (not of any block: a fricative before a vowel may be louder), and
        # the run opens only once a periodic block has risen _RISE_DB above an earlier
        # periodic block of the last 0.2 s: a vowel's voiced onset swells, a single strike's
        # ringing and most of a cough's voiced tail start at their loudest and decay.  (A
        # stricter form, a rise within one unbroken periodic stretch, rejects most coughs
        # but also the quietest and shortest words: docs/gate.md.)
        voiced = False
        if self._margins[i] > self._voicing_margin and (
                self.voicing(b) >= self.settings.voicing_threshold):
            level = self._levels[i + self._SUSTAIN_BLOCKS]
            recent = self._periodic
            while recent and recent[0][0] < b - self._voiced_window:
                recent.popleft()
            if not self._driven and recent and level >= min(lv for _, lv in recent) + (
                    self._RISE_DB):
                self._driven = True
            recent.append((b, level))
            voiced = level >= max(lv for c, lv in recent
                                  if c >= b - self._SUSTAIN_BLOCKS) - self._SUSTAIN_DB
        # Voiced blocks among the last _voiced_window of the run (vowels flicker at low SNR).
        flags = self._voiced_flags
        self._voiced += voiced - flags[self._pos]
        flags[self._pos] = voiced
        self._pos = (self._pos + 1) % len(flags)
        if (b - self._first >= self._min_speech - 1 and self._voiced >= self._need_voiced
                and self._driven):
            return max(self._first, b - self._max_run + 1)
        return None

    def _restart_opening(self) -> None:
        self._run = 0
        self._voiced = 0
        self._gap = 0
        self._periodic: deque[tuple[int, float]] = deque()  # (block, level), recent ones
        self._driven = False  # a periodic block rose _RISE_DB over an earlier one
        self._voiced_flags = [False] * self._voiced_window  # ring over that window
        self._pos = 0  # its next slot

    def voicing(self, b: int) -> float:
        """Periodicity of the 30 ms ending with block ``b`` (of the last ``process`` call):
        the highest normalised autocorrelation peak at a pitch lag (70-400 Hz), 0 for
        aperiodic sound, near 1 for a steady vowel."""
        i = b - self._levels_first
        if self._voicing is not None:
            return float(self._voicing[i])
        return float(self._voicing_of([i])[0])

    def _voicing_of(self, rows: list[int]) -> npt.NDArray[np.float64]:
        """:meth:`voicing` of several blocks of this call (indices into it) in one batch:
        numpy's per-call overhead, not the arithmetic, is most of the cost."""
        k = self._SMOOTH - 1
        ext = np.concatenate((self._before, self._blocks)) if min(rows) < k else None
        frames = np.empty((len(rows), self._frame_len), np.float64)
        for j, i in enumerate(rows):
            src = self._blocks[i - k : i + 1] if ext is None else ext[i : i + k + 1]
            frames[j] = src.reshape(-1)
        spec = np.fft.rfft(frames, self._fft_len, axis=1)
        power = spec.real**2 + spec.imag**2
        power *= self._band_mask
        r = np.fft.irfft(power, self._fft_len, axis=1)[:, : self._lag_hi + 2]
        r0 = r[:, :1]
        # Normalised by the frame's energy; unbiased: each lag's sum has fewer terms.
        rn = r * self._unbias
        rn /= np.where(r0 > 0.0, r0, np.inf)
        seg = rn[:, self._lag_lo - 1 :]
        mid = seg[:, 1:-1]
        peaks = (mid > seg[:, :-2]) & (mid >= seg[:, 2:])
        return np.where(peaks, mid, 0.0).max(axis=1)


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
        super().__init__(settings, block_seconds, sample_rate)
        self._vad = webrtcvad.Vad(settings.webrtc_aggressiveness)
        self._rate = sample_rate

    def process(self, blocks: npt.NDArray[np.float32]) -> list[GateEvent]:
        if self._confirm is not None:
            self._confirm.push(blocks, self.block)
        events = self.segment(self.classify_blocks(blocks))
        if self._confirm is not None:
            self._confirm.commit()
        return events

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
    return levels_db(ms)


def levels_db(ms: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Mean squares in dBFS, floored at ``SILENCE_DB``."""
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
    if settings.backend == "voiced":
        return VoicedGate(settings, block_seconds, sample_rate)
    return EnergyGate(settings, block_seconds, sample_rate)
