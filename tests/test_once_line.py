"""``serd --once --line``: several files judged as one line, against the voice reference
the line learns from all of them (serd.once.SharedLine), as the evaluation judges a
corpus against a warmed reference."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_once import records, serd

from serd.config import Config
from serd.decode import AudioError
from serd.model import ModelSettings, load_classifier
from serd.once import SharedLine, _Hearing, adapts, analyse_channels
from serd.voice import LineReference, ReferenceParams

FILES = ("1001_IEO_ANG_HI.flac", "1001_IEO_NEU_XX.flac", "1091_TIE_SAD_XX.flac",
         "1091_TIE_NEU_XX.flac")


def _warmed(cfg: Config, clf, paths: list[Path]) -> SharedLine:
    line = SharedLine()
    for p in paths:
        line.hear(cfg, clf, p)
    line.freeze()
    return line


def _probs(cfg: Config, clf, path: Path, line: SharedLine | None) -> np.ndarray:
    [result] = analyse_channels(cfg, clf, path, line)
    return np.array([d.raw_probs for d in result.decisions if d.type == "window"])


def test_the_line_hears_every_file_then_judges_each_against_the_same_reference(
        data_dir: Path, classifier) -> None:
    if not adapts(classifier):
        pytest.skip("the model's lines learn no reference")
    cfg = Config()
    paths = [data_dir / f for f in FILES]
    line = _warmed(cfg, classifier, paths)
    ref = line.references["main"]
    heard = line.heard["main"]
    assert ref.count == heard  # below the reference's memory
    # Every window of every file, once (the first pass); the prior is no longer the line.
    windows = sum(len(_probs(cfg, classifier, p, None)) for p in paths)
    assert heard == windows == line.windows > 0
    assert not np.allclose(ref.reference, ref.prior)
    frozen = ref.reference.copy()
    # Judging does not move the reference, so order and repetition change nothing.
    forward = [_probs(cfg, classifier, p, line) for p in paths]
    backward = [_probs(cfg, classifier, p, line) for p in reversed(paths)][::-1]
    for a, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref.reference, frozen)
    assert ref.count == heard
    # And the verdicts are not those of a line's first call (the prior).
    alone = [_probs(cfg, classifier, p, None) for p in paths]
    assert any(not np.array_equal(a, b) for a, b in zip(forward, alone, strict=True))


def test_a_line_reference_is_kept_per_channel_name(data_dir: Path, classifier) -> None:
    if not adapts(classifier):
        pytest.skip("the model's lines learn no reference")
    cfg = Config()
    line = SharedLine()
    line.hear(cfg, classifier, data_dir / FILES[0])
    line.hear(cfg, classifier, data_dir / FILES[1])
    line.freeze()
    assert list(line.references) == ["main"] and list(line.heard) == ["main"]


def test_the_line_hears_every_window_whatever_the_order_beyond_its_memory() -> None:
    """A device's reference forgets beyond memory_windows (an exponential average that
    favours the last files); the first pass must not: a plain mean of all, in float64."""
    rng = np.random.default_rng(0)
    prior = rng.normal(size=8).astype(np.float32)
    windows = rng.normal(size=(50, 8)).astype(np.float32) + 3.0
    refs, device = [], []
    for order in (windows, windows[::-1]):
        own = LineReference(prior, ReferenceParams(prior_windows=4, memory_windows=5))
        hearing = _Hearing(own)
        for w in order:
            hearing(w)
            own(w)
        refs.append(hearing.frozen())
        device.append(own.reference)
        assert hearing.heard == 50
    np.testing.assert_array_equal(refs[0].reference, refs[1].reference)
    assert not np.allclose(device[0], device[1])  # what the first pass avoids
    # Weighed against the prior as the device weighs a full memory, and frozen.
    mean = windows.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(refs[0].reference, (5 * mean + 4 * prior) / 9, rtol=1e-5)
    assert refs[0].count == 5 and not refs[0].adapt


def test_a_file_named_twice_is_heard_once(data_dir: Path, classifier) -> None:
    if not adapts(classifier):
        pytest.skip("the model's lines learn no reference")
    cfg = Config()
    once, twice = SharedLine(), SharedLine()
    a, b = data_dir / FILES[0], data_dir / FILES[1]
    assert once.hear(cfg, classifier, a) and once.hear(cfg, classifier, b)
    assert twice.hear(cfg, classifier, a) and twice.hear(cfg, classifier, b)
    # The same file by another name (resolved to one path).
    assert not twice.hear(cfg, classifier, data_dir / ".." / data_dir.name / FILES[0])
    assert not twice.hear(cfg, classifier, a)
    assert once.heard == twice.heard


def test_a_file_that_fails_part_way_leaves_the_line_as_it_was(
        tmp_path: Path, data_dir: Path, classifier) -> None:
    if not adapts(classifier):
        pytest.skip("the model's lines learn no reference")
    # A long FLAC with garbage in its middle: libsndfile decodes its first half, then fails.
    x = np.concatenate([sf.read(str(data_dir / f), dtype="float32")[0] for f in FILES] * 8)
    whole = tmp_path / "whole.flac"
    sf.write(str(whole), x, 16000)
    raw = bytearray(whole.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 20000] = np.random.default_rng(1).integers(0, 256, 20000, np.uint8).tobytes()
    broken = tmp_path / "broken.flac"
    broken.write_bytes(bytes(raw))
    cfg = Config()
    line = SharedLine()
    line.hear(cfg, classifier, data_dir / FILES[0])
    before = line.heard
    with pytest.raises(AudioError):
        line.hear(cfg, classifier, broken)
    assert line.heard == before
    # And a failing file that brings a new channel name leaves no trace of it.
    fresh = SharedLine()
    with pytest.raises(AudioError):
        fresh.hear(cfg, classifier, broken)
    assert fresh.heard == {}


def test_without_adaptation_line_changes_nothing_and_says_so(
        data_dir: Path, model_path: Path) -> None:
    clf = load_classifier(ModelSettings(path=str(model_path), adapt=False))
    assert not adapts(clf)
    from serd.cli import run_once  # noqa: PLC0415  (the module is the command line)

    paths = [str(data_dir / f) for f in FILES]
    plain, lined = io.StringIO(), io.StringIO()
    cfg = Config(model=ModelSettings(path=str(model_path), adapt=False))
    assert run_once(cfg, paths, as_json=True, out=plain) == 0
    assert run_once(cfg, paths, as_json=True, out=lined, line=True) == 0
    assert plain.getvalue() == lined.getvalue()


def test_cli_line_prints_the_note_and_the_total(data_dir: Path, model_path: Path) -> None:
    paths = [str(data_dir / f) for f in FILES]
    r = serd("--once", *paths, "--line", "--json", model=model_path)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    assert [x["type"] for x in recs].count("summary") == len(FILES)
    total = recs[-1]
    assert total["type"] == "total" and total["files"] == len(FILES)
    notes = [x for x in r.stderr.splitlines() if "--line" in x]
    if total.get("line_windows") is None:
        assert "changes nothing" in r.stderr
    else:
        assert total["line_windows"] > 0
        assert len(notes) == 1 and f"{total['line_windows']} windows" in notes[0]
    text = serd("--once", *paths, "--line", model=model_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().splitlines()[-1].startswith("total: 4 files")
    if total.get("line_windows") is not None:
        assert "judged as one line" in text.stdout.splitlines()[-1]


def test_cli_line_with_an_unreadable_file_reports_it_once(
        tmp_path: Path, data_dir: Path, model_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    r = serd("--once", str(data_dir / FILES[0]), str(bad), "--line", "--json",
             model=model_path)
    assert r.returncode == 2
    assert r.stderr.count("broken.wav") == 1
    assert json.loads(r.stdout.splitlines()[-1])["unreadable"] == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["--line"], "--line needs --once"),
    (["--once", "x.wav", "--line", "--publish"], "pick one"),
])
def test_cli_line_is_refused_where_it_cannot_mean_anything(args: list[str], needle: str) -> None:
    r = serd(*args)
    assert r.returncode == 2
    assert needle in r.stderr


def test_a_file_named_twice_counts_twice_in_the_totals(data_dir: Path, model_path: Path) -> None:
    """Was: the closing line merged a file named twice in a row into one file (and its
    audio) but counted its speech and verdicts twice, so speech exceeded audio."""
    clip = str(data_dir / FILES[0])
    r = serd("--once", clip, clip, clip, "--json", model=model_path)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    total = recs[-1]
    summaries = [x for x in recs if x["type"] == "summary"]
    assert total["files"] == 3 == len(summaries)
    assert total["audio_s"] == pytest.approx(sum(x["duration_s"] for x in summaries), abs=0.01)
    assert total["speech_s"] <= total["audio_s"]
