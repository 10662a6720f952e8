"""Microphone capture against a real PortAudio stream from the PulseAudio virtual mic.

No audio is mocked: clips are played with ``paplay`` into a null sink whose monitor is
recorded by PortAudio through ALSA's pulse plugin (see ``fixtures_audio``).  Timing on a
loaded CI machine is unpredictable, so tests poll with generous deadlines and assert on
what was recorded, never on how long something took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from serd.capture import (
    AudioSettings,
    Capture,
    CaptureError,
    list_input_devices,
    refresh_devices,
    resolve_device,
)
from serd.validate import ConfigError, build
from serd_testkit import VirtualMic

RATE = 16000
SILENCE_RMS = 1e-3  # a null sink's monitor is digital silence: exactly zero
CLIP = "1001_IEO_ANG_HI.flac"  # RMS 0.072, peak 0.87
LONG_CLIP = "1091_TIE_ANG_XX.flac"  # 2.7 s, several syllables: a distinctive envelope

Block = npt.NDArray[np.float32]


def _rms(x: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _read_until(
    capture: Capture, done: Callable[[Block], bool], timeout_seconds: float
) -> list[Block]:
    """Read blocks until ``done(block)`` is true; fail after the timeout."""
    blocks: list[Block] = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        block = capture.read(0.2)
        if block is None:
            continue
        blocks.append(block)
        if done(block):
            return blocks
    pytest.fail(f"condition not met within {timeout_seconds} s ({len(blocks)} blocks read)")


def _read_seconds(capture: Capture, seconds: float, timeout_seconds: float = 15.0) -> Block:
    """Read ``seconds`` of audio (at the capture's target rate)."""
    want = round(seconds * capture.target_rate)
    got = 0

    def enough(block: Block) -> bool:
        nonlocal got
        got += block.shape[0]
        return got >= want

    return np.concatenate(_read_until(capture, enough, timeout_seconds))


def _loud(block: Block) -> bool:
    return _rms(block) > 0.01


def _write_tone(path: Path, seconds: float, *, channels: int = 1, rate: int = RATE) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    data = np.zeros((tone.size, channels), np.float32)
    data[:, 0] = tone  # left/first channel only; the others stay silent
    sf.write(path, data, rate)
    return path


def _envelope(x: npt.NDArray[np.floating], rate: int, hop_seconds: float = 0.02) -> Block:
    hop = round(hop_seconds * rate)
    n = x.size // hop
    frames = x[: n * hop].reshape(n, hop).astype(np.float64)
    return np.sqrt(np.mean(frames**2, axis=1)).astype(np.float32)


# -- settings (no audio needed) ----------------------------------------------------------


def test_settings_from_yaml_mapping() -> None:
    s = build(
        AudioSettings,
        {"device": "USB", "samplerate": 48000, "channels": ["agent", "customer"]},
        "audio",
    )
    assert s.device == "USB"
    assert s.channels == ("agent", "customer")
    assert build(AudioSettings, {"device": 2}, "audio").device == 2
    assert build(AudioSettings, {"device": None}, "audio").device is None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"devices": "USB"}, "audio.devices: unknown key"),
        ({"device": ""}, "audio.device"),
        ({"device": -1}, "audio.device"),
        ({"channels": []}, "audio.channels"),
        ({"channels": ["a", "a"]}, "audio.channels"),
        ({"samplerate": 1000}, "audio.samplerate"),
        ({"reopen_min_seconds": 5.0, "reopen_max_seconds": 1.0}, "audio.reopen_max_seconds"),
        ({"stall_seconds": 0.1}, "audio.stall_seconds"),
        ({"queue_seconds": 0.05}, "audio.queue_seconds"),
    ],
)
def test_settings_rejected(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(AudioSettings, mapping, "audio")


# -- device selection --------------------------------------------------------------------


@pytest.mark.audio
def test_resolve_by_substring_index_and_default(mic: VirtualMic) -> None:
    refresh_devices()
    names = {d.name: d.index for d in list_input_devices()}
    assert {"pulse", mic.alsa_device, "default"} <= set(names)
    assert resolve_device("PULS") == (names["pulse"], "pulse")
    # An exact name wins even though "default" might be part of other names.
    assert resolve_device("default") == (names["default"], "default")
    assert resolve_device(names[mic.alsa_device]) == (names[mic.alsa_device], mic.alsa_device)
    index, name = resolve_device(None)
    assert names[name] == index


@pytest.mark.audio
def test_refresh_devices_sees_a_newly_plugged_device(mic: VirtualMic) -> None:
    """PortAudio caches its device list; refresh_devices() re-enumerates (hot-plug)."""
    asoundrc = mic.root / "config" / "alsa" / "asoundrc"
    original = asoundrc.read_text()
    refresh_devices()
    assert "serd_hotplug" not in {d.name for d in list_input_devices()}
    try:
        # A new ALSA device appears, as a USB microphone's card does when plugged in.
        asoundrc.write_text(original + original.replace(mic.alsa_device, "serd_hotplug"))
        assert "serd_hotplug" not in {d.name for d in list_input_devices()}  # cached
        refresh_devices()
        assert "serd_hotplug" in {d.name for d in list_input_devices()}
        assert resolve_device("HOTPLUG")[1] == "serd_hotplug"
    finally:
        asoundrc.write_text(original)
        refresh_devices()
    assert "serd_hotplug" not in {d.name for d in list_input_devices()}


@pytest.mark.audio
def test_unknown_device_lists_the_available_ones(mic: VirtualMic) -> None:
    refresh_devices()
    with pytest.raises(CaptureError) as caught:
        resolve_device("Blue Yeti")
    message = str(caught.value)
    assert "\n" not in message
    assert "'Blue Yeti'" in message
    assert "'pulse'" in message
    assert f"'{mic.alsa_device}'" in message

    capture = Capture(AudioSettings(device="Blue Yeti"))
    with pytest.raises(CaptureError, match="available input devices"):
        capture.open()
    assert not capture.is_open
    capture.close()


@pytest.mark.audio
def test_ambiguous_substring_is_an_error(mic: VirtualMic) -> None:
    refresh_devices()
    with pytest.raises(CaptureError, match="matches several input devices"):
        resolve_device("l")  # "pulse", "serd_vmic" and "default" all contain an "l"


@pytest.mark.audio
def test_too_few_channels_is_an_error(mic: VirtualMic) -> None:
    refresh_devices()
    names = [f"c{i}" for i in range(64)]
    with pytest.raises(CaptureError, match="input channel"):
        resolve_device("pulse", min_channels=len(names))


# -- recording ---------------------------------------------------------------------------


@pytest.mark.audio
@pytest.mark.parametrize("device", ["pulse", "index"])
def test_records_the_played_clip(mic: VirtualMic, data_dir: Path, device: str) -> None:
    spec: str | int = "pulse"
    if device == "index":
        refresh_devices()
        spec = resolve_device(mic.alsa_device)[0]
    with Capture(AudioSettings(device=spec), target_rate=RATE) as capture:
        assert capture.is_open
        assert capture.device_name == ("pulse" if device == "pulse" else mic.alsa_device)
        before = _read_seconds(capture, 0.3)
        assert before.dtype == np.float32
        assert before.ndim == 2
        assert before.shape[1] == 1
        assert _rms(before) < SILENCE_RMS

        player = mic.play(data_dir / CLIP, wait=False)
        heard = _read_until(capture, lambda _: player.poll() is not None, timeout_seconds=30.0)
        assert max(_rms(b) for b in heard) > 0.02
        # The clip ends with near-silence, then the sink is silent: wait for the tail.
        after = _read_until(capture, lambda b: _rms(b) < SILENCE_RMS, timeout_seconds=10.0)[-1]
        assert _rms(after) < SILENCE_RMS
        # Overflows depend on scheduling (a loaded CI machine may cause some): only counted.
        assert capture.overflows >= 0
        assert capture.dropped_blocks == 0


@pytest.mark.audio
def test_resampled_48k_matches_the_source_envelope(mic: VirtualMic, data_dir: Path) -> None:
    source, source_rate = sf.read(data_dir / LONG_CLIP, dtype="float32")
    assert source_rate == RATE
    settings = AudioSettings(device=mic.alsa_device, samplerate=48000)
    with Capture(settings, target_rate=RATE) as capture:
        assert capture.device_rate == 48000
        _read_seconds(capture, 0.2)  # stream is running and delivering
        player = mic.play(data_dir / LONG_CLIP, wait=False)
        blocks = _read_until(capture, lambda _: player.poll() is not None, timeout_seconds=30.0)
        blocks += [_read_seconds(capture, 1.0)]
        assert capture.dropped_blocks == 0
    recorded = np.concatenate(blocks)[:, 0]
    assert recorded.size > source.size

    src_env = _envelope(source, RATE)
    rec_env = _envelope(recorded, RATE)
    # Align by the lag with the best normalised correlation (latency is unknown).
    best = -1.0
    best_lag = 0
    for lag in range(rec_env.size - src_env.size + 1):
        window = rec_env[lag : lag + src_env.size]
        if window.std() == 0:
            continue
        r = float(np.corrcoef(window, src_env)[0, 1])
        if r > best:
            best, best_lag = r, lag
    assert best > 0.95, f"envelope correlation {best:.3f}"
    # Same level: mono -> stereo sink -> mono capture keeps the amplitude.
    hop = round(0.02 * RATE)
    aligned = recorded[best_lag * hop : best_lag * hop + source.size]
    assert 0.7 < _rms(aligned) / _rms(source) < 1.4


@pytest.mark.audio
def test_two_named_channels_in_device_order(mic: VirtualMic, tmp_path: Path) -> None:
    stereo = _write_tone(tmp_path / "left_only.wav", 3.0, channels=2)
    settings = AudioSettings(device=mic.alsa_device, channels=("agent", "customer"))
    with Capture(settings, target_rate=RATE) as capture:
        assert capture.channel_names == ("agent", "customer")
        mic.play(stereo, wait=False)
        blocks = _read_until(capture, _loud, timeout_seconds=10.0)
        blocks += [_read_seconds(capture, 0.5)]
    audio = np.concatenate(blocks)
    assert audio.shape[1] == 2
    agent, customer = _rms(audio[:, 0]), _rms(audio[:, 1])
    assert agent > 0.05
    assert customer < SILENCE_RMS, (agent, customer)


@pytest.mark.audio
def test_unplug_and_replug(
    mic: VirtualMic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tone = _write_tone(tmp_path / "tone.wav", 30.0)
    settings = AudioSettings(
        device=mic.alsa_device, reopen_min_seconds=0.2, reopen_max_seconds=1.0, stall_seconds=1.0
    )
    caplog.set_level(logging.INFO, logger="serd.capture")
    with Capture(settings, target_rate=RATE) as capture:
        mic.play(tone, wait=False)
        _read_until(capture, _loud, timeout_seconds=10.0)
        assert capture.reopens == 0

        mic.unplug()
        deadline = time.monotonic() + 10.0
        while capture.is_open and time.monotonic() < deadline:
            capture.read(0.2)  # must not raise
        assert not capture.is_open, "the loss of the device was not noticed"
        # While unplugged, reopening fails quietly: read() only returns None.
        for _ in range(5):
            assert capture.read(0.2) is None
        assert mic.alsa_device in (capture.last_error or "")  # for a STATUS= line

        mic.plug()
        mic.play(tone, wait=False)
        _read_until(
            capture, lambda b: _loud(b) and capture.last_error is None, timeout_seconds=15.0
        )
        assert capture.is_open
        assert capture.reopens >= 1
        assert capture.last_error is None

    gone = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1, "one warning line per loss, not one per retry"
    assert gone[0].levelno == logging.WARNING
    assert "audio.device" in gone[0].getMessage()
    assert any("is back" in r.getMessage() for r in caplog.records)


@pytest.mark.audio
def test_open_fails_while_unplugged_then_read_recovers(mic: VirtualMic, tmp_path: Path) -> None:
    tone = _write_tone(tmp_path / "tone.wav", 30.0)
    settings = AudioSettings(device=mic.alsa_device, reopen_min_seconds=0.2, reopen_max_seconds=1.0)
    capture = Capture(settings, target_rate=RATE)
    mic.unplug()
    with pytest.raises(CaptureError, match=mic.alsa_device):
        capture.open()
    try:
        assert capture.read(0.3) is None
        mic.plug()
        mic.play(tone, wait=False)
        _read_until(
            capture, lambda b: _loud(b) and capture.last_error is None, timeout_seconds=15.0
        )
        assert capture.reopens >= 1
    finally:
        capture.close()
    with pytest.raises(RuntimeError):
        capture.read(0.1)


@pytest.mark.audio
def test_stalled_device_is_reopened(
    mic: VirtualMic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device that stops delivering without an error (a wedged USB mic) is reopened."""
    tone = _write_tone(tmp_path / "tone.wav", 30.0)
    settings = AudioSettings(
        device=mic.alsa_device, reopen_min_seconds=0.2, reopen_max_seconds=1.0, stall_seconds=1.0
    )
    caplog.set_level(logging.INFO, logger="serd.capture")
    with Capture(settings, target_rate=RATE) as capture:
        mic.play(tone, wait=False)
        _read_until(capture, _loud, timeout_seconds=10.0)
        mic.pactl("suspend-sink", mic.sink, "1")
        try:
            deadline = time.monotonic() + 10.0
            while capture.is_open and time.monotonic() < deadline:
                capture.read(0.2)
            assert not capture.is_open, "the stall was not noticed"
        finally:
            mic.pactl("suspend-sink", mic.sink, "0")
        _read_until(
            capture, lambda b: _loud(b) and capture.last_error is None, timeout_seconds=15.0
        )
        assert capture.reopens >= 1
    gone = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1
    assert "no audio" in gone[0].getMessage()
