"""The gate's cough check (serd.speechcheck.CoughCheck; vad.confirm_cough_threshold): a
logistic head on Silero's chunk traces (LSTM states and encoder outputs) pooled since a
tentative segment's start.  It pools the
same way however the stream is cut, it is wired into both ways a segment opens, it keeps
speech, and a damaged head stops the gate as it is built, in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.gate_sounds import sound
from serd.decode import load
from serd.gate import VadSettings, make_gate
from serd.speechcheck import (
    CHUNK,
    COUGH_WEIGHTS,
    TRACE_WIDTH,
    CoughCheck,
    SileroVad,
    SpeechCheckError,
    _cough_head,
    chunk_trace,
    cough_features,
)
from serd.validate import ConfigError, build
from serd_testkit.audio import gate_segments

RATE = 16000


def traces_of(x: np.ndarray) -> np.ndarray:
    """The cough check's per-chunk input over ``x``."""
    vad = SileroVad()
    n = x.size // CHUNK
    vad.process(x[: n * CHUNK].reshape(n, CHUNK))
    return chunk_trace(vad)


def test_silero_exposes_one_rectified_trace_per_chunk(data_dir: Path) -> None:
    x = load(data_dir / "1091_TIE_ANG_XX.flac", RATE)
    vad = SileroVad()
    n = x.size // CHUNK
    vad.process(x[: n * CHUNK].reshape(n, CHUNK))
    assert vad.states.shape == vad.encoded.shape == (n, 128)
    s = traces_of(x)
    assert s.shape == (n, TRACE_WIDTH) == (n, 256)
    np.testing.assert_array_equal(s, np.hstack([vad.states, vad.encoded]))
    assert s.dtype == np.float32
    assert (s >= 0).all()
    assert vad.states.max() > 0
    assert vad.encoded.max() > 0
    vad.process(np.zeros((0, CHUNK), np.float32))
    assert chunk_trace(vad).shape == (0, TRACE_WIDTH)


def test_pooling_is_the_segment_so_far_however_the_chunks_come(data_dir: Path) -> None:
    """Per chunk: the head on the mean and maximum of every trace value since the reset; fed
    in one call or in pieces of 1, 3 and 7 chunks, the same probabilities."""
    s = traces_of(load(data_dir / "1091_TIE_SAD_XX.flac", RATE))
    check = CoughCheck()
    whole = check.update(s)
    with np.load(COUGH_WEIGHTS) as z:
        mean, scale, coef, b = z["mean"], z["scale"], z["coef"], float(z["intercept"])
    n = np.arange(1, len(s) + 1)[:, None]
    f = cough_features(np.cumsum(s, 0, dtype=np.float64) / n, np.maximum.accumulate(s, 0))
    ref = 1 / (1 + np.exp(-(((f - mean) / scale) @ coef + b)))
    np.testing.assert_allclose(whole, ref, atol=1e-5)
    for step in (1, 3, 7):
        check.reset()
        parts = np.concatenate([check.update(s[i : i + step]) for i in range(0, len(s), step)])
        np.testing.assert_allclose(parts, whole, atol=1e-5)
    check.reset()
    assert check.update(s[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"chunk_trace\(vad\) rows, \(n, 256\)"):
        check.update(s[:, :128])  # the states alone: the sixth round's input


def test_speech_fixtures_do_not_read_as_coughs(data_dir: Path) -> None:
    """Every CREMA-D fixture reads as speech (below the default threshold) by the time its
    first second has been heard."""
    t = VadSettings().confirm_cough_threshold
    for path in sorted(data_dir.glob("*.flac")):
        p = CoughCheck().update(traces_of(load(path, RATE)))
        assert p[: 32].min() < t, path.name


def opened(x: np.ndarray, vad: VadSettings) -> int:
    gate = make_gate(vad, 0.01, RATE)
    events = []
    for i in range(0, x.size // 800 * 800, 800):
        events += gate.process(x[i : i + 800].reshape(-1, 160))
    return len([e for e in events if e.kind == "start"])


def test_a_segment_opens_only_while_the_check_reads_below_the_threshold(
        data_dir, monkeypatch) -> None:
    """Wiring: with a check that hears a cough in everything, nothing opens, neither at
    once nor late; at threshold 1 there is no check, and the gate is the fifth round's."""
    clip = load(data_dir / "1091_TIE_ANG_XX.flac", RATE)
    x = np.concatenate([sound("room", 1.0, -60.0, seed=1), clip,
                        sound("room", 1.5, -60.0, seed=2)]).astype(np.float32)
    late_only = VadSettings(confirm_threshold=0.999999, confirm_late_threshold=0.01)
    assert opened(x, VadSettings()) == 1
    assert opened(x, VadSettings(confirm_cough_threshold=1.0)) == 1
    assert opened(x, late_only) == 1
    assert make_gate(VadSettings(confirm_cough_threshold=1.0), 0.01,
                     RATE)._confirm._cough is None  # type: ignore[union-attr]
    monkeypatch.setattr(CoughCheck, "update", lambda self, s: np.full(len(s), 0.95))
    assert opened(x, VadSettings()) == 0
    assert opened(x, late_only) == 0
    assert opened(x, VadSettings(confirm_cough_threshold=0.96)) == 1
    assert opened(x, VadSettings(confirm_cough_threshold=1.0)) == 1


@pytest.mark.parametrize("chunk", [1, 160, 333, 800, 4096])
def test_chunk_size_does_not_change_what_the_cough_check_lets_open(data_dir, chunk) -> None:
    """Synthetic coughs, then speech: the same segments however the audio is cut."""
    clip = load(data_dir / "1091_TIE_SAD_XX.flac", RATE)
    x = np.concatenate([sound("cough", 6.0, -30.0, seed=3), clip,
                        sound("room", 1.0, -60.0, seed=4)]).astype(np.float32)
    ref = gate_segments(x, VadSettings(), x.size)
    assert [s for s, _, n in ref if n > 0], "the speech gave no window"
    assert gate_segments(x, VadSettings(), chunk) == ref


def test_cough_settings_are_validated() -> None:
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"vad\.confirm_cough_threshold: must be"):
            build(VadSettings, {"confirm_cough_threshold": bad}, "vad")
    assert build(VadSettings, {"confirm_cough_threshold": 1}, "vad").confirm_cough_threshold == 1


def test_speech_right_after_a_cough_keeps_its_start(data_dir) -> None:
    """Speech 0.1 s after coughs reads as a cough until the pool has heard enough voice;
    the look-back (1.5 s with the check on) still gives its segment the start the gate
    without the check gives it."""
    for seed in range(3):
        coughs = sound("cough", 2.0, -30.0, seed=seed)
        clip = load(data_dir / "1091_TIE_ANG_XX.flac", RATE)
        clip = (clip / np.sqrt(np.mean(clip**2)) * 10 ** (-30 / 20)).astype(np.float32)
        x = np.concatenate([sound("room", 0.5, -60.0, seed=1), coughs,
                            np.zeros(1600, np.float32), clip,
                            sound("room", 1.0, -60.0, seed=2)]).astype(np.float32)
        on = [s for s, _, n in gate_segments(x, VadSettings(), 800) if n > 0]
        off = [s for s, _, n in gate_segments(x, VadSettings(confirm_cough_threshold=1.0),
                                             800) if n > 0]
        assert on and off
        assert on[-1] <= off[-1] + 0.1 * RATE


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04truncated"])
def test_a_damaged_head_says_what_to_do(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    _cough_head.cache_clear()
    with pytest.raises(SpeechCheckError, match=r"bad\.npz.*confirm_cough_threshold: 1"):
        CoughCheck(bad)
    nan = tmp_path / "nan.npz"
    with np.load(COUGH_WEIGHTS) as z:
        np.savez(nan, **{k: z[k] * np.nan if k == "coef" else z[k] for k in z.files})
    with pytest.raises(SpeechCheckError, match="not finite"):
        CoughCheck(nan)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=np.zeros(3), scale=np.ones(3), coef=np.zeros(3), intercept=0.0)
    with pytest.raises(SpeechCheckError, match=r"512 pooled features.*threshold: 1"):
        CoughCheck(wrong)
    assert COUGH_WEIGHTS.stat().st_size < 10_000
