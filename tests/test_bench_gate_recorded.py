"""bench.gate --noise-dir: recorded non-speech sounds, one folder per category."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.gate import RECORDED_LEVELS, RecordedNoise, Segment, main, run_noise
from bench.gate_sounds import RATE, active_rms, sound
from serd.gate import VadSettings


def _write(path: Path, x: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate)


@pytest.fixture
def noise_dir(tmp_path: Path) -> Path:
    root = tmp_path / "noise"
    # Two knock recordings at very different levels, one at another rate; a fan; a folder
    # with no audio (ignored) and a stray file at the top (ignored).
    _write(root / "knock" / "a.wav", sound("knock", 2.0, -20.0, seed=1))
    _write(root / "knock" / "sub" / "b.wav", sound("knock", 3.0, -50.0, seed=2))
    _write(root / "fan" / "f.flac", sound("fan", 4.0, -35.0, seed=3)[::2], rate=RATE // 2)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no audio here\n")
    (root / "stray.wav").write_bytes(b"")
    return root


def test_categories_are_the_folders_with_audio(noise_dir: Path) -> None:
    noise = RecordedNoise(noise_dir)
    assert noise.categories == ("fan", "knock")
    assert [p.name for p in noise.files["knock"]] == ["a.wav", "b.wav"]
    assert noise.seconds("knock") == pytest.approx(2.0 + 3.0 + 2 * RecordedNoise.GAP_S)
    assert noise.seconds("fan") == pytest.approx(4.0 + RecordedNoise.GAP_S, abs=0.01)


def test_each_recording_is_levelled_on_its_own(noise_dir: Path) -> None:
    noise = RecordedNoise(noise_dir)
    x = noise.sound("knock", None, -30.0).astype(np.float64)
    first, second = x[: 2 * RATE], x[round((2.0 + RecordedNoise.GAP_S) * RATE) :]
    # -20 and -50 dBFS recordings both come out at -30 dBFS (the room tone adds a little).
    for part in (first, second):
        assert 20 * np.log10(active_rms(part)) == pytest.approx(-30.0, abs=1.0)


def test_a_stretch_is_cut_from_a_seeded_offset_and_wraps(noise_dir: Path) -> None:
    noise = RecordedNoise(noise_dir)
    a = noise.sound("fan", 10.0, -40.0, seed=4)
    assert a.size == 10 * RATE  # longer than the recording: it wraps round
    assert np.array_equal(a, noise.sound("fan", 10.0, -40.0, seed=4))
    assert not np.array_equal(a, noise.sound("fan", 10.0, -40.0, seed=5))


def test_recordings_hit_counts_recordings_not_segments(noise_dir: Path) -> None:
    noise = RecordedNoise(noise_dir)
    second = round((2.0 + RecordedNoise.GAP_S + 1.0) * RATE)
    segs = [Segment(100, 200, 1), Segment(300, 400, 1), Segment(second, second + 10, 1)]
    assert noise.recordings_hit("knock", segs) == 2
    assert noise.recordings_hit("knock", []) == 0


def test_run_noise_uses_every_recording_at_every_level(noise_dir: Path) -> None:
    out = run_noise(VadSettings(), None, noise=RecordedNoise(noise_dir))
    assert set(out) == {"fan", "knock", "all"}
    knock = out["knock"]
    assert knock["seconds"] == pytest.approx(len(RECORDED_LEVELS) * 5.6, abs=0.05)
    assert knock["recordings"] == 2
    assert set(knock["recordings_opening_by_dbfs"]) == {f"{v:g}" for v in RECORDED_LEVELS}
    assert out["all"]["seconds"] == pytest.approx(knock["seconds"] + out["fan"]["seconds"])


def test_a_noise_dir_without_audio_is_one_clear_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["--noise-dir", str(tmp_path), "--gates", "voiced"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--noise-dir" in err and "sub-folder" in err
