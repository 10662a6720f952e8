"""Broken and odd audio files through ``serd.decode`` and ``serd --once``.

Every file is generated here: broken ones (zero bytes, text named ``.wav``, a header cut
short, a header with no samples, an implausible sample rate) and odd but valid ones
(8-bit, 24-bit, 32-bit float holding NaN/Inf/huge values, 8 kHz, 96 kHz, six channels,
10 ms long, pure DC, full-scale clipped speech).  ``serd --once`` must print one line per
unusable file (no traceback), still process the good ones, and exit with code 2.

Long files are written block by block (never held in memory) and decoded in blocks: the
child's peak RSS for a long file stays within a few MB of a short one.  The full hour is
``slow`` and runs with ``SERD_SLOW=1``; CI runs a 15-minute file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serd.decode import AudioError, load, probe, read_blocks

RATE = 16000
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
SPEECH = "1001_IEO_ANG_HI.flac"

# name -> (sample rate, channels, seconds) of the valid-but-odd files
ODD = {
    "u8.wav": (16000, 1, 1.0),
    "s24.wav": (44100, 2, 1.0),
    "f32_nan_inf.wav": (16000, 1, 1.0),
    "narrow_8k.wav": (8000, 1, 1.5),
    "hires_96k.wav": (96000, 1, 0.5),
    "six_channels.wav": (48000, 6, 1.0),
    "ten_ms.wav": (16000, 1, 0.01),
    "dc.wav": (16000, 1, 2.0),
    "clipped_speech.wav": (16000, 1, None),  # duration of the speech clip
}
BROKEN = {
    "zero_bytes.wav": "empty (0 bytes)",
    "text.wav": "not a readable audio file",
    "truncated_header.wav": "not a readable audio file",
    "header_only.wav": "no audio samples",
    "rate_1hz.wav": "implausible sample rate",
}


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def make_corpus(d: Path, data_dir: Path) -> None:
    """Write every odd and broken file into ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / "u8.wav", _tone(16000, 1.0), 16000, subtype="PCM_U8")
    sf.write(d / "s24.wav", _tone(44100, 1.0, 2), 44100, subtype="PCM_24")
    x = _tone(16000, 1.0)[:, 0]
    x[1000:1100] = np.nan
    x[2000:2050] = np.inf
    x[3000:3050] = -np.inf
    x[4000:4100] = 1e30  # finite but absurd: clipped to full scale
    sf.write(d / "f32_nan_inf.wav", x, 16000, subtype="FLOAT")
    sf.write(d / "narrow_8k.wav", _tone(8000, 1.5), 8000, subtype="PCM_16")
    sf.write(d / "hires_96k.wav", _tone(96000, 0.5), 96000, subtype="PCM_24")
    six = _tone(48000, 1.0, 6) * np.linspace(1.0, 0.2, 6)[None, :]
    sf.write(d / "six_channels.wav", six, 48000, subtype="PCM_16")
    sf.write(d / "ten_ms.wav", _tone(16000, 0.01), 16000, subtype="PCM_16")
    sf.write(d / "dc.wav", np.full(2 * 16000, 0.5, np.float32), 16000, subtype="PCM_16")
    speech = load(data_dir / SPEECH, RATE)
    sf.write(d / "clipped_speech.wav", np.clip(speech * 30, -1, 1), RATE, subtype="PCM_16")

    (d / "zero_bytes.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is a meeting note, not audio\n" * 20)
    full = (d / "s24.wav").read_bytes()
    (d / "truncated_header.wav").write_bytes(full[:22])
    (d / "header_only.wav").write_bytes(full[:44])
    # A valid 16-bit file whose header claims 1 Hz: 64 kB would "be" 9 hours at 16 kHz.
    sf.write(d / "rate_1hz.wav", _tone(16000, 1.0), 16000, subtype="PCM_16")
    raw = bytearray((d / "rate_1hz.wav").read_bytes())
    assert raw[24:28] == (16000).to_bytes(4, "little")
    raw[24:28] = (1).to_bytes(4, "little")
    raw[28:32] = (2).to_bytes(4, "little")  # byte rate, consistent with the lie
    (d / "rate_1hz.wav").write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("bad-audio")
    make_corpus(d, data_dir)
    return d


def serd(*args: str, model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serd.cli", "--model", str(model), *args],
        capture_output=True, text=True, timeout=180, env=ENV, check=False,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    """serd's one-line errors; its notes (``serd: note: ...``, e.g. that a stereo file was
    mixed to one channel) are not errors."""
    return [line for line in stderr.splitlines()
            if line.startswith("serd: ") and not line.startswith("serd: note: ")]


# -- decoding, file by file ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_files_decode_to_finite_mono_at_the_model_rate(
    corpus: Path, data_dir: Path, name: str
) -> None:
    rate, channels, seconds = ODD[name]
    info = probe(corpus / name)
    assert (info.sample_rate, info.channels) == (rate, channels)
    blocks = list(read_blocks(corpus / name, RATE, block_seconds=0.25, info=info))
    x = np.concatenate(blocks)
    assert x.dtype == np.float32
    assert x.ndim == 1
    assert np.isfinite(x).all()
    if seconds is None:
        seconds = sf.info(str(data_dir / SPEECH)).duration
    assert abs(x.size - seconds * RATE) <= RATE * 0.002 + 2, (x.size, seconds)


def test_nan_and_inf_become_silence_and_are_counted(
    corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="serd.decode")
    x = np.concatenate(list(read_blocks(corpus / "f32_nan_inf.wav", RATE)))
    assert np.isfinite(x).all()
    assert np.abs(x[1010:1090]).max() < 0.05  # the NaN stretch is silent (resampler ringing)
    assert np.abs(x[4010:4090]).max() == pytest.approx(1.0, abs=0.05)  # 1e30 -> full scale
    warnings = [r.getMessage() for r in caplog.records]
    assert any("200 samples were NaN or infinite" in w for w in warnings), warnings


def _decode_all(path: Path) -> None:
    for _ in read_blocks(path, RATE, info=probe(path)):
        pass


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_one_line_audio_error(corpus: Path, name: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(AudioError) as exc:
        _decode_all(corpus / name)
    msg = str(exc.value)
    assert BROKEN[name] in msg
    assert "\n" not in msg
    assert time.monotonic() - t0 < 10  # refused up front, not after decoding hours of audio


def test_a_folder_and_a_missing_path_are_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        probe(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="folder"):
        probe(tmp_path)


def test_rate_1hz_is_refused_before_decoding(corpus: Path) -> None:
    """Without the plausibility check this 32 kB file decoded to 9 hours of audio."""
    assert (corpus / "rate_1hz.wav").stat().st_size < 40_000
    with pytest.raises(AudioError, match=r"implausible sample rate 1 Hz"):
        probe(corpus / "rate_1hz.wav")


# -- serd --once on the whole mix ---------------------------------------------------------


def test_once_reports_each_bad_file_in_one_line_and_processes_the_good_ones(
    corpus: Path, model_path: Path
) -> None:
    missing = corpus / "missing.wav"
    r = serd("--once", str(corpus), str(missing), "--json", model=model_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = error_lines(r.stderr)
    bad = [*BROKEN, "missing.wav"]
    assert len(errors) == len(bad), r.stderr
    for name in bad:
        assert sum(name in e for e in errors) == 1, (name, errors)
    summaries = {Path(s["file"]).name: s for s in records(r.stdout) if s["type"] == "summary"}
    assert set(summaries) == set(ODD)
    for name, s in summaries.items():
        assert s["duration_s"] > 0, name
        assert all(np.isfinite(v) for v in s["probs"].values()), name
    # Stationary input is not speech; clipped speech still is, and is classified.
    assert summaries["dc.wav"]["speech_s"] == 0
    assert summaries["ten_ms.wav"]["label"] is None
    clipped = summaries["clipped_speech.wav"]
    assert clipped["speech_s"] > 0.5
    assert abs(sum(clipped["probs"].values()) - 1.0) < 0.02
    assert "NaN or infinite" in r.stderr  # the bad samples are reported, as a warning


def test_once_timeline_mode_survives_the_same_mix(corpus: Path, model_path: Path) -> None:
    r = serd("--once", str(corpus), model=model_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(error_lines(r.stderr)) == len(BROKEN)
    assert r.stdout.count("verdict:") == len(ODD)


def test_once_with_only_bad_files_exits_2(corpus: Path, model_path: Path) -> None:
    r = serd("--once", str(corpus / "text.wav"), str(corpus / "zero_bytes.wav"),
             model=model_path)
    assert r.returncode == 2
    assert len(error_lines(r.stderr)) == 2
    # No timeline, only the run's closing total, which counts the unreadable files.
    assert r.stdout.splitlines() == ["total: 0 files, 0.0 s of speech in 0.0 s of audio; "
                                     "verdicts: none; no speech found: 0; unreadable: 2"]


# -- long files: decoded in blocks, memory stays flat ------------------------------------


def write_long_file(path: Path, seconds: float, data_dir: Path) -> float:
    """Speech clips with pauses, streamed to ``path`` block by block; its duration."""
    clips = [load(p, RATE) for p in sorted(data_dir.glob("*.flac"))]
    rng = np.random.default_rng(7)
    written = 0
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16") as f:
        while written < seconds * RATE:
            clip = clips[int(rng.integers(len(clips)))]
            pause = np.zeros(int(rng.integers(RATE // 4, RATE)), np.float32)
            f.write(clip)
            f.write(pause)
            written += clip.size + pause.size
    return written / RATE


def run_once_measuring_rss(path: Path, model: Path) -> tuple[int, float, dict]:
    """``serd --once --json`` as a child; (its own peak RSS in bytes, wall s, summary)."""
    out = path.with_suffix(".jsonl")
    t0 = time.monotonic()
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serd.cli", "--model", str(model), "--once", str(path),
             "--json", "-q"],
            stdout=stdout, stderr=subprocess.PIPE, env=ENV,
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    with out.open("rb") as f:
        f.seek(max(0, out.stat().st_size - 4096))
        summary = json.loads(f.read().splitlines()[-1])
    out.unlink()
    return usage.ru_maxrss * 1024, wall, summary


@pytest.fixture
def rss_baseline(tmp_path: Path, data_dir: Path, model_path: Path) -> int:
    short = tmp_path / "short.wav"
    write_long_file(short, 5, data_dir)
    rss, _, summary = run_once_measuring_rss(short, model_path)
    assert summary["type"] == "summary"
    return rss


def _check_long(tmp_path: Path, data_dir: Path, model_path: Path, baseline: int,
                seconds: float) -> None:
    path = tmp_path / "long.wav"
    duration = write_long_file(path, seconds, data_dir)
    size = path.stat().st_size
    rss, wall, summary = run_once_measuring_rss(path, model_path)
    path.unlink()
    assert summary["type"] == "summary"
    assert summary["duration_s"] == pytest.approx(duration, abs=0.05)
    grown = rss - baseline
    print(f"{seconds / 60:.0f} min ({size / 1e6:.0f} MB file) in {wall:.1f} s: peak RSS "
          f"{rss / 1e6:.1f} MB, short file {baseline / 1e6:.1f} MB, +{grown / 1e6:.1f} MB")
    # Holding the audio would cost >= the file size (int16) or twice that (float32); what
    # may grow is only the per-window results --once keeps for its summary (~1 kB each).
    assert grown < min(32e6, size / 4), f"peak RSS grew by {grown / 1e6:.1f} MB"


def test_fifteen_minute_file_is_read_in_blocks(
    tmp_path: Path, data_dir: Path, model_path: Path, rss_baseline: int
) -> None:
    _check_long(tmp_path, data_dir, model_path, rss_baseline, 15 * 60)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SERD_SLOW"), reason="slow: set SERD_SLOW=1")
def test_hour_long_file_is_read_in_blocks(
    tmp_path: Path, data_dir: Path, model_path: Path, rss_baseline: int
) -> None:
    _check_long(tmp_path, data_dir, model_path, rss_baseline, 3600)

