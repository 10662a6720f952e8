"""Model runtime and card checks: the daemon refuses what it cannot trust."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from serd.features import FeatureParams
from serd.model import (
    Classifier,
    ModelCard,
    ModelError,
    ModelSettings,
    card_path_for,
    check_card,
    load_classifier,
)
from serd_testkit import edit_card


def test_shipped_model_loads_and_classifies(classifier: Classifier) -> None:
    assert classifier.runtime in ("ai-edge-litert", "tflite-runtime", "tensorflow.lite")
    assert classifier.input_quant.dtype == np.int8
    assert len(classifier.labels) >= 2
    win = np.random.default_rng(0).normal(size=classifier.input_shape[1:]).astype(np.float32)
    probs = classifier(win)
    assert probs.shape == (len(classifier.labels),)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert (probs >= 0).all()


def test_shipped_card_is_complete(classifier: Classifier) -> None:
    card = classifier.card.to_dict()
    for key in ("labels", "sample_rate", "window_seconds", "hop_seconds", "features",
                "normalisation", "fingerprint", "training", "metrics"):
        assert card[key], key
    assert set(classifier.labels) == {"neutral", "happy", "sad", "angry", "fearful", "disgust"}


def test_quantize_roundtrip(classifier: Classifier) -> None:
    q = classifier.input_quant
    x = np.linspace(-3, 3, 50, dtype=np.float32)
    back = q.dequantize(q.quantize(x))
    assert np.abs(back - np.clip(x, back.min(), back.max())).max() <= q.scale / 2 + 1e-6


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier(ModelSettings(path=str(tmp_path / "nope.tflite")))


def test_missing_card(model_copy: Path) -> None:
    card_path_for(model_copy).unlink()
    with pytest.raises(ModelError, match=r"card .* is missing"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_card_not_json(model_copy: Path) -> None:
    card_path_for(model_copy).write_text("{ not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_truncated_model_is_refused(model_copy: Path) -> None:
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="does not match its card"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_truncated_model_without_hash_is_refused_cleanly(model_copy: Path) -> None:
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 3])
    edit_card(model_copy, model_file__sha256="")
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_feature_mismatch_is_refused(model_copy: Path) -> None:
    edit_card(model_copy, features__n_mfcc=20)
    with pytest.raises(ModelError, match="n_mfcc=20"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_fingerprint_mismatch_is_refused(classifier: Classifier) -> None:
    bad = dataclasses.replace(
        classifier.card, fingerprint=tuple(v + 1.0 for v in classifier.card.fingerprint)
    )
    with pytest.raises(ModelError, match="fingerprint"):
        check_card(bad, FeatureParams())


def test_labels_mismatch_is_refused(model_copy: Path) -> None:
    edit_card(model_copy, labels=["a", "b"])
    with pytest.raises(ModelError, match="labels"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_window_mismatch_is_refused(model_copy: Path) -> None:
    edit_card(model_copy, windows__window_seconds=1.0)
    with pytest.raises(ModelError, match="do not belong together"):
        load_classifier(ModelSettings(path=str(model_copy)))


def test_card_roundtrip(classifier: Classifier, tmp_path: Path) -> None:
    p = tmp_path / "c.card.json"
    classifier.card.save(p)
    assert ModelCard.load(p) == classifier.card
