"""Gate + features + windowing: audio in, model-sized feature windows out (one channel).

:class:`Windower` is the part of the data path shared by the daemon, ``serd --once`` and
training (``train/`` extracts its training windows through it), so all three see the same
segments and windows.  It works on fixed blocks of one feature hop (10 ms) with a leftover
buffer, so the windows do not depend on how the audio is chunked.

Outside speech it only computes block levels for the gate and keeps a short ring of raw
audio for pre-roll; MFCC frames are computed only inside speech segments, and there only
when a window is due (or the segment ends): the speech audio of the blocks in between is
kept and its frames computed in one batch.  MFCC frames do not depend on how the audio
is chunked (bit for bit, see ``serd.features``), so this changes no number, only the
per-call overhead (one feature call per window hop instead of one per audio block).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from serd.features import FeatureParams, MfccStream, WindowParams, pad_window
from serd.gate import EnergyGate, VadSettings, make_gate


@dataclass(frozen=True)
class Window:
    """One model input: raw (un-normalised) MFCC frames of a stretch of speech."""

    segment: int
    """Segment (utterance) number on this channel, from 0."""
    start_sample: int
    """First sample covered, counted at the model rate since the stream began."""
    end_sample: int
    """One past the last sample covered."""
    features: npt.NDArray[np.float32] = field(repr=False)
    """(window_frames, n_mfcc) float32."""
    padded: bool = False
    """True when the segment was shorter than a window and its frames were repeated."""
    audio: npt.NDArray[np.float32] | None = field(default=None, repr=False)
    """The samples ``start_sample:end_sample`` (only with ``Windower(keep_audio=True)``:
    the voice branch, ``serd.voice``, reads the window's audio, not its MFCCs)."""


@dataclass(frozen=True)
class SegmentStart:
    segment: int
    start_sample: int


@dataclass(frozen=True)
class SegmentEnd:
    """A speech segment (utterance) is over."""

    segment: int
    start_sample: int
    end_sample: int
    windows: int
    """How many windows the segment produced (0 when it was too short to classify)."""


Item = Window | SegmentStart | SegmentEnd

_NO_AUDIO = np.zeros(0, np.float32)
_NO_AUDIO.setflags(write=False)


class Windower:
    """``__call__(audio) -> [SegmentStart | Window | SegmentEnd, ...]`` in stream order."""

    def __init__(
        self,
        features: FeatureParams | None = None,
        windows: WindowParams | None = None,
        vad: VadSettings | None = None,
        *,
        min_window_seconds: float = 0.5,
        keep_audio: bool = False,
    ) -> None:
        self.features = features or FeatureParams()
        self.keep_audio = keep_audio
        self.windows = windows or WindowParams()
        self.vad = vad or VadSettings()
        self.block = self.features.hop_length
        self.win_frames, self.hop_frames = self.windows.frames(self.features)
        # Segments shorter than this give no window at all (coughs, clicks, "uh").
        self.min_frames = max(1, round(min_window_seconds / self.features.hop_seconds))
        self.gate: EnergyGate = make_gate(
            self.vad, self.block / self.features.sample_rate, self.features.sample_rate
        )
        self._lookback = self.gate.lookback_blocks + 1
        self._mfcc = MfccStream(self.features)
        self.reset()

    def reset(self) -> None:
        self.gate.reset()
        self._mfcc.reset()
        self._leftover = _NO_AUDIO
        # The last blocks, for pre-roll: a circular buffer written in place.
        self._ring_buf = np.zeros((self._lookback, self.block), np.float32)
        self._ring_len = 0  # valid rows
        self._ring_pos = 0  # row the next block goes to
        self._segment = -1
        self._active = False
        self._fed_until = 0  # absolute block index fed to the MFCC stream
        self._seg_start = 0
        self._frames = np.zeros((0, self.features.n_features), np.float32)
        self._frames_offset = 0  # segment frame index of _frames[0]
        self._n_frames = 0  # frames computed in the current segment
        self._pending: list[npt.NDArray[np.float32]] = []  # speech audio not yet in frames
        self._seg_samples = 0  # samples of the current segment fed (incl. pending)
        self._emitted = 0  # windows emitted in the current segment
        self._last_window_end = 0  # segment frame index just past the last window
        self._audio: list[npt.NDArray[np.float32]] = []  # keep_audio: the segment's samples
        self._audio_from = 0  # absolute sample index of the first kept sample
        self.samples_in = 0
        self.speech_samples = 0
        self.seconds_features = 0.0  # CPU-ish time inside the MFCC stage (for bench/health)
        self.seconds_total = 0.0  # time inside this stage, gate + features

    @property
    def in_speech(self) -> bool:
        return self._active

    def __call__(self, audio: npt.ArrayLike) -> list[Item]:
        t0 = time.perf_counter()
        try:
            return self._call(audio)
        finally:
            self.seconds_total += time.perf_counter() - t0

    def _call(self, audio: npt.ArrayLike) -> list[Item]:
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.samples_in += x.size
        if self._leftover.size:
            x = np.concatenate((self._leftover, x))
        n = x.size // self.block
        self._leftover = x[n * self.block :].copy() if x.size % self.block else _NO_AUDIO
        if n == 0:
            return []
        blocks = x[: n * self.block].reshape(n, self.block)
        events = self.gate.process(blocks)
        first_block = self.gate.block - n
        return self._process(blocks, first_block, events)

    def flush(self) -> list[Item]:
        """End of stream: close an open segment (its tail may give one last window)."""
        events = self.gate.close()
        empty = np.zeros((0, self.block), np.float32)
        return self._process(empty, self.gate.block, events)

    # -- internals -------------------------------------------------------------------

    def _process(self, blocks: npt.NDArray[np.float32], first: int, events: list) -> list[Item]:
        if not events:
            if not self._active:
                self._remember(blocks)  # the cheap path: silence
                return []
            if self._fed_until == first:
                # Inside a segment, no boundary: the new blocks are all there is to feed.
                out: list[Item] = []
                self._feed(blocks, first, first + blocks.shape[0], out)
                self._remember(blocks)
                return out
        ring = self._ring()
        hist = np.concatenate((ring, blocks)) if ring.size else blocks
        hist_start = first - ring.shape[0]
        out = []
        for ev in events:
            if ev.kind == "start":
                self._start(ev.block, out)
            else:
                self._feed(hist, hist_start, ev.block, out)
                self._end(ev.block, out)
        if self._active:
            self._feed(hist, hist_start, first + blocks.shape[0], out)
        self._remember(blocks)
        return out

    def _remember(self, blocks: npt.NDArray[np.float32]) -> None:
        """Append ``blocks`` (the next ones of the stream) to the pre-roll ring."""
        n, size = blocks.shape[0], self._lookback
        if n >= size:
            self._ring_buf[:] = blocks[n - size :]
            self._ring_pos, self._ring_len = 0, size
            return
        pos = self._ring_pos
        k = min(n, size - pos)
        self._ring_buf[pos : pos + k] = blocks[:k]
        if k < n:
            self._ring_buf[: n - k] = blocks[k:]
        self._ring_pos = (pos + n) % size
        self._ring_len = min(size, self._ring_len + n)

    def _ring(self) -> npt.NDArray[np.float32]:
        """The remembered blocks, oldest first (a view until the ring has wrapped)."""
        if self._ring_len < self._lookback:  # not wrapped yet: rows 0..len-1
            return self._ring_buf[: self._ring_len]
        pos = self._ring_pos
        return np.concatenate((self._ring_buf[pos:], self._ring_buf[:pos]))

    def _start(self, block: int, out: list[Item]) -> None:
        self._segment += 1
        self._active = True
        self._seg_start = block
        self._fed_until = block
        self._mfcc.reset()
        self._frames = np.zeros((0, self.features.n_features), np.float32)
        self._frames_offset = 0
        self._n_frames = 0
        self._pending = []
        self._seg_samples = 0
        self._emitted = 0
        self._last_window_end = 0
        self._audio = []
        self._audio_from = block * self.block
        out.append(SegmentStart(self._segment, block * self.block))

    def _feed(
        self, hist: npt.NDArray[np.float32], hist_start: int, until: int, out: list[Item]
    ) -> None:
        lo = self._fed_until - hist_start
        hi = until - hist_start
        if hi <= lo:
            return
        lo = max(lo, 0)  # cannot happen with a consistent gate; guards the slice
        # A copy: the caller may reuse its buffer before the frames are computed.
        audio = hist[lo:hi].reshape(-1).copy()
        self.speech_samples += audio.size
        self._fed_until = until
        self._pending.append(audio)
        if self.keep_audio:
            self._audio.append(audio)
        self._seg_samples += audio.size
        w, h = self.win_frames, self.hop_frames
        # Frames the MFCC stream will have given once the pending audio is in.
        frame, hop = self.features.frame_length, self.features.hop_length
        ready = 0 if self._seg_samples < frame else 1 + (self._seg_samples - frame) // hop
        if self._emitted * h + w > ready:
            return  # no window due yet: compute the frames later, in one batch
        self._compute_pending()
        while self._emitted * h + w <= self._n_frames:
            s = self._emitted * h
            self._emit(s, self._frames[s - self._frames_offset : s - self._frames_offset + w], out)
            self._emitted += 1
            self._last_window_end = s + w
        # Keep the frames a later window (or the final tail window) can still need.
        keep_from = min(self._emitted * h, self._n_frames - w)
        drop = keep_from - self._frames_offset
        if drop > 0:
            self._frames = self._frames[drop:]
            self._frames_offset = keep_from
        if self.keep_audio:
            self._trim_audio(self._seg_start * self.block + max(0, keep_from) * hop)

    def _compute_pending(self) -> None:
        """MFCC frames of the pending speech audio, appended to the segment's frames."""
        if not self._pending:
            return
        pending = self._pending
        self._pending = []
        audio = pending[0] if len(pending) == 1 else np.concatenate(pending)
        t0 = time.perf_counter()
        frames = self._mfcc(audio)
        self.seconds_features += time.perf_counter() - t0
        if frames.shape[0] == 0:
            return
        self._frames = np.concatenate((self._frames, frames)) if self._frames.size else frames
        self._n_frames += frames.shape[0]

    def _emit(
        self,
        first_frame: int,
        frames: npt.NDArray[np.float32],
        out: list[Item],
        padded: bool = False,
    ) -> None:
        hop = self.features.hop_length
        s0 = self._seg_start * self.block
        n = min(frames.shape[0], self._n_frames) if padded else frames.shape[0]
        start = s0 + first_frame * hop
        end = start + (n - 1) * hop + self.features.frame_length
        audio = self._audio_span(start, end) if self.keep_audio else None
        out.append(Window(self._segment, start, end, frames, padded, audio))

    def _audio_span(self, start: int, end: int) -> npt.NDArray[np.float32]:
        if len(self._audio) > 1:
            self._audio = [np.concatenate(self._audio)]
        kept = self._audio[0] if self._audio else _NO_AUDIO
        return kept[start - self._audio_from : end - self._audio_from].copy()

    def _trim_audio(self, keep_from: int) -> None:
        """Forget the segment's samples before ``keep_from`` (absolute): no later window
        starts earlier."""
        drop = keep_from - self._audio_from
        if drop <= 0 or not self._audio:
            return
        if len(self._audio) > 1:
            self._audio = [np.concatenate(self._audio)]
        self._audio = [self._audio[0][drop:]]
        self._audio_from = keep_from

    def _end(self, block: int, out: list[Item]) -> None:
        self._compute_pending()
        n, w, h = self._n_frames, self.win_frames, self.hop_frames
        if self._emitted == 0 and n >= self.min_frames:
            frames = self._frames[max(0, n - w) - self._frames_offset :]
            self._emit(max(0, n - w), pad_window(frames, w), out, padded=n < w)
            self._emitted += 1
        elif self._emitted > 0 and n - self._last_window_end >= max(1, h // 2):
            # The tail after the last full window is long enough to deserve a window.
            self._emit(n - w, self._frames[n - w - self._frames_offset :], out)
            self._emitted += 1
        out.append(SegmentEnd(self._segment, self._seg_start * self.block, block * self.block,
                              self._emitted))
        self._active = False
        self._audio = []  # keep_audio: nothing of an ended segment is needed again


def windows_of(
    audio: npt.ArrayLike,
    features: FeatureParams | None = None,
    windows: WindowParams | None = None,
    vad: VadSettings | None = None,
    *,
    keep_audio: bool = False,
) -> list[Window]:
    """All windows of a whole clip (the training and evaluation path)."""
    w = Windower(features, windows, vad, keep_audio=keep_audio)
    items = w(audio) + w.flush()
    return [it for it in items if isinstance(it, Window)]
