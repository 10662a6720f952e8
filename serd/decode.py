"""Audio files in: decode in blocks, downmix, sanitise and resample to the model rate.

Used by ``serd --once`` (and by tests and the bench to feed the streaming path from
files).  Files are read block by block, so an hour-long recording needs no more memory than
a short one; resampling uses ``soxr``'s streaming resampler, the same one the microphone
capture uses, so results do not depend on block size.  Anything libsndfile reads works
(WAV of any sample format, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...:
``soundfile.available_formats()``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

_LOGGER = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".mp3")

# Sample rates a recording of speech can plausibly have.  A corrupt header outside this
# range is refused: at 1 Hz a 2 kB file would "decode" to hours of upsampled audio.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000
# Upper bound on the samples (frames x channels) read at once, whatever the header says,
# so memory per block stays small for many-channel or very high-rate files.
_MAX_BLOCK_SAMPLES = 1 << 20


class AudioError(Exception):
    """A file cannot be used as audio; the message says why, in one line."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libsndfile prefixes its messages with the path; drop it to keep the line short.
    if msg.startswith("Error opening"):
        msg = msg.split(":", 1)[-1].strip()
    return msg


def probe(path: str | Path) -> AudioInfo:
    """Header information, or :class:`AudioError` saying what is wrong with the file."""
    p = Path(path)
    if not p.exists():
        raise AudioError("no such file")
    if p.is_dir():
        raise AudioError("is a folder, not an audio file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot read it: {exc.strerror}") from None
    if size == 0:
        raise AudioError("the file is empty (0 bytes)")
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(
            f"not a readable audio file ({_describe(exc)}); serd reads what libsndfile "
            "reads: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF and more (serd --help lists them)"
        ) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError("the header gives no valid sample rate or channel count")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"implausible sample rate {info.samplerate} Hz in the header (serd reads "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz); the file is probably corrupt"
        )
    if info.frames <= 0:
        raise AudioError("the file holds no audio samples (empty or truncated)")
    return AudioInfo(p, info.samplerate, info.channels, info.frames, info.format, info.subtype)


class Resampler:
    """Streaming resampler to ``target_rate`` (a pass-through when rates match); mono
    unless ``channels`` says otherwise (then blocks are (frames, channels))."""

    def __init__(self, source_rate: int, target_rate: int, channels: int = 1) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self._stream = (
            None
            if source_rate == target_rate
            else soxr.ResampleStream(source_rate, target_rate, channels, dtype="float32",
                                     quality="HQ")
        )

    def __call__(self, x: npt.NDArray[np.float32], last: bool = False) -> npt.NDArray[np.float32]:
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(x, last=last), dtype=np.float32)


def sanitise(block: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], int]:
    """Replace NaN/Inf by 0 and clip to [-1, 1]; return the block and how many were bad."""
    finite = np.isfinite(block)
    bad = int(block.size - np.count_nonzero(finite))
    if bad:
        block = np.where(finite, block, np.float32(0.0))
    np.clip(block, -1.0, 1.0, out=block)
    return block, bad


def read_blocks(
    path: str | Path,
    target_rate: int,
    block_seconds: float = 1.0,
    info: AudioInfo | None = None,
    *,
    mix: bool = True,
) -> Iterator[npt.NDArray[np.float32]]:
    """Yield the file as mono float32 blocks at ``target_rate`` (channels are averaged);
    with ``mix=False``, as (frames, channels) blocks, each channel kept apart."""
    info = info or probe(path)
    resample = Resampler(info.sample_rate, target_rate, 1 if mix else info.channels)
    block_frames = max(1, min(int(block_seconds * info.sample_rate),
                              _MAX_BLOCK_SAMPLES // info.channels))
    bad_total = 0
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                if not mix:
                    mono = data
                elif data.shape[1] > 1:
                    mono = data.mean(axis=1, dtype=np.float32)
                else:
                    mono = data[:, 0]
                mono, bad = sanitise(np.ascontiguousarray(mono))
                bad_total += bad
                out = resample(mono)
                if out.size:
                    yield out
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(
            f"decoding failed part-way ({_describe(exc)}); the file may be truncated"
        ) from None
    tail = resample(np.zeros(0 if mix else (0, info.channels), np.float32), last=True)
    if tail.size:
        yield tail
    if bad_total:
        _LOGGER.warning(
            "%s: %d samples were NaN or infinite and were replaced by silence", info.path, bad_total
        )


def load(path: str | Path, target_rate: int) -> npt.NDArray[np.float32]:
    """A whole file as one mono float32 array at ``target_rate`` (for short clips)."""
    blocks = list(read_blocks(path, target_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def find_audio(paths: list[str | Path]) -> Iterator[Path]:
    """Expand folders recursively into audio files (sorted); files are passed through."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(
                q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in AUDIO_SUFFIXES
            )
        else:
            yield p
