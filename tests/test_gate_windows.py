"""VAD gate and windower: segmentation, cheap silence, chunk-size invariance."""

from __future__ import annotations

import numpy as np
import pytest

from serd.decode import load
from serd.features import FeatureParams, WindowParams
from serd.gate import EnergyGate, VadSettings, block_levels_db
from serd.validate import ConfigError, build
from serd.windows import SegmentEnd, SegmentStart, Window, Windower, windows_of

RATE = 16000


def tone(seconds: float, amp: float = 0.3, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def noise(seconds: float, amp: float = 0.001, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(
        np.float32
    )


def call_like(data_dir) -> np.ndarray:
    """Room noise, a clip, a pause, another clip, more room noise."""
    a = load(data_dir / "1001_IEO_ANG_HI.flac", RATE)
    b = load(data_dir / "1091_TIE_SAD_XX.flac", RATE)
    return np.concatenate([noise(1.5), a, noise(1.2, seed=1), b, noise(1.0, seed=2)])


def test_levels_db() -> None:
    blocks = np.stack([np.zeros(160, np.float32), np.ones(160, np.float32)])
    levels = block_levels_db(blocks)
    assert levels[0] == -120.0
    assert levels[1] == pytest.approx(0.0)


def test_gate_finds_a_burst_and_applies_preroll_and_hangover() -> None:
    s = VadSettings()
    gate = EnergyGate(s, 0.01)
    x = np.concatenate([noise(1.0), tone(1.0) + noise(1.0, seed=1), noise(1.0, seed=2)])
    levels = block_levels_db(x[: x.size // 160 * 160].reshape(-1, 160))
    events = gate(levels) + gate.close()
    kinds = [(e.kind, e.block) for e in events]
    assert [k for k, _ in kinds] == ["start", "end"]
    start, end = kinds[0][1], kinds[1][1]
    assert start == 100 - round(s.preroll_seconds / 0.01)
    assert end == 200 + round(s.hangover_seconds / 0.01)


def test_gate_ignores_clicks_and_adapts_to_steady_noise() -> None:
    gate = EnergyGate(VadSettings(), 0.01)
    click = np.zeros(RATE, np.float32)
    click[8000:8080] = 0.9  # 5 ms: shorter than min_speech_seconds
    hum = tone(10.0, amp=0.05, f=50.0) + noise(10.0)  # a loud, steady mains hum
    x = np.concatenate([noise(0.5), click, hum])
    levels = block_levels_db(x[: x.size // 160 * 160].reshape(-1, 160))
    events = gate(levels)
    # The hum may open one segment when it starts, but the floor adapts and it closes.
    assert len([e for e in events if e.kind == "start"]) <= 1
    assert not gate.in_speech


def test_long_speech_is_split_into_utterances() -> None:
    gate = EnergyGate(VadSettings(max_segment_seconds=2.0), 0.01)
    x = np.concatenate([noise(0.5), tone(5.0) * (1 + 0.5 * np.sin(np.arange(80000) / 800))])
    levels = block_levels_db(x[: x.size // 160 * 160].reshape(-1, 160).astype(np.float32))
    events = gate(levels) + gate.close()
    assert [e.kind for e in events].count("start") >= 3


def test_vad_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"vad\.threshold_db"):
        build(VadSettings, {"threshold_db": -3}, "vad")


def test_windows_of_a_clip(data_dir) -> None:
    x = load(data_dir / "1001_IEO_ANG_HI.flac", RATE)
    ws = windows_of(np.concatenate([noise(1.0), x, noise(1.0)]))
    assert ws
    for w in ws:
        assert w.features.shape == (200, 42)
        assert w.end_sample > w.start_sample
        assert np.isfinite(w.features).all()
    # Speech starts about 1 s in: no window starts in the leading room noise.
    assert ws[0].start_sample >= 0.7 * RATE


def test_silence_gives_no_windows_and_computes_no_features() -> None:
    w = Windower()
    items = w(noise(10.0)) + w.flush()
    assert items == []
    assert w.speech_samples == 0
    assert w.seconds_features == 0.0


def test_short_utterance_gives_one_padded_window() -> None:
    x = np.concatenate([noise(1.0), tone(0.8) + noise(0.8, seed=3), noise(1.0, seed=4)])
    ws = windows_of(x)
    assert len(ws) == 1
    assert ws[0].padded
    assert ws[0].features.shape == (200, 42)


@pytest.mark.parametrize("chunk", [1, 160, 333, 800, 4096, 16000])
def test_chunk_size_does_not_change_windows(data_dir, chunk: int) -> None:
    x = call_like(data_dir)
    whole = Windower()
    ref = whole(x) + whole.flush()
    w = Windower()
    got = []
    for i in range(0, x.size, chunk):
        got.extend(w(x[i : i + chunk]))
    got.extend(w.flush())
    assert [type(i) for i in got] == [type(i) for i in ref]
    for a, b in zip(got, ref, strict=True):
        if isinstance(a, Window):
            assert (a.segment, a.start_sample, a.end_sample) == (b.segment, b.start_sample,
                                                                  b.end_sample)
            np.testing.assert_allclose(a.features, b.features, atol=1e-3)
        else:
            assert a == b
    starts = [i for i in ref if isinstance(i, SegmentStart)]
    ends = [i for i in ref if isinstance(i, SegmentEnd)]
    assert len(starts) == len(ends) == 2


def test_windower_follows_window_params() -> None:
    w = Windower(FeatureParams(), WindowParams(window_seconds=1.0, hop_seconds=0.25))
    assert (w.win_frames, w.hop_frames) == (100, 25)
