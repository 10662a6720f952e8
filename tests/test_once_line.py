"""``serd --once --line``: several files judged as one line, against the voice reference
the line learns from all of them (serd.once.SharedLine), as the evaluation judges a
corpus against a warmed reference."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_once import records, serd

from serd.config import Config
from serd.model import ModelSettings, load_classifier
from serd.once import SharedLine, adapts, analyse_channels

FILES = ("1001_IEO_ANG_HI.flac", "1001_IEO_NEU_XX.flac", "1091_TIE_SAD_XX.flac",
         "1091_TIE_NEU_XX.flac")


def _warmed(cfg: Config, clf, paths: list[Path]) -> SharedLine:
    line = SharedLine()
    for p in paths:
        analyse_channels(cfg, clf, p, line)
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
    heard = ref.count
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
    analyse_channels(cfg, classifier, data_dir / FILES[0], line)
    first = line.references["main"]
    analyse_channels(cfg, classifier, data_dir / FILES[1], line)
    assert line.references["main"] is first and list(line.references) == ["main"]


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
