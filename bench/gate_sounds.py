"""Seeded synthetic non-speech sounds of an office, for the gate benchmark.

ESC-50, the public environmental-sound set the issue names, could not be brought onto this
machine (see docs/gate.md), so the benchmark makes its own non-speech sounds (recorded ones,
from other public sources, run with ``python -m bench.gate --noise-dir DIR``).  Each is
modelled on how the real sound is produced, loosely but with the property that makes it
hard for a voice-activity gate:

* ``room``: pink noise with a faint mains hum (stationary, like ``bench.signals``).
* ``fan``: brown-ish broadband noise, blade-pass and motor tones, slow wobble
  (stationary, tonal: periodic at low frequencies).
* ``keyboard``: typing in word-like bursts of 3-8 keys at 4-9 keys/s; each key a press and
  a release click (resonant bursts at 1-5 kHz), the space bar a lower thud.
* ``mouse``: single and double clicks, short and sharp.
* ``paper``: rustling and crumpling, 0.2-1.5 s stretches of band-passed noise made of
  many tiny crackles.
* ``knock``: two to four knocks on a door, each a decaying mix of wood resonances
  (90-700 Hz, tonal for a few tens of milliseconds).
* ``cough``: one to three coughs, an explosive onset then a decaying noisy tail shaped by
  vocal-tract resonances, four in ten with a voiced part of 40-150 ms (the hardest case:
  a cough is made by a voice).
* ``breath``: inhale and exhale cycles, breathy band-passed noise with smooth 0.6-1.6 s
  envelopes, close to the microphone.
* ``ceramic``: a cup, plate or tile struck one to three times: a click, then three
  inharmonic partials at 500-5000 Hz ringing for 80-250 ms (decay time): periodic in the
  voice's band, at a steady pitch, for longer than a vowel (the recorded knocks on ceramic
  of docs/gate.md opened the earlier gate).

Every sound is drawn over room tone, and its level is the RMS of its loud parts, so the
``level_dbfs`` of a scene says how loud the events are, not how much silence lies between
them.  Everything is 16 kHz mono float32 and depends only on the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

RATE = 16000
Audio = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# New categories go last: each one's random stream is seeded with its index here.
CATEGORIES = ("room", "fan", "keyboard", "mouse", "paper", "knock", "cough", "breath",
              "ceramic")


def _spectral(rng: np.random.Generator, n: int, tilt: float) -> F64:
    """Noise with power ~ 1/f**tilt (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[1:] /= (f[1:] / 100.0) ** (tilt / 2)
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) or 1.0)


def _band(x: F64, lo: float, hi: float) -> F64:
    """Brick-wall band-pass by FFT (fine for noise bursts)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, x.size)


def _resonance(rng: np.random.Generator, f0: float, decay_s: float, seconds: float) -> F64:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / decay_s)


def _click(rng: np.random.Generator, centre_hz: float, decay_s: float) -> F64:
    """A short impulsive burst: white noise through a few resonances, fast decay."""
    n = int(max(6 * decay_s, 0.004) * RATE)
    t = np.arange(n) / RATE
    x = rng.standard_normal(n) * np.exp(-t / (decay_s * 0.5))
    for f in centre_hz * rng.uniform(0.7, 1.5, size=3):
        x += 2.0 * _resonance(rng, f, decay_s, n / RATE)
    return x


def _room(rng: np.random.Generator, n: int) -> F64:
    t = np.arange(n) / RATE
    hum = 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 100 * t + 1.0)
    return _spectral(rng, n, 1.0) + hum


def _fan(rng: np.random.Generator, n: int) -> F64:
    t = np.arange(n) / RATE
    blade = rng.uniform(25, 60)
    x = _spectral(rng, n, 1.6) + 0.6 * _spectral(rng, n, 0.5)
    for k in (1, 2, 3):
        x += 0.3 / k * np.sin(2 * np.pi * blade * k * t + rng.uniform(0, 6))
    x += 0.05 * np.sin(2 * np.pi * rng.uniform(180, 400) * t)  # motor whine
    return x * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))


def _place(out: F64, x: F64, at: int, gain: float = 1.0) -> None:
    end = min(out.size, at + x.size)
    if at < end:
        out[at:end] += gain * x[: end - at]


def _keyboard(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.1, 0.5) * RATE)
    while pos < n:
        for _ in range(int(rng.integers(3, 9))):
            space = rng.random() < 0.15
            press = _click(rng, 250 if space else rng.uniform(1500, 4500),
                           0.012 if space else rng.uniform(0.002, 0.006))
            _place(out, press, pos, rng.uniform(0.6, 1.0))
            release = _click(rng, rng.uniform(1500, 4500), rng.uniform(0.002, 0.005))
            _place(out, release, pos + int(rng.uniform(0.06, 0.12) * RATE), rng.uniform(0.2, 0.5))
            pos += int(RATE / rng.uniform(4, 9))
        pos += int(rng.uniform(0.2, 1.5) * RATE)
    return out


def _mouse(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.1, 0.8) * RATE)
    while pos < n:
        for _ in range(2 if rng.random() < 0.3 else 1):
            _place(out, _click(rng, rng.uniform(2000, 6000), 0.0015), pos)
            _place(out, _click(rng, rng.uniform(2000, 6000), 0.0015),
                   pos + int(rng.uniform(0.05, 0.1) * RATE), 0.6)
            pos += int(rng.uniform(0.12, 0.2) * RATE)
        pos += int(rng.uniform(0.4, 3.0) * RATE)
    return out


def _paper(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.1, 0.8) * RATE)
    while pos < n:
        m = int(rng.uniform(0.2, 1.5) * RATE)
        # Crackles: sparse impulses of random size, then band-passed.
        crackle = rng.standard_normal(m) * (rng.random(m) < rng.uniform(0.02, 0.2))
        crackle *= np.exp(rng.standard_normal(m))
        burst = _band(crackle + 0.3 * rng.standard_normal(m), 400, 7500)
        burst *= np.sin(np.linspace(0, np.pi, m)) ** 0.5
        _place(out, burst, pos)
        pos += m + int(rng.uniform(0.1, 2.0) * RATE)
    return out


def _knock(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.2, 1.0) * RATE)
    while pos < n:
        modes = rng.uniform([90, 180, 350], [160, 320, 700])
        for _ in range(int(rng.integers(2, 5))):
            k = _click(rng, 1200, 0.002) * 0.5
            hit = np.zeros(int(0.15 * RATE))
            hit[: k.size] += k
            for f, a in zip(modes, (1.0, 0.6, 0.3), strict=True):
                hit += a * _resonance(rng, f * rng.uniform(0.97, 1.03), rng.uniform(0.015, 0.04),
                                      0.15)
            _place(out, hit, pos, rng.uniform(0.7, 1.0))
            pos += int(rng.uniform(0.12, 0.25) * RATE)
        pos += int(rng.uniform(2.0, 6.0) * RATE)
    return out


def _ceramic(rng: np.random.Generator, n: int) -> F64:
    """A cup, plate or tile struck: a click, then a few inharmonic partials in the voice's
    band ringing for a few hundred milliseconds (steady pitch, exponential decay)."""
    out = np.zeros(n)
    pos = int(rng.uniform(0.2, 1.0) * RATE)
    while pos < n:
        base = rng.uniform(500, 1400)
        ratios = (1.0, rng.uniform(1.9, 2.3), rng.uniform(2.9, 3.6))
        for _ in range(int(rng.integers(1, 4))):
            m = int(0.6 * RATE)
            hit = np.zeros(m)
            k = _click(rng, 3000, 0.001)
            hit[: k.size] += k
            for r, a in zip(ratios, (1.0, 0.5, 0.25), strict=True):
                hit += a * _resonance(rng, base * r, rng.uniform(0.08, 0.25), 0.6)
            _place(out, hit, pos, rng.uniform(0.7, 1.0))
            pos += int(rng.uniform(0.15, 0.4) * RATE)
        pos += int(rng.uniform(1.5, 5.0) * RATE)
    return out


def _formants(x: F64, freqs: tuple[float, ...]) -> F64:
    """Crude vocal-tract colouring: sum of bands around each formant."""
    return sum((_band(x, f * 0.8, f * 1.25) for f in freqs), np.zeros_like(x))


def _cough(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.2, 1.0) * RATE)
    while pos < n:
        for _ in range(int(rng.integers(1, 4))):
            m = int(rng.uniform(0.25, 0.5) * RATE)
            t = np.arange(m) / RATE
            env = (1 - np.exp(-t / 0.005)) * np.exp(-t / rng.uniform(0.06, 0.15))
            f = tuple(rng.uniform([400, 1100, 2200], [800, 1800, 3200]))
            x = _formants(rng.standard_normal(m), f)
            x += 0.4 * _band(rng.standard_normal(m), 200, 6000)
            if rng.random() < 0.4:  # a short voiced part, "uhh", after the burst
                f0 = rng.uniform(90, 250)
                v = np.sign(np.sin(2 * np.pi * f0 * t)) * 0.5
                vlen = int(rng.uniform(0.04, 0.15) * RATE)
                v[vlen + int(0.03 * RATE):] = 0
                v[: int(0.03 * RATE)] = 0
                x += _formants(v, f)
            _place(out, x * env, pos)
            pos += m + int(rng.uniform(0.1, 0.3) * RATE)
        pos += int(rng.uniform(2.0, 8.0) * RATE)
    return out


def _breath(rng: np.random.Generator, n: int) -> F64:
    out = np.zeros(n)
    pos = int(rng.uniform(0.1, 0.5) * RATE)
    while pos < n:
        for gain in (0.6, 1.0):  # inhale, exhale
            m = int(rng.uniform(0.6, 1.6) * RATE)
            f = tuple(rng.uniform([500, 1200], [900, 2200]))
            x = _formants(rng.standard_normal(m), f)
            x += 0.5 * _band(rng.standard_normal(m), 150, 4000)
            x *= np.sin(np.linspace(0, np.pi, m)) ** 2
            _place(out, x, pos, gain)
            pos += m + int(rng.uniform(0.1, 0.4) * RATE)
        pos += int(rng.uniform(1.0, 3.0) * RATE)
    return out


_EVENTS: dict[str, Callable[[np.random.Generator, int], F64]] = {
    "keyboard": _keyboard, "mouse": _mouse, "paper": _paper, "knock": _knock,
    "ceramic": _ceramic, "cough": _cough, "breath": _breath,
}


def active_rms(x: F64) -> float:
    """RMS over the 10 ms blocks within 20 dB of the loudest: the level of the events."""
    b = RATE // 100
    k = x.size // b
    if k == 0:
        return float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    ms = np.mean(x[: k * b].reshape(k, b) ** 2, axis=1)
    loud = ms[ms > ms.max() * 0.01]
    return float(np.sqrt(np.mean(loud))) if loud.size else 0.0


def sound(category: str, seconds: float, level_dbfs: float, seed: int = 0,
          room_dbfs: float = -60.0) -> Audio:
    """``seconds`` of ``category`` at ``level_dbfs`` (RMS of its loud parts) over room tone
    at ``room_dbfs`` (``room`` and ``fan`` are the room tone: ``level_dbfs`` is their RMS)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown sound category {category!r}; choose from {CATEGORIES}")
    n = round(seconds * RATE)
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    if category in ("room", "fan"):
        x = _room(rng, n) if category == "room" else _fan(rng, n)
        x *= 10 ** (level_dbfs / 20) / (np.sqrt(np.mean(x**2)) or 1.0)
        return x.astype(np.float32)
    ev = _EVENTS[category](rng, n)
    ev *= 10 ** (level_dbfs / 20) / (active_rms(ev) or 1.0)
    bed = _room(rng, n)
    bed *= 10 ** (room_dbfs / 20) / (np.sqrt(np.mean(bed**2)) or 1.0)
    return np.clip(ev + bed, -1, 1).astype(np.float32)
