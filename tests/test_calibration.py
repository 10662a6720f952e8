"""Calibration: a temperature fitted on unseen corpora, nested per corpus, applied by the
device's decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serd.decisions import Decider, tempered
from serd.model import Calibration, ModelCard
from train.calibration import FoldProbs, calibrate, fit_temperature, load_fold, temper

LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust")


def _overconfident(seed: int, n: int = 600, right: float = 0.45) -> FoldProbs:
    """Files whose top probability is about 0.9 but right ``right`` of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    pred = np.where(rng.random(n) < right, y, (y + rng.integers(1, 6, n)) % 6)
    p = np.full((n, 6), 0.02)
    p[np.arange(n), pred] = 0.9
    return FoldProbs(f"c{seed}", p / p.sum(1, keepdims=True), y)


def test_an_overconfident_model_gets_a_temperature_above_one() -> None:
    folds = [_overconfident(s) for s in range(4)]
    t = fit_temperature(folds)
    assert t > 1.5
    res = calibrate(folds, LABELS)
    assert res is not None
    for c in res.per_corpus:
        assert c.ece_after < c.ece_before / 2
        assert c.ece_before > 0.3
    d = res.to_dict()
    assert d["temperature"] == res.temperature and set(d["per_corpus"]) == {"c0", "c1", "c2", "c3"}


def test_fewer_than_three_corpora_are_not_calibrated() -> None:
    assert calibrate([_overconfident(0), _overconfident(1)], LABELS) is None


def test_temper_keeps_the_argmax_and_matches_the_device() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    q = temper(p, 2.0)
    assert (q.argmax(1) == p.argmax(1)).all()
    assert q.max(1).max() < 0.7
    for row, want in zip(p, q, strict=True):
        np.testing.assert_allclose(tempered(row.astype(np.float32), 2.0), want, rtol=1e-5)
    np.testing.assert_array_equal(tempered(p[0].astype(np.float32), 1.0), p[0].astype(np.float32))


def test_the_decider_judges_calibrated_probabilities() -> None:
    probs = np.array([0.5, 0.3, 0.1, 0.05, 0.03, 0.02], np.float32)
    plain = Decider(LABELS)
    hot = Decider(LABELS, temperature=3.0)
    assert plain(probs).label == "neutral"
    v = hot(probs)
    assert v.label is None  # spread below the 0.35 threshold: nothing claimed
    assert v.confidence < 0.35
    assert hot.end() is not None


def test_the_card_carries_its_calibration(tmp_path: Path) -> None:
    from dataclasses import replace  # noqa: PLC0415

    from serd.model import DEFAULT_MODEL, card_path_for  # noqa: PLC0415

    card = replace(ModelCard.load(card_path_for(DEFAULT_MODEL)),
                   calibration=Calibration(1.7, "cross_corpus folds: a, b, c"))
    back = ModelCard.from_dict(card.to_dict())
    assert back.calibration == card.calibration
    plain = ModelCard.from_dict({k: v for k, v in card.to_dict().items()
                                 if k != "calibration"})
    assert plain.calibration.temperature == 1.0
    with pytest.raises(ValueError, match="temperature"):
        Calibration(0.0)


def test_a_missing_dump_is_none(tmp_path: Path) -> None:
    assert load_fold(tmp_path / "none.probs.npz") is None
    np.savez(tmp_path / "f.probs.npz", corpus=np.array(["x", "x"]), y=np.array([0, 1]),
             clean_has=np.array([True, False]), clean_fused_int8=np.eye(2, 6))
    f = load_fold(tmp_path / "f.probs.npz")
    assert f is not None and f.corpus == "x" and f.probs.shape == (1, 6)


def test_the_once_summary_is_calibrated_as_the_utterances_are(model_path: Path,
                                                              data_dir: Path) -> None:
    """``serd --once``'s file summary is the mean of the window probabilities, which is
    what the temperature was fitted on: it is judged calibrated, as the daemon's
    utterance verdicts are, not raw."""
    from dataclasses import replace  # noqa: PLC0415

    from serd.config import parse  # noqa: PLC0415
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415
    from serd.once import analyse_file  # noqa: PLC0415

    cfg = parse({"model": {"path": str(model_path)}})
    clf = load_classifier(ModelSettings(path=str(model_path)))
    clf.card = replace(clf.card, calibration=Calibration(4.0, "test"))
    res = analyse_file(cfg, clf, data_dir / "1001_IEO_ANG_HI.flac")
    windows = [d for d in res.decisions if d.type == "window"]
    assert windows and res.summary is not None
    raw = np.mean([d.raw_probs for d in windows], axis=0).astype(np.float32)
    want = tempered(raw, 4.0)
    assert res.summary.confidence == pytest.approx(float(want.max()), abs=1e-4)
    assert res.summary.confidence < float(raw.max()) - 0.01
    utterances = [d for d in res.decisions if d.type == "utterance"]
    if len(utterances) == 1:  # one utterance: its verdict and the summary agree
        assert utterances[0].confidence == pytest.approx(res.summary.confidence, abs=2e-3)


@pytest.mark.parametrize("voice", [True, False])
def test_serd_train_calibrates_what_the_device_computes(tmp_path: Path, voice: bool) -> None:
    """The card's temperature is fitted on the device's probabilities of the cross_corpus
    folds: the fused ones for a model with a voice branch, the int8 CNN's for one
    without (whose dumps have no fused kind)."""
    from dataclasses import replace  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415
    from typing import Any, cast  # noqa: PLC0415

    from serd.model import DEFAULT_MODEL, card_path_for  # noqa: PLC0415
    from train.final import calibrated  # noqa: PLC0415

    card = ModelCard.load(card_path_for(DEFAULT_MODEL))
    if not voice:
        card = replace(card, voice=None)
    kind = "fused_int8" if voice else "int8"
    for i in range(4):
        f = _overconfident(i)
        np.savez(tmp_path / f"f{i}.probs.npz", corpus=np.array([f.corpus] * len(f.y)),
                 y=f.y, clean_has=np.ones(len(f.y), bool), **{f"clean_{kind}": f.probs})
    cv = SimpleNamespace(probs_record=lambda _p, i: tmp_path / f"f{i}.probs.npz")
    cvs = {"cross_corpus": SimpleNamespace(folds=4)}
    out = calibrated(cast(Any, cv), cast(Any, cvs), card)
    assert out.calibration.temperature > 1.5
    assert "calibration" in out.metrics["cross_corpus"]
