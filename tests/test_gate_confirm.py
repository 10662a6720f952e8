"""The gate's confirm stage (vad.confirm: silero; by default tiered: 2 chunks above 0.3
at once, or 0.99 s with one above 0.1): struck ceramics and key presses that the voicing
tests let through open nothing (strict settings) or far less (the default), speech still
opens, the check runs only while a segment waits for it, and the result does not depend
on how the stream is chunked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.gate_sounds import sound
from serd.decode import load
from serd.gate import SpeechConfirm, VadSettings, block_levels_db, make_gate
from serd.speechcheck import SileroVad
from serd.validate import ConfigError, build
from serd.windows import SegmentStart, Windower, windows_of
from serd_testkit.audio import gate_segments

RATE = 16000
# The strict confirm stage of docs/gate.md's third round (2 chunks above 0.4, the default
# of git 06d648b, which had no cough check), and the same gate without a confirm stage.
SILERO = VadSettings(confirm="silero", confirm_threshold=0.4, confirm_chunks=2,
                     confirm_late_seconds=0.0, confirm_cough_threshold=1.0)
VOICED_ONLY = replace(SILERO, confirm="none")


def starts(x: np.ndarray, vad: VadSettings) -> tuple[int, int]:
    """Segments opened over ``x`` fed 50 ms at a time, and 32 ms chunks the check ran on."""
    gate = make_gate(vad, 0.01, RATE)
    events = []
    for i in range(0, x.size // 800 * 800, 800):
        events += gate.process(x[i : i + 800].reshape(-1, 160))
    checked = gate._confirm.chunks_checked if gate._confirm is not None else 0
    return len([e for e in events if e.kind == "start"]), checked


@pytest.mark.parametrize(("category", "dbfs"),
                         [("ceramic", -40.0), ("ceramic", -30.0), ("keyboard", -30.0)])
def test_sounds_the_voicing_lets_through_are_not_confirmed(category: str, dbfs: float) -> None:
    """30 s of struck cups and tiles (periodic ringing, struck again while it rings, so it
    rises) and of loud typing open the voiced gate several times; with the speech check,
    never."""
    x = sound(category, 30.0, dbfs, seed=1)
    opened, _ = starts(x, VOICED_ONLY)
    assert opened >= 2
    confirmed, checked = starts(x, SILERO)
    assert confirmed == 0
    assert checked > 0  # the check did run on those runs
    vetoed, _ = starts(x, VadSettings())  # the default, tiered: far fewer
    assert vetoed <= opened // 4


def trimmed_levelled(x: np.ndarray, dbfs: float) -> np.ndarray:
    n = x.size // 160
    db = 10 * np.log10(np.mean(x[: n * 160].reshape(n, 160).astype(np.float64) ** 2, 1) + 1e-20)
    loud = np.flatnonzero(db > db.max() - 35)
    x = x[loud[0] * 160 : (loud[-1] + 1) * 160].astype(np.float64)
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


@pytest.mark.parametrize("vad", [VadSettings(), SILERO], ids=["default", "strict"])
def test_speech_fixtures_open_where_the_voicing_opens(data_dir, vad: VadSettings) -> None:
    """Every CREMA-D fixture, quiet and loud, over room tone: the confirmed gate opens its
    first segment where the voiced gate alone does (the check confirms within the look-back),
    and every one gives windows."""
    for path in sorted(data_dir.glob("*.flac")):
        for dbfs in (-45.0, -25.0):
            x = sound("room", 1.0, -60.0, seed=5)
            clip = trimmed_levelled(load(path, RATE), dbfs)
            x = np.concatenate([x, clip + sound("room", clip.size / RATE, -60.0, seed=6),
                                sound("room", 1.0, -60.0, seed=7)]).astype(np.float32)
            got = windows_of(x, vad=vad)
            ref = windows_of(x, vad=replace(vad, confirm="none"))
            assert got, f"{path.name} at {dbfs} dBFS"
            assert abs(got[0].start_sample - ref[0].start_sample) <= 0.1 * RATE, path.name


def speech_after_ceramics(data_dir) -> np.ndarray:
    clip = trimmed_levelled(load(data_dir / "1091_TIE_SAD_XX.flac", RATE), -35.0)
    bed = sound("ceramic", 8.0 + clip.size / RATE + 1.5, -35.0, seed=2)
    bed[8 * RATE : 8 * RATE + clip.size] += clip
    return bed


@pytest.mark.parametrize("vad", [SILERO, replace(SILERO, confirm_chunks=10),
                                 replace(SILERO, backend="energy", threshold_db=9.0)],
                         ids=["strict", "10-chunks", "energy"])
@pytest.mark.parametrize("chunk", [1, 160, 333, 800, 4096, 16000])
def test_chunk_size_does_not_change_the_confirmed_segments(data_dir, vad, chunk: int) -> None:
    """Ceramics (runs checked and refused), then speech (confirmed; with 10 chunks, 320 ms,
    later than the voicing opens, so the held opening is used): the same segments however
    the audio is cut."""
    x = speech_after_ceramics(data_dir)
    ref = gate_segments(x, vad, x.size)
    assert gate_segments(x, vad, chunk) == ref
    assert [s for s, _, n in ref if n > 0], "the speech gave no window"
    assert all(s >= 7.5 * RATE for s, _, n in ref if n > 0), ref  # ceramics gave none


def test_a_later_confirmation_keeps_the_voicing_s_start(data_dir) -> None:
    """With 10 chunks needed the check confirms after the voicing tests passed: the
    segment starts no earlier than the voicing alone would start it, and at most the
    confirm wait (0.5 s) later (it is later when the first run ended unconfirmed and the
    next one opened)."""
    x = speech_after_ceramics(data_dir)
    first = [i.start_sample for i in Windower(vad=VOICED_ONLY)(x) if isinstance(i, SegmentStart)]
    late = [i.start_sample for i in Windower(vad=replace(SILERO, confirm_chunks=10))(x)
            if isinstance(i, SegmentStart)]
    speech = [s for s in first if s >= 7.5 * RATE]
    assert len(late) == 1 and speech
    assert 0 <= late[0] - speech[0] <= 0.5 * RATE


def test_the_check_stops_once_a_segment_is_open(data_dir) -> None:
    """Speech costs the check only its onsets: over 20 s of back-to-back clips it runs on
    a small share of the 32 ms chunks."""
    clips = [load(p, RATE) for p in sorted(data_dir.glob("*.flac"))]
    x = np.concatenate([sound("room", 0.5, -60.0, seed=1)] + clips * 2)
    gate = make_gate(SILERO, 0.01, RATE)
    opened = 0
    for i in range(0, x.size // 800 * 800, 800):
        opened += sum(e.kind == "start" for e in gate.process(x[i : i + 800].reshape(-1, 160)))
    assert gate._confirm is not None
    assert opened >= 1
    assert gate._confirm.chunks_checked < 0.25 * x.size / 512


def test_confirm_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"vad\.confirm"):
        build(VadSettings, {"confirm": "webrtc"}, "vad")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"vad\.confirm_threshold: must be a probability"):
            build(VadSettings, {"confirm_threshold": bad}, "vad")
    for bad in (0, 31):
        with pytest.raises(ConfigError, match=r"vad\.confirm_chunks: must be 1\.\.30"):
            build(VadSettings, {"confirm_chunks": bad}, "vad")
    with pytest.raises(ConfigError, match=r"vad\.confirm_chunks"):
        build(VadSettings, {"confirm_chunks": 2.5}, "vad")
    assert build(VadSettings, {"confirm": "silero"}, "vad") == replace(VadSettings(),
                                                                        confirm="silero")
    assert VadSettings().confirm == "silero"
    with pytest.raises(ValueError, match=r"silero needs 16000 Hz.*vad\.confirm: none"):
        make_gate(VadSettings(), 0.01, 8000)
    make_gate(VadSettings(confirm="none"), 0.01, 8000)  # fine without it


def test_the_levels_only_call_says_it_needs_the_audio() -> None:
    """``gate(levels)`` has no samples to check: with the confirm stage on it says so
    rather than opening unconfirmed."""
    gate = make_gate(VadSettings(backend="energy", confirm="silero"), 0.01, RATE)
    t = np.arange(RATE * 2) / RATE
    x = np.concatenate([np.zeros(RATE), 0.3 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32)
    x += 1e-4 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    with pytest.raises(RuntimeError, match="process"):
        gate(block_levels_db(x.reshape(-1, 160)))


# The strong test made unreachable (30 chunks, almost 1 s, above 0.999), so that only the
# late opening can open a segment.
LATE_ONLY = replace(SILERO, confirm_threshold=0.999, confirm_chunks=30,
                    confirm_late_seconds=0.99)


def speech_in_room(data_dir, seconds: float | None = None) -> np.ndarray:
    clip = trimmed_levelled(load(data_dir / "1091_TIE_SAD_XX.flac", RATE), -35.0)
    if seconds is not None:
        clip = clip[: round(seconds * RATE)]
    x = np.concatenate([sound("room", 1.0, -60.0, seed=5), clip, np.zeros(RATE, np.float32)])
    return (x + sound("room", x.size / RATE, -60.0, seed=6)).astype(np.float32)


def test_a_late_opening_keeps_the_voicing_s_start(data_dir) -> None:
    """Speech that never passes the (unreachable) strong test opens once it has lasted
    confirm_late_seconds, where the voicing alone opens it: a late opening loses nothing
    of the utterance's start."""
    x = speech_in_room(data_dir)
    assert x.size > 3 * RATE
    ref = windows_of(x, vad=VOICED_ONLY)
    got = windows_of(x, vad=LATE_ONLY)
    assert got and ref
    assert got[0].start_sample == ref[0].start_sample
    assert windows_of(x, vad=replace(LATE_ONLY, confirm_late_seconds=0.0)) == []


def test_a_late_opening_needs_its_time_and_a_likely_chunk(data_dir) -> None:
    """A run shorter than confirm_late_seconds, or one in which no chunk reached
    confirm_late_threshold, does not open late."""
    def opened(x: np.ndarray, vad: VadSettings) -> int:
        w = Windower(vad=vad)
        return sum(isinstance(e, SegmentStart) for e in [*w(x), *w.flush()])

    short = speech_in_room(data_dir, seconds=0.8)
    assert opened(short, replace(LATE_ONLY, confirm_late_seconds=0.5)) == 1
    assert opened(short, replace(LATE_ONLY, confirm_late_seconds=1.5)) == 0
    x = speech_in_room(data_dir)
    assert opened(x, LATE_ONLY) == 1
    # (Silero's highest chunk on this clip is 0.99997.)
    assert opened(x, replace(LATE_ONLY, confirm_late_threshold=0.99999)) == 0


def test_a_late_opening_needs_the_mean_probability(data_dir) -> None:
    """confirm_late_mean: a late opening also needs the mean speech probability of the
    chunks checked so far above it; speech clears any modest level, and a level no
    stretch of audio reaches refuses it."""
    def opened(x: np.ndarray, vad: VadSettings) -> int:
        w = Windower(vad=vad)
        return sum(isinstance(e, SegmentStart) for e in [*w(x), *w.flush()])

    x = speech_in_room(data_dir)
    assert opened(x, replace(LATE_ONLY, confirm_late_mean=0.0)) == 1
    assert opened(x, replace(LATE_ONLY, confirm_late_mean=0.1)) == 1
    assert opened(x, replace(LATE_ONLY, confirm_late_mean=0.999)) == 0
    for bad in (-0.1, 1, 1.5):
        with pytest.raises(ConfigError, match=r"vad\.confirm_late_mean: must be a probability"):
            build(VadSettings, {"confirm_late_mean": bad}, "vad")


def scripted_silero(monkeypatch, probs: list[float]) -> None:
    """Silero replaced by a script of chunk probabilities, in order (the cough check's
    traces all zero): what a machine's hum or a voice would give, exactly."""
    left = list(probs)

    def process(self, chunks):  # type: ignore[no-untyped-def]
        n = len(chunks)
        out, left[:n] = left[:n], []
        self.states = np.zeros((n, 128), np.float32)
        self.encoded = np.zeros((n, 128), np.float32)
        return np.array(out, np.float32)

    monkeypatch.setattr(SileroVad, "process", process)


def test_the_late_mean_is_each_segment_s_own(monkeypatch) -> None:
    """A segment of clear speech, then one of hum whose one chunk above 0.1 would allow a
    late opening: its mean (0.008) refuses it, and the speech before it does not count
    towards that mean; without the mean test it would be ready."""
    late = VadSettings(confirm_threshold=0.999, confirm_chunks=30,
                       confirm_cough_threshold=1.0, confirm_late_mean=0.02)
    blocks = np.zeros((400, 160), np.float32)
    for mean, hum_ready in ((0.02, False), (0.0, True)):
        # Blocks 0-99: 31 chunks of 512 samples; blocks 100-299: 62 more.
        scripted_silero(monkeypatch, [0.9] * 31 + [0.2] + [0.005] * 61)
        check = SpeechConfirm(replace(late, confirm_late_mean=mean), 160, 400)
        check.push(blocks, 0)
        assert not check.start(0, 99)
        assert check.heard and check.late_ready
        check.cancel()
        assert not check.start(100, 299)
        assert check.heard
        assert check.late_ready is hum_ready


@pytest.mark.parametrize("chunk", [1, 333, 4096])
def test_chunk_size_does_not_change_a_late_opening(data_dir, chunk: int) -> None:
    x = speech_after_ceramics(data_dir)
    ref = gate_segments(x, LATE_ONLY, x.size)
    assert [s for s, _, n in ref if n > 0], "the speech gave no window"
    assert gate_segments(x, LATE_ONLY, chunk) == ref


def test_late_settings_are_validated() -> None:
    for bad in (-0.1, 2.5):
        with pytest.raises(ConfigError, match=r"vad\.confirm_late_seconds: must be 0\.\.2 s"):
            build(VadSettings, {"confirm_late_seconds": bad}, "vad")
    for bad in (0, 1):
        with pytest.raises(ConfigError,
                           match=r"vad\.confirm_late_threshold: must be a probability"):
            build(VadSettings, {"confirm_late_threshold": bad}, "vad")
    # The look-back (and the Windower's pre-roll ring) grows to hold a late opening's start.
    assert (make_gate(LATE_ONLY, 0.01, RATE).lookback_blocks
            - make_gate(SILERO, 0.01, RATE).lookback_blocks) == 49


def test_a_late_opening_in_a_pause_keeps_its_hangover(data_dir) -> None:
    """A tentative segment that opens late during a pause (its last candidate before the
    late time, its hangover still running) ends where it would have ended had it opened
    at once: the blocks without candidates it had while tentative count towards its
    hangover, rather than the hangover starting afresh at the late opening."""
    for seconds in (1.1, 1.2, 1.3):
        x = speech_in_room(data_dir, seconds=seconds)
        ref = _segments(x, VOICED_ONLY)
        assert ref, seconds
        assert _segments(x, LATE_ONLY) == ref, seconds


def _segments(x: np.ndarray, vad: VadSettings) -> list[tuple[int, int]]:
    return [(start, end) for start, end, _ in gate_segments(x, vad, x.size)]


def test_a_late_opening_that_could_never_happen_is_refused() -> None:
    """A tentative segment is dropped at max_segment_seconds, so a late opening at or
    past it would silently never happen; and a late time under half a block is not 0."""
    with pytest.raises(ConfigError, match=r"vad\.confirm_late_seconds: must be shorter"):
        build(VadSettings, {"confirm_late_seconds": 2, "max_segment_seconds": 1.5}, "vad")
    build(VadSettings, {"confirm_late_seconds": 0, "max_segment_seconds": 1}, "vad")
    assert make_gate(replace(LATE_ONLY, confirm_late_seconds=0.004), 0.01, RATE)._late == 1
