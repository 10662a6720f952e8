"""Property-based fuzzing of the file-decoding path (``serd.decode.probe``/``read_blocks``).

Whatever bytes a file holds (random noise, or a valid WAV/FLAC/OGG/AIFF file with its
header or body mutated, truncated or spliced), decoding either yields finite float32
blocks (clipped to [-1, 1] before resampling) or raises :class:`serd.decode.AudioError`
with a one-line message: never any other exception, never a hang, never an unbounded
amount of output.

The example count is modest so the module stays well under a minute on a busy 2-core CI
machine; ``SERD_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_decode.py`` digs deeper.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serd.decode import AudioError, probe, read_blocks  # noqa: E402

TARGET_RATE = 16000
EXAMPLES = int(os.environ.get("SERD_FUZZ_EXAMPLES", "400"))
# A mutated header may legitimately describe a longer file than the bytes hold (the
# decoder stops at EOF), but never more than this many output samples for these tiny
# seeds: more would mean the header turned kilobytes into hours of audio.
MAX_OUTPUT_SAMPLES = 60 * TARGET_RATE

MAX_ABS = 4.0

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a loaded CI machine stalls at random; the per-example work is bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("SERD_FUZZ_RANDOM") is None,  # reproducible in CI
    database=None,
)


def _encode(fmt: str, subtype: str | None, rate: int, channels: int, seconds: float) -> bytes:
    n = max(1, int(rate * seconds))
    t = np.arange(n) / rate
    x = 0.4 * np.sin(2 * np.pi * 300 * t)[:, None] * np.linspace(1, 0.5, channels)[None, :]
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    "pcm16.wav": _encode("WAV", "PCM_16", 16000, 1, 0.2),
    "pcm24-stereo.wav": _encode("WAV", "PCM_24", 44100, 2, 0.1),
    "float.wav": _encode("WAV", "FLOAT", 8000, 1, 0.2),
    "u8.wav": _encode("WAV", "PCM_U8", 22050, 1, 0.1),
    "ulaw.wav": _encode("WAV", "ULAW", 8000, 1, 0.2),
    "adpcm.wav": _encode("WAV", "IMA_ADPCM", 16000, 1, 0.2),
    "pcm16-6ch.wav": _encode("WAV", "PCM_16", 48000, 6, 0.05),
    "pcm16.flac": _encode("FLAC", "PCM_16", 16000, 1, 0.3),
    "pcm24-stereo.flac": _encode("FLAC", "PCM_24", 48000, 2, 0.1),
    "vorbis.ogg": _encode("OGG", "VORBIS", 16000, 1, 0.3),
    "pcm16.aiff": _encode("AIFF", "PCM_16", 16000, 1, 0.1),
}
EXTREMES = [0, 1, 2, 7, 0x7F, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="serd-fuzz-") as d:
        yield Path(d)


def decode(path: Path) -> tuple[str, int]:
    """Decode like ``serd --once`` does; ('ok', samples) or ('error', 0)."""
    try:
        info = probe(path)
        total = 0
        for block in read_blocks(path, TARGET_RATE, block_seconds=0.5, info=info):
            assert block.dtype == np.float32
            assert block.ndim == 1
            assert np.isfinite(block).all()
            # Clipped to [-1, 1] before resampling; the resampler's ringing on full-scale
            # square waves overshoots a little, never without bound.
            assert float(np.abs(block).max(initial=0.0)) <= MAX_ABS
            total += block.size
            assert total <= MAX_OUTPUT_SAMPLES, (
                f"{path.name}: a {path.stat().st_size}-byte file decoded to more than "
                f"{MAX_OUTPUT_SAMPLES / TARGET_RATE:.0f} s of audio (header says "
                f"{info.sample_rate} Hz, {info.channels} ch, {info.frames} frames)"
            )
    except AudioError as exc:
        msg = str(exc)
        assert msg, "AudioError needs a message"
        assert "\n" not in msg, f"not one line: {msg!r}"
        return "error", 0
    return "ok", total


def _check(scratch: Path, name: str, data: bytes) -> None:
    path = scratch / name
    path.write_bytes(data)
    try:
        decode(path)  # anything but AudioError or an assertion fails the property
    finally:
        path.unlink(missing_ok=True)


# -- the seeds themselves decode ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_files_decode(scratch: Path, name: str) -> None:
    path = scratch / name
    path.write_bytes(SEEDS[name])
    status, samples = decode(path)
    assert status == "ok"
    assert samples > 0


# -- properties --------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096),
       suffix=st.sampled_from([".wav", ".flac", ".ogg", ".aiff", ".mp3", ".bin"]))
def test_random_bytes_only_raise_audio_error(scratch: Path, data: bytes, suffix: str) -> None:
    _check(scratch, "random" + suffix, data)


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 95), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_headers_only_raise_audio_error(
    scratch: Path, name: str, flips: list[tuple[int, int]]
) -> None:
    """Byte overwrites in the first 96 bytes: where RIFF/fmt/STREAMINFO/COMM fields live."""
    data = bytearray(SEEDS[name])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _check(scratch, name, bytes(data))


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    offset=st.integers(0, 92),
    value=st.sampled_from(EXTREMES),
    width=st.sampled_from([2, 4]),
    big_endian=st.booleans(),
)
def test_extreme_header_fields_only_raise_audio_error(
    scratch: Path, name: str, offset: int, value: int, width: int, big_endian: bool
) -> None:
    """A 16- or 32-bit field (rate, channels, sizes, bits) set to 0, 1, max, sign bit..."""
    data = bytearray(SEEDS[name])
    fmt = (">" if big_endian else "<") + ("H" if width == 2 else "I")
    if offset + width <= len(data):
        data[offset : offset + width] = struct.pack(fmt, value & (0xFFFF if width == 2 else
                                                                   0xFFFFFFFF))
    _check(scratch, name, bytes(data))


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    cut=st.floats(0.0, 1.0),
    splice=st.binary(max_size=256),
    where=st.floats(0.0, 1.0),
)
def test_truncated_and_spliced_files_only_raise_audio_error(
    scratch: Path, name: str, cut: float, splice: bytes, where: float
) -> None:
    """Cut anywhere (a crashed recorder), then random bytes inserted somewhere."""
    seed = SEEDS[name]
    data = seed[: int(len(seed) * cut)]
    at = int(len(data) * where)
    _check(scratch, name, data[:at] + splice + data[at:])


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    body=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1,
                  max_size=64),
)
def test_corrupted_bodies_only_raise_audio_error(
    scratch: Path, name: str, body: list[tuple[float, int]]
) -> None:
    """Bit rot anywhere in the file (compressed FLAC/Vorbis frames included)."""
    data = bytearray(SEEDS[name])
    for where, value in body:
        data[min(len(data) - 1, int(len(data) * where))] = value
    _check(scratch, name, bytes(data))
