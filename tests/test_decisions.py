"""Smoothing, threshold and hysteresis of labels."""

from __future__ import annotations

import numpy as np
import pytest

from serd.decisions import Decider, DecisionSettings, verdict
from serd.validate import ConfigError, build

LABELS = ("neutral", "happy", "sad", "angry")


def p(*values: float) -> np.ndarray:
    return np.asarray(values, np.float32)


def test_below_threshold_claims_nothing() -> None:
    v = verdict(LABELS, p(0.3, 0.3, 0.2, 0.2), threshold=0.5)
    assert v.label is None
    assert v.confidence == pytest.approx(0.3)
    assert set(v.probs) == set(LABELS)


def test_smoothing_averages_recent_windows() -> None:
    d = Decider(LABELS, DecisionSettings(smoothing_windows=2, threshold=0.4, hysteresis=0.0))
    assert d(p(0, 0, 0, 1)).label == "angry"
    v = d(p(0, 1, 0, 0))
    assert v.probs["angry"] == pytest.approx(0.5)
    assert v.probs["happy"] == pytest.approx(0.5)


def test_hysteresis_keeps_the_label_until_a_rival_clearly_wins() -> None:
    d = Decider(LABELS, DecisionSettings(smoothing_windows=1, threshold=0.3, hysteresis=0.2))
    assert d(p(0.1, 0.1, 0.1, 0.7)).label == "angry"
    # happy edges ahead, but not by the margin: keep angry (no flicker)
    assert d(p(0.1, 0.48, 0.0, 0.42)).label == "angry"
    # happy wins clearly: switch
    assert d(p(0.1, 0.75, 0.0, 0.15)).label == "happy"


def test_utterance_verdict_is_the_mean_and_resets() -> None:
    d = Decider(LABELS, DecisionSettings(threshold=0.4))
    d(p(0, 0, 0.2, 0.8))
    d(p(0, 0, 0.6, 0.4))
    v = d.end()
    assert v is not None
    assert v.label == "angry"
    assert v.probs["angry"] == pytest.approx(0.6)
    assert d.end() is None  # nothing since the reset


def test_decision_settings_validated() -> None:
    with pytest.raises(ConfigError, match=r"decisions\.threshold"):
        build(DecisionSettings, {"threshold": 2}, "decisions")
