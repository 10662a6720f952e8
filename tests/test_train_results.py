"""The typed training results read and write the JSON ``serd-train`` has always written.

The shipped ``models/cv-*.json`` were written by the untyped code that came before
:mod:`train.results`: they load into the dataclasses and dump back byte for byte, and the
summary, the card metrics and ``models/README.md`` computed from their folds are the
ones on file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serd.model import ModelCard, card_path_for
from serd.voice import VoiceCard
from train.results import CvResult, FoldResult, aggregate

MODELS = Path(__file__).resolve().parent.parent / "models"
PROTOCOLS = ("six", "ravdess8", "cross_corpus")


def _cv(name: str) -> tuple[str, CvResult]:
    text = (MODELS / f"cv-{name}.json").read_text()
    return text, CvResult.from_dict(json.loads(text))


@pytest.mark.parametrize("name", PROTOCOLS)
def test_cv_json_round_trips_byte_identical(name: str) -> None:
    text, cv = _cv(name)
    assert json.dumps(cv.to_dict(), indent=1) + "\n" == text
    for fold in cv.per_fold:  # fold records are written compact, one line each
        record = json.dumps(fold.to_dict())
        assert FoldResult.from_dict(json.loads(record)) == fold


@pytest.mark.parametrize("name", PROTOCOLS)
def test_aggregate_reproduces_the_summary_on_file(name: str) -> None:
    """The summaries on file were computed by the dict-based aggregate this replaced."""
    _, cv = _cv(name)
    again = aggregate(cv.per_fold, len(cv.labels))
    assert again is not None and cv.summary is not None
    assert json.dumps(again.to_dict()) == json.dumps(cv.summary.to_dict())


def test_card_metrics_are_those_on_the_shipped_card() -> None:
    card = json.loads(card_path_for(MODELS / "serd-emotion-6.tflite").read_text())
    for name in PROTOCOLS:
        _, cv = _cv(name)
        shipped = dict(card["metrics"][name])
        # The calibration (train.calibration) is added beside cross_corpus's metrics.
        cal = shipped.pop("calibration", None)
        assert (cal is not None) == (name == "cross_corpus")
        assert json.dumps(cv.card_metrics()) == json.dumps(shipped)


def test_model_card_and_its_voice_section_round_trip() -> None:
    path = card_path_for(MODELS / "serd-emotion-6.tflite")
    data = json.loads(path.read_text())
    card = ModelCard.from_dict(data)
    assert isinstance(card.voice, VoiceCard)
    assert card.voice.cnn_weight == data["voice"]["cnn_weight"]
    assert json.dumps(card.to_dict(), indent=2) + "\n" == path.read_text()


def test_readme_renders_from_the_typed_results(tmp_path: Path) -> None:
    """``serd-train report`` on the shipped files gives the shipped README."""
    pytest.importorskip("matplotlib")
    from train import report  # noqa: PLC0415
    from train.config import load_config  # noqa: PLC0415

    for f in (*MODELS.glob("*.json"), MODELS / "serd-emotion-6.tflite"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    report.render(tmp_path, load_config(), "serd-emotion-6")
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == \
        (MODELS / "README.md").read_text(encoding="utf-8")
