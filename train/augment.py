"""Waveform augmentation (16 kHz float32 mono): noise, gain, shift, speed, telephone channel.

Every function keeps the length and dtype of its input (speed perturbation is fitted back
to the input length by centred crop/pad: corpus clips have silence at both ends).  All
randomness comes from the ``numpy.random.Generator`` passed in, so a copy made with the
same seed is the same copy.  :func:`augment_copy` derives that generator from
(seed, file path, copy index), so cached copies are reproducible and independent of the
order in which files are processed.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from scipy import fft as sfft
from scipy import signal

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges for one augmented copy of a clip (``augment.params`` of
    ``train/config.yaml``).  Each ``p_*`` is the probability (0..1) that a copy gets that
    treatment; each ``*_range`` is (low, high) of a uniform draw.  The defaults are those
    of ``train/config.yaml`` (a test keeps them equal), i.e. the shipped model's recipe."""

    p_speed: float = 0.7
    speed_range: tuple[float, float] = (0.88, 1.12)
    """Resampling speed factor (changes tempo and pitch together, Kaldi-style)."""
    p_gain: float = 1.0
    gain_db_range: tuple[float, float] = (-15.0, 6.0)
    """Gain in dB (clipped to [-1, 1] as a sound card would)."""
    p_shift: float = 1.0
    shift_seconds: float = 0.3
    """Largest time shift either way (zeros fill the gap)."""
    p_telephone: float = 0.45
    """The telephone channel: 300-3400 Hz band-pass, 8 kHz mu-law round trip."""
    p_noise: float = 0.6
    snr_db_range: tuple[float, float] = (8.0, 35.0)
    """Signal-to-noise ratio of the added noise, dB."""
    p_reverb: float = 0.2
    """Synthetic room (exponentially decaying noise impulse response)."""
    rt60_range: tuple[float, float] = (0.15, 0.6)
    """Reverberation time of the synthetic room, seconds."""

    def __post_init__(self) -> None:
        for name in ("p_speed", "p_gain", "p_shift", "p_telephone", "p_noise", "p_reverb"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be a probability, 0..1")
        for name in ("speed_range", "gain_db_range", "snr_db_range", "rt60_range"):
            rng = getattr(self, name)
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ValueError(f"{name}: must be [low, high] with low <= high")
        if self.speed_range[0] <= 0:
            raise ValueError("speed_range: speed factors must be > 0")
        if self.rt60_range[0] <= 0:
            raise ValueError("rt60_range: reverberation times must be > 0 s")
        if self.shift_seconds < 0:
            raise ValueError("shift_seconds: must be >= 0 s")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentParams:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()}
        return cls(**fields)


def fit_length(x: F32, n: int) -> F32:
    """Centre-crop or zero-pad ``x`` to ``n`` samples."""
    if x.size == n:
        return x
    if x.size > n:
        a = (x.size - n) // 2
        return np.ascontiguousarray(x[a : a + n])
    out = np.zeros(n, np.float32)
    a = (n - x.size) // 2
    out[a : a + x.size] = x
    return out


def speed(x: F32, factor: float, sample_rate: int = 16000) -> F32:
    """Play ``factor`` times faster (pitch up by the same ratio), then fit to the input length."""
    if factor == 1.0 or x.size == 0:
        return x.astype(np.float32, copy=True)
    y = soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ")
    return fit_length(np.asarray(y, np.float32), x.size)


def gain(x: F32, db: float) -> F32:
    """Scale by ``db`` decibels, clipping to [-1, 1] as a sound card would."""
    return np.clip(x * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32)


def shift(x: F32, samples: int) -> F32:
    """Delay (positive) or advance (negative) by ``samples``; zeros fill the gap."""
    out = np.zeros_like(x, dtype=np.float32)
    if samples >= 0:
        out[samples:] = x[: x.size - samples] if samples < x.size else 0.0
    else:
        s = -samples
        out[: max(x.size - s, 0)] = x[s:]
    return out


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> F32:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    if n == 0:
        return np.zeros(0, np.float32)
    m = sfft.next_fast_len(n, real=True)  # prime lengths would make the FFT slow
    spec = sfft.rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    y = sfft.irfft(spec, m)[:n]
    y /= np.sqrt(np.mean(y * y)) + 1e-12
    return y.astype(np.float32)


def speech_power(x: F32, sample_rate: int = 16000) -> float:
    """Mean power of the louder 10 ms blocks (the speech, not the silence around it)."""
    block = max(1, sample_rate // 100)
    n = x.size // block
    if n == 0:
        return float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0
    p = np.mean(x[: n * block].reshape(n, block).astype(np.float64) ** 2, axis=1)
    thr = np.percentile(p, 50)
    loud = p[p >= thr]
    return float(loud.mean()) if loud.size else 0.0


def add_noise(x: F32, snr_db: float, rng: np.random.Generator, exponent: float = 0.0) -> F32:
    """Add coloured noise at ``snr_db`` relative to the speech power of ``x``."""
    p = speech_power(x)
    if p <= 0.0:
        return x.astype(np.float32, copy=True)
    noise = coloured_noise(x.size, exponent, rng) * np.float32(np.sqrt(p / 10 ** (snr_db / 10)))
    return np.clip(x + noise, -1.0, 1.0).astype(np.float32)


def reverb(x: F32, rt60: float, rng: np.random.Generator, sample_rate: int = 16000) -> F32:
    """Convolve with a synthetic room response (decaying noise, direct path first)."""
    n = max(1, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir * ir))
    y = signal.fftconvolve(x, ir)[: x.size]
    peak_in, peak_out = float(np.max(np.abs(x), initial=0.0)), float(np.max(np.abs(y), initial=0.0))
    if peak_out > 0:
        y *= peak_in / peak_out
    return y.astype(np.float32)


_MU = 255.0


def mulaw_roundtrip(x: F32) -> F32:
    """G.711-style 8-bit mu-law encode and decode."""
    c = np.clip(x, -1.0, 1.0).astype(np.float64)
    y = np.sign(c) * np.log1p(_MU * np.abs(c)) / np.log1p(_MU)
    q = np.clip(np.round(y * 127.0), -127, 127) / 127.0  # 8 bits
    out = np.sign(q) * ((1.0 + _MU) ** np.abs(q) - 1.0) / _MU
    return out.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _bandpass_sos(sample_rate: int) -> np.ndarray:
    return signal.butter(6, [300.0, 3400.0], btype="bandpass", fs=sample_rate, output="sos")


def telephone(x: F32, sample_rate: int = 16000) -> F32:
    """Narrowband phone line: 300-3400 Hz band-pass, 8 kHz mu-law round trip, back to 16 kHz."""
    if x.size == 0:
        return x.astype(np.float32, copy=True)
    y = signal.sosfilt(_bandpass_sos(sample_rate), x.astype(np.float64))
    nb = soxr.resample(y.astype(np.float32), sample_rate, 8000, quality="HQ")
    nb = mulaw_roundtrip(nb)
    back = soxr.resample(nb, 8000, sample_rate, quality="HQ")
    return fit_length(np.asarray(back, np.float32), x.size)


def augment(
    x: F32, params: AugmentParams, rng: np.random.Generator, sample_rate: int = 16000
) -> F32:
    """One random augmented version of ``x`` (same length, float32)."""
    y = np.asarray(x, np.float32)
    n = y.size
    if rng.random() < params.p_speed:
        y = speed(y, float(rng.uniform(*params.speed_range)), sample_rate)
    if rng.random() < params.p_reverb:
        y = reverb(y, float(rng.uniform(*params.rt60_range)), rng, sample_rate)
    if rng.random() < params.p_shift:
        s = int(params.shift_seconds * sample_rate)
        y = shift(y, int(rng.integers(-s, s + 1)))
    if rng.random() < params.p_gain:
        y = gain(y, float(rng.uniform(*params.gain_db_range)))
    if rng.random() < params.p_telephone:
        y = telephone(y, sample_rate)
    if rng.random() < params.p_noise:
        y = add_noise(y, float(rng.uniform(*params.snr_db_range)), rng,
                      exponent=float(rng.choice([0.0, 1.0, 2.0])))
    return fit_length(y.astype(np.float32, copy=False), n)


def copy_rng(seed: int, path: str, copy: int) -> np.random.Generator:
    """The generator for copy ``copy`` of file ``path`` (independent of processing order)."""
    key = zlib.crc32(path.encode("utf-8"))
    return np.random.default_rng([seed, key, copy])


def augment_copy(x: F32, params: AugmentParams, seed: int, path: str, copy: int) -> F32:
    """Deterministic augmented copy number ``copy`` (>= 1) of the file at ``path``."""
    return augment(x, params, copy_rng(seed, path, copy))
