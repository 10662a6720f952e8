"""The feature front-end: 16 kHz mono audio -> MFCC + pitch frames -> model windows.

This module is the only code in serd (daemon, ``serd --once`` and ``train/``) that turns
audio into frames (and, with :mod:`serd.normalise`, into model input), so what the model
learned is exactly what the device computes.

* :class:`FeatureParams` fixes the MFCC front-end (frozen; copied into the model card and
  compared at load time).
* :class:`MfccStream` computes MFCC frames incrementally: fed in chunks of any size it
  yields the same frames as on the whole clip (a leftover buffer carries the samples of an
  unfinished frame and the pre-emphasis state across chunks).
* :class:`WindowParams` and :func:`frame_windows` cut frames into the windows the model
  classifies; :mod:`serd.normalise` then applies the card's normalisation.

The filterbank, window function and DCT matrix are computed once per parameter set.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.validate import require

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FeatureParams:
    """MFCC front-end parameters (all recorded in the model card)."""

    sample_rate: int = 16000
    """Input sample rate in Hz; audio at other rates is resampled before this stage."""
    frame_seconds: float = 0.025
    """Analysis frame length (25 ms = 400 samples at 16 kHz)."""
    hop_seconds: float = 0.010
    """Frame step (10 ms = 160 samples at 16 kHz)."""
    n_fft: int = 512
    """FFT size; frames are zero-padded to it."""
    n_mels: int = 40
    """Number of triangular mel filters (HTK mel scale, unnormalised)."""
    n_mfcc: int = 40
    """Cepstral coefficients kept (c0..c{n-1}); c0 carries log energy."""
    fmin_hz: float = 20.0
    fmax_hz: float = 8000.0
    preemphasis: float = 0.97
    """First-order pre-emphasis coefficient (0 disables it)."""
    log_floor: float = 1e-12
    """Floor on mel power before the log: digital silence stays finite, yet it sits far
    below any real recording's noise floor, so a gain change stays a pure offset."""
    window: str = "hamming"
    pitch: bool = True
    """Append two prosody channels to the MFCCs: voicing strength and log-F0 (see
    :func:`pitch_features`).  Forty mel bands on 25 ms frames smear the harmonics, so
    MFCCs alone say little about F0, the strongest acoustic cue to arousal."""
    pitch_frame_seconds: float = 0.05
    """Pitch analysis frame: longer than the MFCC frame, because autocorrelation needs
    about three periods of the lowest F0.  It ends where its MFCC frame ends (no
    look-ahead), so frame ``k`` is ``[k*hop + frame - pitch_frame, k*hop + frame)``;
    before the stream's first sample it sees zeros."""
    f0_min_hz: float = 70.0
    f0_max_hz: float = 450.0

    def __post_init__(self) -> None:
        require(self.sample_rate > 0, "sample_rate", "must be a positive number of Hz")
        require(self.frame_length > 0, "frame_seconds", "must give at least one sample")
        require(self.hop_length > 0, "hop_seconds", "must give at least one sample")
        require(self.n_fft >= self.frame_length, "n_fft", "must be >= the frame length in samples")
        require(0 < self.n_mfcc <= self.n_mels, "n_mfcc", "must be in 1..n_mels")
        require(
            0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate / 2,
            "fmax_hz",
            "need 0 <= fmin_hz < fmax_hz <= sample_rate/2",
        )
        require(0.0 <= self.preemphasis < 1.0, "preemphasis", "must be in [0, 1)")
        require(self.log_floor > 0, "log_floor", "must be > 0")
        require(self.window in ("hamming", "hann"), "window", "must be 'hamming' or 'hann'")
        require(
            self.pitch_frame_length >= self.frame_length,
            "pitch_frame_seconds",
            "must be >= frame_seconds",
        )
        require(
            0 < self.f0_min_hz < self.f0_max_hz < self.sample_rate / 4
            and 2 * self.sample_rate / self.f0_min_hz <= self.pitch_frame_length,
            "f0_min_hz",
            "need 0 < f0_min_hz < f0_max_hz < sample_rate/4 and two periods of f0_min_hz "
            "within pitch_frame_seconds",
        )

    @property
    def pitch_frame_length(self) -> int:
        """Pitch analysis frame length in samples."""
        return round(self.pitch_frame_seconds * self.sample_rate)

    @property
    def n_features(self) -> int:
        """Values per frame: the MFCCs, then voicing and log-F0 when ``pitch`` is on."""
        return self.n_mfcc + (2 if self.pitch else 0)

    @property
    def frame_length(self) -> int:
        """Frame length in samples."""
        return round(self.frame_seconds * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """Frame step in samples."""
        return round(self.hop_seconds * self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WindowParams:
    """How MFCC frames are grouped into the windows that the model classifies."""

    window_seconds: float = 2.0
    """Length of one classified window (the model's input is this many seconds of frames)."""
    hop_seconds: float = 0.5
    """Step between windows during speech; also the most frequent a window event can be."""

    def __post_init__(self) -> None:
        require(self.window_seconds > 0, "window_seconds", "must be > 0")
        require(
            0 < self.hop_seconds <= self.window_seconds,
            "hop_seconds",
            "must be > 0 and <= window_seconds",
        )

    def frames(self, features: FeatureParams) -> tuple[int, int]:
        """(frames per window, frames per window hop) for a front-end."""
        win = round(self.window_seconds / features.hop_seconds)
        hop = round(self.hop_seconds / features.hop_seconds)
        return win, hop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hz_to_mel(hz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(params: FeatureParams) -> FloatArray:
    """(n_mels, n_fft//2+1) triangular filters on the HTK mel scale, peak 1, no area norm.

    Same construction as ``librosa.filters.mel(..., htk=True, norm=None)``: triangles are
    evaluated at the exact FFT bin frequencies, so narrow low-frequency filters are not
    lost to rounding the way integer-bin filterbanks lose them.
    """
    n_bins = params.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, params.sample_rate / 2.0, n_bins)
    mel_pts = np.linspace(hz_to_mel(params.fmin_hz), hz_to_mel(params.fmax_hz), params.n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    fdiff = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper))
    out = fb.astype(np.float32)
    out.setflags(write=False)  # cached and shared: nobody may modify it
    return out


@functools.lru_cache(maxsize=8)
def dct_matrix(n_mels: int, n_mfcc: int) -> FloatArray:
    """Orthonormal DCT-II as a (n_mfcc, n_mels) matrix (same as scipy's ``norm='ortho'``)."""
    n = np.arange(n_mels)
    k = np.arange(n_mfcc)[:, None]
    mat = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    mat[0] /= np.sqrt(2.0)
    out = mat.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def analysis_window(params: FeatureParams) -> FloatArray:
    # Symmetric windows, as in HTK/python_speech_features (np.hamming), not periodic.
    n = params.frame_length
    win = (np.hamming(n) if params.window == "hamming" else np.hanning(n)).astype(np.float32)
    win.setflags(write=False)
    return win


_OCTAVE_COST = 0.02
"""Per octave of lag, subtracted from a pitch candidate's strength: of two equally strong
autocorrelation peaks the shorter period wins, which avoids most octave-down errors
(Boersma's "octave cost")."""
_VOICED_FROM = 0.45
_VOICED_FULL = 0.75
"""Voicing strength from which log-F0 is passed on (0 below, fully above _VOICED_FULL)."""
F0_REFERENCE_HZ = 150.0
"""log-F0 is expressed in octaves relative to this (roughly between male and female F0)."""


@dataclass(frozen=True)
class _PitchTables:
    n_fft: int
    weights: FloatArray
    window_acf: FloatArray
    lag_min: int
    lag_max: int
    log_lag_cost: FloatArray


def _fast_fft_size(n: int) -> int:
    """The smallest size >= n whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


@functools.lru_cache(maxsize=8)
def pitch_tables(params: FeatureParams) -> _PitchTables:
    """Constants of :func:`MfccStream`'s pitch tracker, computed once per parameter set."""
    n = params.pitch_frame_length
    lag_min = int(np.floor(params.sample_rate / params.f0_max_hz))
    lag_max = int(np.ceil(params.sample_rate / params.f0_min_hz))
    # A circular autocorrelation of length N equals the linear one at lags l with
    # N - l >= n, so N = n + lag_max + 2 suffices (1080 for a 50 ms frame, not 2048).
    n_fft = _fast_fft_size(n + lag_max + 2)
    f = np.linspace(0.0, params.sample_rate / 2.0, n_fft // 2 + 1)
    w = np.ones_like(f)
    a = params.preemphasis
    if a > 0:
        # Undo the pre-emphasis: it tilts the autocorrelation towards the formants.
        w /= 1.0 - 2.0 * a * np.cos(np.pi * f / (params.sample_rate / 2.0)) + a * a
    # Keep F0 and its first harmonics (the period), drop DC/hum and the formant region.
    w *= np.clip((f - 40.0) / 30.0, 0.0, 1.0)
    w *= np.where(f <= 1000.0, 1.0, np.where(f >= 2000.0, 0.0,
                                             0.5 * (1.0 + np.cos(np.pi * (f - 1000.0) / 1000.0))))
    win = pitch_window(params).astype(np.float64)
    acf = np.fft.irfft(np.abs(np.fft.rfft(win, n_fft)) ** 2, n_fft)[: lag_max + 2]
    acf /= acf[0]
    lags = np.arange(lag_min, lag_max + 1)
    tables = _PitchTables(
        n_fft=n_fft,
        weights=w.astype(np.float32),
        window_acf=acf[lag_min - 1 :].astype(np.float32),
        lag_min=lag_min,
        lag_max=lag_max,
        log_lag_cost=(_OCTAVE_COST * np.log2(lags / lag_min)).astype(np.float32),
    )
    for arr in (tables.weights, tables.window_acf, tables.log_lag_cost):
        arr.setflags(write=False)
    return tables


@functools.lru_cache(maxsize=8)
def pitch_window(params: FeatureParams) -> FloatArray:
    win = np.hamming(params.pitch_frame_length).astype(np.float32)
    win.setflags(write=False)
    return win


def pitch_features(windowed: npt.NDArray[np.float32], params: FeatureParams) -> FloatArray:
    """(n, 2) voicing strength and log-F0 of (n, pitch_frame_length) windowed frames.

    Autocorrelation pitch tracking in the manner of Boersma (1993), frame by frame with no
    look-ahead or history, so it streams trivially: the autocorrelation comes from the
    low-passed power spectrum, is divided by the analysis window's own autocorrelation, and
    its strongest peak between ``f0_max_hz`` and ``f0_min_hz`` (with an octave cost, refined
    by parabolic interpolation) gives the period.  Channel 0 is the peak height clipped to
    [0, 1] (0 for silence, about 0.25 for noise, near 1 for steady voiced speech);
    channel 1 is log2(F0 / 150 Hz), faded to 0 as the voicing drops, so unvoiced frames
    carry no random pitch values.
    """
    t = pitch_tables(params)
    n = windowed.shape[0]
    out = np.zeros((n, 2), np.float32)
    if n == 0:
        return out
    spec = np.fft.rfft(windowed, t.n_fft, axis=1)
    power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)
    power *= t.weights
    acf = np.fft.irfft(power, t.n_fft, axis=1)[:, : t.lag_max + 2].astype(np.float32)
    r0 = acf[:, :1]
    # acf[l] / acf[0] / window_acf[l] for l in lag_min-1 .. lag_max+1
    rn = acf[:, t.lag_min - 1 :] / np.maximum(r0, np.float32(1e-20)) / t.window_acf
    rows = np.arange(n)
    # Candidates are local maxima only: at the ends of the lag range the autocorrelation
    # may still be rising towards a peak outside it.
    peak = (rn[:, 1:-1] >= rn[:, :-2]) & (rn[:, 1:-1] >= rn[:, 2:])
    score = np.where(peak, rn[:, 1:-1] - t.log_lag_cost, np.float32(-1.0))
    k = np.argmax(score, axis=1) + 1
    y0, y1, y2 = rn[rows, k - 1], rn[rows, k], rn[rows, k + 1]
    curv = y0 - 2.0 * y1 + y2
    safe = np.where(curv < 0, curv, np.float32(-1.0))
    delta = np.where(curv < 0, np.clip(0.5 * (y0 - y2) / safe, -0.5, 0.5), 0.0).astype(np.float32)
    strength = y1 - np.float32(0.25) * (y0 - y2) * delta
    voicing = np.clip(strength, 0.0, 1.0)
    lag = (k + (t.lag_min - 1)).astype(np.float32) + delta
    log_f0 = np.log2(np.float32(params.sample_rate / F0_REFERENCE_HZ) / lag)
    gate = np.clip((voicing - _VOICED_FROM) / (_VOICED_FULL - _VOICED_FROM), 0.0, 1.0)
    out[:, 0] = voicing
    out[:, 1] = gate * log_f0
    return out


class MfccStream:
    """Streaming MFCC: ``__call__(chunk)`` returns the frames completed by that chunk.

    Frame ``k`` covers samples ``[k*hop, k*hop + frame)`` of the stream since the last
    :meth:`reset`; pre-emphasis uses the previous chunk's last sample.  Hence any chunking
    of the same audio yields the same frames, bit for bit (see :func:`_matmul`).
    """

    def __init__(self, params: FeatureParams | None = None) -> None:
        self.params = params or FeatureParams()
        p = self.params
        self._frame = p.frame_length
        self._hop = p.hop_length
        self._window = analysis_window(p)
        # Fold the mel filterbank into one (bins, mels) matrix; the DCT is applied after log.
        self._fb_t = np.ascontiguousarray(mel_filterbank(p).T)
        self._dct_t = np.ascontiguousarray(dct_matrix(p.n_mels, p.n_mfcc).T)
        self._power_scale = np.float32(1.0 / p.n_fft)
        self._preemph = np.float32(p.preemphasis)
        self._log_floor = np.float32(p.log_floor)
        self._n_bins = p.n_fft // 2 + 1
        # Zero-padded FFT input, reused between calls (rows beyond the frame stay zero).
        self._fft_in = np.zeros((0, p.n_fft), dtype=np.float32)
        # The buffer starts `_history` samples before the next frame: the pitch frame
        # reaches back that far (zeros before the stream's first sample).
        self._history = p.pitch_frame_length - p.frame_length if p.pitch else 0
        self._pitch_window = pitch_window(p) if p.pitch else None
        self._buf = np.zeros(self._history, dtype=np.float32)
        self._last = np.float32(0.0)
        self.frames_emitted = 0

    def reset(self) -> None:
        """Forget buffered samples; the next sample starts frame 0."""
        self._buf = np.zeros(self._history, dtype=np.float32)
        self._last = np.float32(0.0)
        self.frames_emitted = 0

    @property
    def buffered_samples(self) -> int:
        return int(self._buf.size) - self._history

    def __call__(self, chunk: npt.ArrayLike) -> FloatArray:
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        old = self._buf
        if x.size:
            # Pre-emphasis straight into the buffer behind the carried-over samples.
            a = self._preemph
            buf = np.empty(old.size + x.size, dtype=np.float32)
            buf[: old.size] = old
            emph = buf[old.size :]
            emph[0] = x[0] - a * self._last
            rest = emph[1:]
            np.multiply(x[:-1], a, out=rest)
            np.subtract(x[1:], rest, out=rest)
            self._last = x[-1]
        else:
            buf = old
        h = self._history
        if buf.size < h + self._frame:
            self._buf = buf
            return np.zeros((0, self.params.n_features), dtype=np.float32)
        n = 1 + (buf.size - h - self._frame) // self._hop
        # Frame k is buf[h + k*hop : h + k*hop + frame]: a strided view, no copy; its
        # pitch frame is the same but h samples longer at the front.
        frames = np.ndarray(
            (n, self._frame), np.float32, buffer=buf, offset=h * 4, strides=(self._hop * 4, 4)
        )
        self.frames_emitted += n
        out = self._compute(frames)
        if self.params.pitch:
            long = np.ndarray(
                (n, h + self._frame), np.float32, buffer=buf, strides=(self._hop * 4, 4)
            )
            out = np.concatenate(
                (out, pitch_features(long * self._pitch_window, self.params)), axis=1
            )
        # Keep only what the next frame still needs (copy: do not pin the big chunk).
        self._buf = buf[n * self._hop :].copy()
        return out

    def _compute(self, frames: npt.NDArray[np.float32]) -> FloatArray:
        n = frames.shape[0]
        if n > self._fft_in.shape[0]:
            rows = n if n <= 256 else 0  # keep a buffer for streaming-sized calls only
            padded = np.zeros((n, self.params.n_fft), dtype=np.float32)
            if rows:
                self._fft_in = padded
        else:
            padded = self._fft_in[:n]
        np.multiply(frames, self._window, out=padded[:, : self._frame])
        spec = np.fft.rfft(padded, axis=1)
        re, im = spec.real, spec.imag
        power = re * re
        power += im * im
        power *= self._power_scale
        mel = _matmul(power, self._fb_t)
        np.maximum(mel, self._log_floor, out=mel)
        np.log(mel, out=mel)
        return _matmul(mel, self._dct_t)


_MATMUL_ROWS = 64
"""Rows per matrix product in :func:`_matmul`."""


def _matmul(a: npt.NDArray[Any], b: FloatArray) -> FloatArray:
    """``a @ b`` with every row computed the same way, however many rows ``a`` has.

    OpenBLAS picks its kernel by size: one row goes to a matrix-vector routine, more than
    about 96 rows to a blocked (and, with several cores, threaded) one; each rounds
    differently, so the same frame would get different last bits depending on how the
    audio was chunked.  Products of 2..64 rows all use the same small-matrix kernel, so
    feeding at most 64 rows at a time (and a single row twice) makes the frames
    bit-identical for any chunking (checked with numpy's bundled OpenBLAS on x86-64):
    streaming, ``serd --once`` and training agree exactly.  It also keeps these small
    products on one thread.
    """
    n = a.shape[0]
    if 2 <= n <= _MATMUL_ROWS:
        return a @ b
    if n == 1:
        return (np.concatenate((a, a)) @ b)[:1]
    out = np.empty((n, b.shape[1]), dtype=np.result_type(a, b))
    for i in range(0, n, _MATMUL_ROWS):
        j = min(n, i + _MATMUL_ROWS)
        if j - i == 1:  # a lone last row: pair it with the one before
            out[i:j] = (a[i - 1 : j] @ b)[1:]
        else:
            out[i:j] = a[i:j] @ b
    return out


def mfcc(audio: npt.ArrayLike, params: FeatureParams | None = None) -> FloatArray:
    """MFCC frames of a whole clip: (n_frames, n_mfcc) float32; no padding at the end."""
    return MfccStream(params)(audio)


def frame_windows(
    frames: npt.NDArray[np.float32], window_frames: int, hop_frames: int
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Cut (n, d) frames into (k, window_frames, d) windows at ``hop_frames`` steps.

    Returns the windows and their first-frame indices.  A clip shorter than one window
    gives a single window made by repeating the clip (tiling keeps its statistics, where
    zero padding would add frames the model never sees in speech).
    """
    n = frames.shape[0]
    if n == 0:
        return np.zeros((0, window_frames, frames.shape[1]), np.float32), np.zeros(0, np.int64)
    if n < window_frames:
        return pad_window(frames, window_frames)[None], np.zeros(1, np.int64)
    starts = np.arange(0, n - window_frames + 1, hop_frames, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(frames, window_frames, axis=0)
    # sliding_window_view puts the window axis last: (k, d, w) -> (k, w, d)
    return np.ascontiguousarray(view[starts].transpose(0, 2, 1)), starts


def pad_window(frames: npt.NDArray[np.float32], window_frames: int) -> FloatArray:
    """Repeat ``frames`` until it is ``window_frames`` long (utterances shorter than a window)."""
    n = frames.shape[0]
    if n >= window_frames:
        return np.asarray(frames[-window_frames:], dtype=np.float32)
    reps = -(-window_frames // n)
    return np.tile(frames, (reps, 1))[:window_frames].astype(np.float32, copy=False)
