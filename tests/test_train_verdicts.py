"""What the cross-corpus figures rest on: distress, calibration and verdict share of file
verdicts, class weights balanced per (corpus, class), and a protocol over every corpus
found.  (Pure numpy: no TensorFlow.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train.config import ProtocolConfig, load_config
from train.evaluate import expected_calibration_error, verdict_stats
from train.model import class_weights, corpus_class_weights
from train.results import CvResult

LABELS = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
MODELS = Path(__file__).resolve().parent.parent / "models"


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # Ten files at confidence 0.8, eight of them right: perfectly calibrated.
    probs = np.tile([0.8, 0.2, 0, 0, 0, 0], (10, 1)).astype(np.float32)
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-6)
    # All wrong at confidence 0.8: off by 0.8.
    assert expected_calibration_error(probs, np.ones(10, np.int64)) == pytest.approx(0.8)


def test_ece_weights_bins_by_their_share_of_files() -> None:
    probs = np.array([[0.95, 0.05]] * 3 + [[0.55, 0.45]], np.float32)
    y = np.array([0, 0, 0, 1])  # bin 0.9: 3 right at 0.95; bin 0.5: 1 wrong at 0.55
    assert expected_calibration_error(probs, y) == pytest.approx(0.75 * 0.05 + 0.25 * 0.55)


def test_distress_is_angry_or_fearful_against_the_rest() -> None:
    # angry called fearful is still distress; sad called angry is a false alarm.
    y = np.array([3, 4, 2, 0])
    probs = np.eye(6, dtype=np.float32)[[4, 4, 3, 0]] * 0.9 + 0.1 / 6
    v = verdict_stats(probs, y, LABELS, threshold=0.35)
    assert v.distress_balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)
    assert v.verdict_share == 1.0


def test_verdict_share_counts_files_at_or_above_the_threshold() -> None:
    probs = np.array([[0.5, 0.5, 0, 0, 0, 0], [0.3, 0.2, 0.2, 0.1, 0.1, 0.1],
                      [0.35, 0.15, 0.15, 0.15, 0.1, 0.1]], np.float32)
    v = verdict_stats(probs, np.array([0, 0, 1]), LABELS, threshold=0.35)
    assert v.verdict_share == pytest.approx(2 / 3)
    # Of the two with a verdict, one right (class 0) and one wrong (class 1 called 0).
    assert v.verdict_balanced_accuracy == pytest.approx(0.5)
    assert v.to_dict()["threshold"] == 0.35


def test_corpus_class_weights_balance_classes_then_corpora() -> None:
    # Corpus 0: 90 neutral, 10 angry.  Corpus 1: 10 neutral only.
    y = np.array([0] * 90 + [3] * 10 + [0] * 10)
    g = np.array([0] * 100 + [1] * 10)
    w = corpus_class_weights(y, g, 6)
    assert w.mean() == pytest.approx(1.0)
    # Each class present weighs half; neutral's half is split equally between the corpora.
    assert w[y == 3].sum() == pytest.approx(w[y == 0].sum())
    assert w[(y == 0) & (g == 0)].sum() == pytest.approx(w[(y == 0) & (g == 1)].sum())
    # One corpus: the plain class weights, up to a constant (those divide by every label,
    # these by the labels present).
    one = np.zeros_like(y)
    ratio = corpus_class_weights(y, one, 6) / class_weights(y, 6)[y]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)


def test_cross_corpus_takes_every_corpus_found() -> None:
    p = load_config().protocols["cross_corpus"]
    assert p.split == "corpus" and p.corpora is None and p.all_corpora is None
    base = load_config().training
    with pytest.raises(ValueError, match="corpora"):
        ProtocolConfig(corpora=None, taxonomy="six", training=base, folds=6)


def test_shipped_cv_results_without_verdicts_round_trip() -> None:
    # Results written before the verdict figures existed load and dump back unchanged.
    for path in sorted(MODELS.glob("cv-*.json")):
        d = json.loads(path.read_text())
        assert CvResult.from_dict(d).to_dict() == d, path.name


def test_verdict_figures_are_summarised_and_round_trip() -> None:
    from train.evaluate import VerdictStats  # noqa: PLC0415
    from train.results import aggregate  # noqa: PLC0415

    cv = CvResult.from_dict(json.loads((MODELS / "cv-six.json").read_text()))
    for i, f in enumerate(cv.per_fold):
        for cond in (f.clean, f.telephone):
            # Only fused_int8 (the shipped file has every kind's since the fourteenth round).
            cond.verdicts.clear()
            cond.verdicts["fused_int8"] = VerdictStats(0.7 + i / 100, 0.05, 0.9, 0.6, 0.35)
    cv.summary = aggregate(cv.per_fold, len(cv.labels))
    d = cv.to_dict()
    assert d["summary"]["clean.fused_int8.file.ece"]["mean"] == pytest.approx(0.05)
    assert d["summary"]["clean.fused_int8.file.distress_balanced_accuracy"]["per_fold"][1] \
        == pytest.approx(0.71)
    assert "clean.int8.file.ece" not in d["summary"]  # no fold has it
    assert CvResult.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_capped_keeps_at_most_cap_files_per_corpus_in_order() -> None:
    from train.corpora import Item  # noqa: PLC0415
    from train.windowsets import capped  # noqa: PLC0415

    items = [Item(f"{c}{i}.wav", c, f"{c}:{i % 3}", "sad") for c, n in (("a", 10), ("b", 3))
             for i in range(n)]
    idx, lab = list(range(len(items))), list(range(len(items)))
    got, glab = capped(items, idx, lab, 4, seed=1)
    assert got == sorted(got) and glab == got
    assert sum(items[i].corpus == "a" for i in got) == 4
    assert [i for i in got if items[i].corpus == "b"] == [10, 11, 12]
    assert capped(items, idx, lab, 4, seed=1) == (got, glab)  # seeded
    assert capped(items, idx, lab, 0, seed=1) == (idx, lab)
