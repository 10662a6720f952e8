"""Each line's voice reference kept across restarts (serd.linestate): the file read back
bit for bit, every hostile variant of it refused in one line, a failing disk logged once,
and a real daemon that saves its lines at stop and takes them up at the next start."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_faults import _fill, small_tmpfs  # noqa: F401  (a fixture)
from test_gate_windows import call_like
from test_line_reference import _reference_model

from serd.config import Config, parse
from serd.daemon import Daemon
from serd.linestate import (
    FILENAME,
    MAX_FILE_BYTES,
    SAVE_INTERVAL_SECONDS,
    LineKeeper,
    LineState,
    LineStateError,
    SavedLines,
    decode,
    encode,
    read,
    write,
)
from serd.model import ModelSettings, load_classifier
from serd.pipeline import ChannelSet
from serd.publisher import StdoutPublisher
from serd.voice import LineReference, ReferenceParams
from serd_testkit import ArraySource

HEAD = "ab" * 32
DIM = 8
MEMORY = 50


def _ref(seed: int = 0, *, adapt: bool = True) -> LineReference:
    rng = np.random.default_rng(seed)
    return LineReference(rng.normal(size=DIM).astype(np.float32),
                         ReferenceParams(prior_windows=5, memory_windows=MEMORY), adapt=adapt)


def _feed(ref: LineReference, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ref(rng.normal(size=DIM).astype(np.float32))


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "serd.linestate" and r.levelno == level]


# -- the file ------------------------------------------------------------------------------


def test_the_file_reads_back_bit_for_bit(tmp_path: Path) -> None:
    ref = _ref()
    _feed(ref, 17)
    path = tmp_path / FILENAME
    write(path, SavedLines(HEAD, {"customer": LineState(*ref.state())}))
    back = read(path, dim=DIM, memory_windows=MEMORY)
    assert back is not None and back.head_sha256 == HEAD
    assert back.lines["customer"].count == 17
    np.testing.assert_array_equal(back.lines["customer"].mean, ref.mean)
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temporary file left
    assert read(tmp_path / "absent.json", dim=DIM, memory_windows=MEMORY) is None


def _valid() -> dict:
    return {"version": 1, "head_sha256": HEAD,
            "channels": {"main": {"count": 3, "mean": [0.5] * DIM}}}


def _with(path: str, value: object) -> str:
    data = _valid()
    *keys, last = path.split(".")
    node = data
    for k in keys:
        node = node[k]
    node[last] = value
    return json.dumps(data)


HOSTILE = {
    "not json": "{\"version\": 1,",
    "an array": "[1, 2]",
    "version missing": json.dumps({k: v for k, v in _valid().items() if k != "version"}),
    "version 2": _with("version", 2),
    "version true": _with("version", True),
    "version a string": _with("version", "1"),
    "head short": _with("head_sha256", "abc"),
    "head a number": _with("head_sha256", 7),
    "channels a list": _with("channels", [1]),
    "entry a number": _with("channels.main", 3),
    "count negative": _with("channels.main.count", -1),
    "count over memory": _with("channels.main.count", MEMORY + 1),
    "count a float": _with("channels.main.count", 3.0),
    "count true": _with("channels.main.count", True),
    "count huge": _with("channels.main.count", 10**400),
    "mean short": _with("channels.main.mean", [0.5] * (DIM - 1)),
    "mean long": _with("channels.main.mean", [0.5] * (DIM + 1)),
    "mean a dict": _with("channels.main.mean", {"0": 1}),
    "mean with a string": _with("channels.main.mean", ["0.5"] * DIM),
    "mean with a bool": _with("channels.main.mean", [True] * DIM),
    "mean with null": _with("channels.main.mean", [None] * DIM),
    "mean NaN": _with("channels.main.mean", [0.5] * (DIM - 1) + ["NAN"]).replace(
        '"NAN"', "NaN"),
    "mean Infinity": _with("channels.main.mean", [0.5] * (DIM - 1) + ["INF"]).replace(
        '"INF"', "-Infinity"),
    "mean beyond float32": _with("channels.main.mean", [1e39] * DIM),
    "mean beyond float64": _with("channels.main.mean", [0.5] * DIM).replace("0.5", "1e999"),
    "mean a 400-digit integer": _with("channels.main.mean", [10**400] + [0] * (DIM - 1)),
    "nested a million deep": "[" * 1_000_000 + "]" * 1_000_000,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_every_hostile_variant_is_one_clear_error(text: str) -> None:
    with pytest.raises(LineStateError) as info:
        decode(text, dim=DIM, memory_windows=MEMORY)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_undecodable_and_oversized_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(LineStateError, match="UTF-8"):
        read(path, dim=DIM, memory_windows=MEMORY)
    path.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(LineStateError, match="larger"):
        read(path, dim=DIM, memory_windows=MEMORY)
    path.unlink()
    path.mkdir()
    with pytest.raises(LineStateError, match="cannot be read"):
        read(path, dim=DIM, memory_windows=MEMORY)


def test_the_encoding_is_the_documented_layout() -> None:
    data = json.loads(encode(SavedLines(HEAD, {"a": LineState(2, np.ones(DIM, np.float32))})))
    assert data == {"version": 1, "head_sha256": HEAD,
                    "channels": {"a": {"count": 2, "mean": [1.0] * DIM}}}


def test_restore_checks_the_state_and_a_frozen_reference_stays_at_the_prior() -> None:
    ref = _ref()
    with pytest.raises(ValueError, match="does not fit"):
        ref.restore(3, np.zeros(DIM + 1, np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        ref.restore(MEMORY + 1, np.zeros(DIM, np.float32))
    ref.restore(4, np.ones(DIM, np.float32))
    assert ref.count == 4 and (ref.mean == 1).all()
    frozen = _ref(adapt=False)
    frozen.restore(4, np.ones(DIM, np.float32))
    assert frozen.count == 0
    np.testing.assert_allclose(frozen.reference, frozen.prior, rtol=1e-6)


# -- the keeper ----------------------------------------------------------------------------


def test_the_keeper_saves_and_restores_by_channel_name(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    a, b = _ref(0), _ref(0)
    _feed(a, 9, seed=1)
    _feed(b, 30, seed=2)
    LineKeeper(tmp_path, HEAD, {"customer": a, "other": b}).close()
    fresh = {"customer": _ref(0), "renamed": _ref(0)}
    caplog.set_level(logging.INFO, "serd.linestate")
    assert LineKeeper(tmp_path, HEAD, fresh).restore() == 1
    assert fresh["customer"].count == 9
    np.testing.assert_array_equal(fresh["customer"].reference, a.reference)
    assert fresh["renamed"].count == 0  # not in the file: from the prior
    assert _records(caplog, logging.INFO) == [
        f"line reference restored from {tmp_path / FILENAME}: customer (9 windows)"]


def test_another_head_and_a_damaged_file_are_one_line_each(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _ref()
    _feed(a, 5)
    LineKeeper(tmp_path, HEAD, {"main": a}).close()
    caplog.set_level(logging.INFO, "serd.linestate")
    other = {"main": _ref()}
    assert LineKeeper(tmp_path, "cd" * 32, other).restore() == 0
    assert other["main"].count == 0
    assert len(_records(caplog, logging.INFO)) == 1
    assert "another voice head" in _records(caplog, logging.INFO)[0]
    caplog.clear()
    (tmp_path / FILENAME).write_bytes(b"\x00garbage")
    keeper = LineKeeper(tmp_path, HEAD, other)
    assert keeper.restore() == 0
    assert len(_records(caplog, logging.WARNING)) == 1
    assert "ignored" in _records(caplog, logging.WARNING)[0]
    keeper.close()  # the damaged file is replaced by a good one
    assert read(tmp_path / FILENAME, dim=DIM, memory_windows=MEMORY) is not None


def test_a_failing_disk_is_logged_once_backs_off_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "serd.linestate")
    (tmp_path / FILENAME).mkdir()  # os.replace onto a folder fails, root or not
    keeper = LineKeeper(tmp_path, HEAD, {"main": _ref()}, interval_seconds=1.0)
    t = 0.0
    keeper.tick(t)
    waits = []
    for _ in range(5):
        due = keeper._next_save
        assert due is not None
        waits.append(due - t)
        t = due
        keeper.tick(t)
        assert keeper._writer is not None
        keeper._writer.join(10)
    assert keeper.failures == 5 and keeper.saves == 0
    assert waits == [1.0, 1.0, 2.0, 4.0, 8.0]  # doubling, capped at MAX_BACKOFF
    assert len(_records(caplog, logging.WARNING)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temporary file left
    (tmp_path / FILENAME).rmdir()
    keeper.close()
    assert keeper.saves == 1
    assert any("again" in m for m in _records(caplog, logging.INFO))
    assert read(tmp_path / FILENAME, dim=DIM, memory_windows=MEMORY) is not None


def test_a_missing_state_dir_never_raises(tmp_path: Path) -> None:
    keeper = LineKeeper(tmp_path / "gone", HEAD, {"main": _ref()})
    assert keeper.restore() == 0
    keeper.close()
    assert keeper.failures == 1


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / f".{FILENAME}.x1y2.tmp"
    leftover.write_text("half")
    LineKeeper(tmp_path, HEAD, {"main": _ref()}).restore()
    assert not leftover.exists()


def test_only_adapting_references_are_kept(tmp_path: Path) -> None:
    assert LineKeeper.for_streams(tmp_path, HEAD, {"a": None}) is None
    assert LineKeeper.for_streams(tmp_path, HEAD, {"a": _ref(adapt=False)}) is None
    assert LineKeeper.for_streams(tmp_path, None, {"a": _ref()}) is None
    keeper = LineKeeper.for_streams(tmp_path, HEAD, {"a": _ref(), "b": None})
    assert keeper is not None and list(keeper.references) == ["a"]


# -- a real daemon -------------------------------------------------------------------------


def _cfg(model: Path, state: Path, **model_extra: object) -> Config:
    return parse({"model": {"path": str(model), **model_extra}, "state_dir": str(state)})


def _run(cfg: Config, audio: np.ndarray, tmp_path: Path) -> Daemon:
    """A daemon on ``audio`` (then silence) until every sample is read, then stopped."""
    publisher = StdoutPublisher("test", tmp_path / f"pub{time.monotonic_ns()}",
                                stream=io.StringIO())
    source = ArraySource(audio, [1600])
    d = Daemon(cfg, source=source, publisher=publisher)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while source.pos < audio.size and time.monotonic() < deadline:
        time.sleep(0.05)
    d.request_stop()
    thread.join(30)
    assert not thread.is_alive()
    return d


def _line_of(d: Daemon) -> LineReference:
    ref = d.pipelines[0].model.reference
    assert ref is not None
    return ref


def test_a_daemon_keeps_its_line_across_a_restart(
        model_path: Path, tmp_path: Path, data_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    model = _reference_model(model_path, tmp_path)
    cfg = _cfg(model, tmp_path / "state")
    first = _run(cfg, call_like(data_dir), tmp_path)
    learnt = _line_of(first)
    assert learnt.count > 0
    path = tmp_path / "state" / FILENAME
    voice = first.classifier.card.voice
    assert voice is not None
    saved = read(path, dim=learnt.prior.size, memory_windows=learnt.params.memory_windows)
    assert saved is not None and saved.head_sha256 == voice.head_sha256
    assert saved.lines["main"].count == learnt.count
    np.testing.assert_array_equal(saved.lines["main"].mean, learnt.mean)
    caplog.set_level(logging.INFO, "serd.linestate")
    second = _run(cfg, np.zeros(0, np.float32), tmp_path)
    assert _line_of(second).count == learnt.count
    np.testing.assert_array_equal(_line_of(second).reference, learnt.reference)
    assert any("restored" in m for m in _records(caplog, logging.INFO))
    # Frozen (model.adapt: false): the prior, and the file is left as it was.
    before = path.read_bytes()
    frozen = _run(_cfg(model, tmp_path / "state", adapt=False), call_like(data_dir), tmp_path)
    assert frozen.lines is None and _line_of(frozen).count == 0
    assert path.read_bytes() == before


@pytest.mark.parametrize("bad", ["damaged", "another head"])
def test_a_daemon_ignores_a_bad_file_in_one_line_and_runs(
        model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    model = _reference_model(model_path, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    path = state / FILENAME
    if bad == "damaged":
        path.write_text('{"version": 1, "head_sha256": "')
    else:
        dim = load_classifier(ModelSettings(path=str(model))).voice.head.reference.size
        write(path, SavedLines("cd" * 32, {"main": LineState(7, np.ones(dim, np.float32))}))
    caplog.set_level(logging.INFO, "serd.linestate")
    d = _run(_cfg(model, state), np.zeros(0, np.float32), tmp_path)
    assert _line_of(d).count == 0
    np.testing.assert_allclose(_line_of(d).reference, _line_of(d).prior, rtol=1e-6)
    warnings, infos = _records(caplog, logging.WARNING), _records(caplog, logging.INFO)
    if bad == "damaged":
        assert len(warnings) == 1 and "ignored" in warnings[0] and not infos, warnings
    else:
        assert infos == [f"line references in {path} belong to another voice head (model "
                         "changed): every line starts from this model's prior"]
        assert not warnings
    voice = d.classifier.card.voice
    assert voice is not None
    again = read(path, dim=_line_of(d).prior.size, memory_windows=MEMORY * 100)
    assert again is not None and again.head_sha256 == voice.head_sha256  # replaced at stop


def test_a_gap_in_the_audio_keeps_the_line(model_path: Path, tmp_path: Path,
                                           data_dir: Path) -> None:
    cfg = _cfg(_reference_model(model_path, tmp_path), tmp_path / "state")
    channels = ChannelSet(load_classifier(cfg.model), cfg.audio.resolved_channels)
    channels(call_like(data_dir)[:, None])
    ref = channels.pipelines[0].model.reference
    assert ref is not None and ref.count > 0
    count, mean = ref.state()
    channels.reset()  # what the daemon does after the microphone came back
    assert ref.count == count
    np.testing.assert_array_equal(ref.mean, mean)


def test_a_full_then_read_only_disk_is_one_line_and_the_old_file_stays(
        small_tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """A real 1 MB tmpfs: filled to the last byte, then remounted read-only, then freed."""
    caplog.set_level(logging.INFO, "serd.linestate")
    ref = LineReference(np.zeros(512, np.float32), ReferenceParams(memory_windows=MEMORY))
    rows = np.random.default_rng(3).normal(size=(20, 512)).astype(np.float32)
    for row in rows[:10]:
        ref(row)
    keeper = LineKeeper(small_tmpfs, HEAD, {"main": ref}, interval_seconds=1.0)
    keeper.close()
    good = (small_tmpfs / FILENAME).read_bytes()
    for row in rows[10:]:
        ref(row)
    filler = _fill(small_tmpfs)
    keeper.close()  # ENOSPC
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    try:
        keeper.close()  # EROFS
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    assert keeper.failures == 2 and keeper.saves == 1
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    assert (small_tmpfs / FILENAME).read_bytes() == good  # the old file, whole
    assert sorted(p.name for p in small_tmpfs.iterdir()) == sorted([FILENAME, "filler"])
    filler.unlink()
    keeper.close()
    back = read(small_tmpfs / FILENAME, dim=512, memory_windows=MEMORY)
    assert back is not None and back.lines["main"].count == 20
    assert any("again" in m for m in _records(caplog, logging.INFO))


def test_once_neither_reads_nor_writes_the_lines(model_path: Path, tmp_path: Path,
                                                 data_dir: Path) -> None:
    from serd.once import analyse_file  # noqa: PLC0415

    model = _reference_model(model_path, tmp_path)
    clip = data_dir / "1001_IEO_ANG_HI.flac"
    cfg = _cfg(model, tmp_path / "state")
    clf = load_classifier(cfg.model)
    prior = analyse_file(cfg, clf, clip)
    _run(cfg, call_like(data_dir), tmp_path)  # a daemon leaves its lines behind
    path = tmp_path / "state" / FILENAME
    before = path.read_bytes()
    after = analyse_file(cfg, clf, clip)
    assert [d.probs for d in after.decisions] == [d.probs for d in prior.decisions]
    assert path.read_bytes() == before


class _Later:
    """time.monotonic, moved on by :attr:`ahead` seconds."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead


def test_a_running_daemon_saves_every_few_minutes(model_path: Path, tmp_path: Path,
                                                  data_dir: Path) -> None:
    """What a crash (no clean stop) would find: the save of the last interval."""
    cfg = _cfg(_reference_model(model_path, tmp_path), tmp_path / "state")
    clock = _Later()
    audio = call_like(data_dir)
    source = ArraySource(audio, [1600])
    d = Daemon(cfg, source=source, publisher=StdoutPublisher(
        "test", tmp_path / "pub", stream=io.StringIO()), monotonic=clock)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    path = tmp_path / "state" / FILENAME
    try:
        deadline = time.monotonic() + 120
        while source.pos < audio.size and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert not path.exists()  # not due yet
        clock.ahead = SAVE_INTERVAL_SECONDS + 1
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.lines is not None and thread.is_alive()
        saved = read(path, dim=_line_of(d).prior.size,
                     memory_windows=_line_of(d).params.memory_windows)
        assert saved is not None and saved.lines["main"].count == _line_of(d).count > 0
    finally:
        d.request_stop()
        thread.join(30)
