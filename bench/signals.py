"""The bench's audio: continuous speech, room noise, a call-like mix, a 3-second clip.

Speech comes from real recordings, read in place: ``--corpus DIR``, else CREMA-D (or RAVDESS)
under ``$SERD_CORPORA`` (the folder holding ``cremad/`` and ``ravdess/``), else the nine
committed fixtures in ``tests/data`` (said in the log: such figures do not compare with
docs/performance.md).  Clips are
picked deterministically (evenly over the sorted file list), so every run sees the same
audio.  Room noise is synthetic and seeded: pink noise at about -58 dBFS with a little
mains hum, i.e. a quiet office picked up by a cheap microphone (below the gate's -50 dBFS
absolute floor, so it never opens a segment by level alone).

* ``speech``: clips trimmed of their leading/trailing silence, levelled to -24 dBFS and
  butted together, over room noise: the gate stays open nearly all the time, the
  worst case (a monologue).
* ``silence``: room noise only.
* ``mixed``: speech turns (one to three levelled clips) separated by 1-4 s pauses of
  room noise, like one side of a call; the gate opens for the turns, not the pauses.

Everything is 16 kHz mono float32; :func:`write_wav` stores 16-bit WAV files for the
parts that need files (``serd --once``, paplay into the virtual microphone, replay).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from bench.common import ROOT, log

RATE = 16000
FIXTURES = ROOT / "tests" / "data"
NOISE_DBFS = -58.0

Audio = npt.NDArray[np.float32]


def _clips_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".flac", ".wav"))


def find_clips(corpus: Path | None = None, count: int = 60) -> list[Path]:
    """``count`` speech files spread evenly over ``corpus``, else ``$SERD_CORPORA``'s
    CREMA-D or RAVDESS, else the committed fixtures; FileNotFoundError (the bench's one
    line) when a folder given has none."""
    if corpus is not None:
        files = _clips_in(corpus)
        if not files:
            raise FileNotFoundError(f"--corpus {corpus}: no .flac or .wav files there")
    elif root := os.environ.get("SERD_CORPORA"):
        files = _clips_in(Path(root) / "cremad") or _clips_in(Path(root) / "ravdess")
        if not files:
            raise FileNotFoundError(f"$SERD_CORPORA={root}: no cremad/ or ravdess/ clips "
                                    "there; set it to the folder holding them, or pass "
                                    "--corpus DIR")
    else:
        files = _clips_in(FIXTURES)
        log(f"no --corpus and no $SERD_CORPORA: speech from the {len(files)} clips in "
            "tests/data (figures not comparable with docs/performance.md)")
    if len(files) <= count:
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def load_clip(path: Path) -> Audio:
    from serd.decode import load  # noqa: PLC0415

    return load(path, RATE)


def trim(x: Audio, margin_db: float = 35.0, pad_s: float = 0.03) -> Audio:
    """Cut leading and trailing stretches more than ``margin_db`` below the loudest 10 ms."""
    block = RATE // 100
    n = x.size // block
    if n == 0:
        return x
    ms = (x[: n * block].reshape(n, block).astype(np.float64) ** 2).mean(axis=1)
    db = 10 * np.log10(ms + 1e-20)
    loud = np.flatnonzero(db > db.max() - margin_db)
    pad = int(pad_s * RATE)
    lo = max(0, loud[0] * block - pad)
    hi = min(x.size, (loud[-1] + 1) * block + pad)
    return x[lo:hi]


def level(x: Audio, dbfs: float = -24.0) -> Audio:
    """``x`` scaled to ``dbfs`` RMS (one talker at a steady distance from the microphone)."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def room_noise(seconds: float, seed: int = 7, level_dbfs: float = NOISE_DBFS) -> Audio:
    """Seeded pink noise with a faint 50/100 Hz hum, at ``level_dbfs`` RMS."""
    n = round(seconds * RATE)
    if n == 0:
        return np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[1:] /= np.sqrt(f[1:] / 100.0)  # 1/f power
    spec[0] = 0
    pink = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE
    hum = 0.25 * np.sin(2 * np.pi * 50 * t) + 0.12 * np.sin(2 * np.pi * 100 * t + 1.0)
    x = pink / np.sqrt(np.mean(pink**2)) + hum
    x *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x**2))
    return x.astype(np.float32)


def _cycle(clips: Sequence[Audio], start: int = 0):
    i = start
    while True:
        yield clips[i % len(clips)]
        i += 1


def continuous_speech(clips: Sequence[Audio], seconds: float) -> Audio:
    """Trimmed clips back to back (with 60 ms joins) over room noise."""
    n = int(seconds * RATE)
    out = room_noise(seconds, seed=11)
    pos = 0
    gap = int(0.06 * RATE)
    for c in _cycle([level(trim(c)) for c in clips]):
        if pos >= n:
            break
        take = min(c.size, n - pos)
        out[pos : pos + take] += c[:take]
        pos += take + gap
    return np.clip(out, -1, 1)


def mixed_call(clips: Sequence[Audio], seconds: float, seed: int = 3) -> Audio:
    """Speech turns of 1-3 clips with 1-4 s pauses, over room noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = room_noise(seconds, seed=13)
    trimmed = [level(trim(c)) for c in clips]
    it = _cycle(trimmed, start=len(trimmed) // 2)
    pos = int(rng.uniform(0.3, 1.0) * RATE)
    while pos < n:
        for _ in range(int(rng.integers(1, 4))):
            c = next(it)
            take = min(c.size, n - pos)
            if take <= 0:
                break
            out[pos : pos + take] += c[:take]
            pos += take + int(0.12 * RATE)
        pos += int(rng.uniform(1.0, 4.0) * RATE)
    return np.clip(out, -1, 1)


def speech_fraction(x: Audio) -> float:
    """Share of 10 ms blocks more than 15 dB above the room noise (a rough figure)."""
    block = RATE // 100
    n = x.size // block
    ms = (x[: n * block].reshape(n, block).astype(np.float64) ** 2).mean(axis=1)
    return float(np.mean(10 * np.log10(ms + 1e-20) > NOISE_DBFS + 15))


def write_wav(path: Path, x: Audio) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, RATE, subtype="PCM_16")
    return path


def read_wav(path: Path) -> Audio:
    x, rate = sf.read(str(path), dtype="float32")
    assert rate == RATE, path
    return x
