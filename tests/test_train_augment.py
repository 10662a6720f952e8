"""Waveform augmentation: lengths, dtypes, the telephone channel, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from train.augment import (
    AugmentParams,
    add_noise,
    augment,
    augment_copy,
    fit_length,
    gain,
    mulaw_roundtrip,
    reverb,
    shift,
    speech_power,
    speed,
    telephone,
)

RATE = 16000


def _speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    ph = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * ph) / k for k in range(1, 40)) * 0.1
    x += 0.02 * rng.standard_normal(n)  # broadband energy up to 8 kHz
    env = np.clip(np.sin(np.pi * t / seconds) * 2, 0, 1)
    return (x * env).astype(np.float32)


def _energy_above(x: np.ndarray, hz: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    return float(spec[f > hz].sum() / spec.sum())


@pytest.mark.parametrize("fn", [
    lambda x, r: speed(x, 0.9),
    lambda x, r: speed(x, 1.1),
    lambda x, r: gain(x, -10.0),
    lambda x, r: gain(x, 12.0),
    lambda x, r: shift(x, 1234),
    lambda x, r: shift(x, -1234),
    lambda x, r: add_noise(x, 10.0, r, exponent=1.0),
    lambda x, r: reverb(x, 0.3, r),
    lambda x, r: telephone(x),
    lambda x, r: augment(x, AugmentParams(), r),
])
def test_augmentations_keep_length_and_dtype(fn) -> None:
    x = _speechlike()
    y = fn(x, np.random.default_rng(0))
    assert y.dtype == np.float32
    assert y.shape == x.shape
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y)) <= 1.0


def test_telephone_removes_energy_above_4khz() -> None:
    x = _speechlike()
    assert _energy_above(x, 4000) > 1e-3
    y = telephone(x)
    assert _energy_above(y, 4000) < 1e-5
    assert _energy_above(y, 3700) < 2e-3  # band edge 3.4 kHz
    # speech in the band survives: 500-3000 Hz power within 3 dB
    def band(z: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(z.astype(np.float64))) ** 2
        f = np.fft.rfftfreq(z.size, 1 / RATE)
        return float(spec[(f > 500) & (f < 3000)].sum())

    assert 0.5 < band(y) / band(x) < 2.0


def test_mulaw_roundtrip_is_8bit_close() -> None:
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    y = mulaw_roundtrip(x)
    assert np.unique(y).size <= 255
    assert np.max(np.abs(y - x)) < 0.05


def test_add_noise_hits_the_snr() -> None:
    x = _speechlike()
    y = add_noise(x, 10.0, np.random.default_rng(1))
    noise = y - x
    snr = 10 * np.log10(speech_power(x) / np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.5


def test_speed_changes_pitch_by_the_factor() -> None:
    t = np.arange(RATE) / RATE
    x = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    y = speed(x, 1.1)
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    assert abs(f[np.argmax(np.abs(np.fft.rfft(y)))] - 220) <= 2


def test_fit_length_and_shift() -> None:
    x = np.arange(10, dtype=np.float32)
    assert fit_length(x, 6).tolist() == [2, 3, 4, 5, 6, 7]
    assert fit_length(x[:4], 6).tolist() == [0, 0, 1, 2, 3, 0]
    assert shift(x, 3)[:4].tolist() == [0, 0, 0, 0]
    assert shift(x, -3)[-3:].tolist() == [0, 0, 0]


def test_copies_are_reproducible_and_distinct() -> None:
    x = _speechlike()
    a = augment_copy(x, AugmentParams(), seed=7, path="a.wav", copy=1)
    b = augment_copy(x, AugmentParams(), seed=7, path="a.wav", copy=1)
    c = augment_copy(x, AugmentParams(), seed=7, path="a.wav", copy=2)
    d = augment_copy(x, AugmentParams(), seed=8, path="a.wav", copy=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)
