"""Calibration of the shipped model's confidence: one temperature, fitted across corpora.

On corpora it was trained on the model is, if anything, under-confident; on a corpus it
never heard it is over-confident (docs/experiments/LOG.md, fourteenth round), so a
temperature fitted on held-out speakers of the training corpora makes the unseen-corpus
error worse.  What the device meets is the unseen case, so the temperature is fitted on
the ``cross_corpus`` folds: each fold's file probabilities are those of a model that never
heard the fold's corpus.  The figure reported for each corpus is *nested*: its temperature
is fitted on the other corpora's folds only, so no corpus is scored with a temperature it
helped to choose.  The shipped card gets the temperature fitted on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serd.decisions import DecisionSettings
from train.evaluate import expected_calibration_error, verdict_stats

TEMPERATURES = np.exp(np.linspace(np.log(0.5), np.log(8.0), 61))
"""The grid searched (log-spaced, 0.5 to 8)."""


@dataclass(frozen=True)
class FoldProbs:
    """One left-out corpus: the device's file probabilities and the true labels."""

    corpus: str
    probs: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]


def temper(probs: npt.NDArray[np.floating], t: float) -> npt.NDArray[np.float64]:
    """Rows of ``probs`` calibrated by temperature ``t`` (as :func:`serd.decisions.tempered`)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / t
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def fit_temperature(folds: Sequence[FoldProbs]) -> float:
    """The temperature of the grid with the least log loss over ``folds``, each corpus
    weighing the same (a large corpus does not choose it alone)."""
    best_t, best = 1.0, np.inf
    for t in TEMPERATURES:
        loss = 0.0
        for f in folds:
            p = temper(f.probs, float(t))
            loss += float(-np.mean(np.log(np.clip(p[np.arange(len(f.y)), f.y], 1e-12, 1))))
        if loss < best:
            best_t, best = float(t), loss
    return round(best_t, 3)


def load_fold(path: Path, condition: str = "clean", kind: str = "fused_int8"
              ) -> FoldProbs | None:
    """A cross_corpus fold's dump (:func:`train.evaluation.evaluate`): the files with a
    window, the device's probabilities.  None when the dump is missing or has no such kind."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        key = f"{condition}_{kind}"
        if key not in z.files:
            return None
        has = z[f"{condition}_has"]
        return FoldProbs(str(z["corpus"][0]) if z["corpus"].size else path.stem,
                         np.asarray(z[key][has], np.float64), np.asarray(z["y"][has], np.int64))


@dataclass(frozen=True)
class CorpusCalibration:
    corpus: str
    temperature: float
    """Fitted on the other corpora only (nested)."""
    ece_before: float
    ece_after: float
    verdict_share_after: float
    """Files whose calibrated top probability reaches the decision threshold."""


@dataclass(frozen=True)
class CalibrationResult:
    temperature: float
    """Fitted on every fold: the shipped card's."""
    per_corpus: list[CorpusCalibration]

    def to_dict(self) -> dict[str, object]:
        def r(v: float) -> float:
            return round(v, 4)
        return {
            "method": "temperature on the file probabilities, fitted on the cross_corpus "
                      "folds (unseen corpora); per corpus nested: fitted on the others",
            "temperature": self.temperature,
            "per_corpus": {c.corpus: {"temperature": c.temperature, "ece_before": r(c.ece_before),
                                      "ece_after": r(c.ece_after),
                                      "verdict_share_after": r(c.verdict_share_after)}
                           for c in self.per_corpus},
            "mean_ece_before": r(float(np.mean([c.ece_before for c in self.per_corpus]))),
            "mean_ece_after": r(float(np.mean([c.ece_after for c in self.per_corpus]))),
            "max_ece_after": r(float(max(c.ece_after for c in self.per_corpus))),
        }


def calibrate(folds: Sequence[FoldProbs], labels: Sequence[str]) -> CalibrationResult | None:
    """The shipped temperature and each corpus's nested figures; None with fewer than three
    left-out corpora (a temperature fitted on one other corpus says little)."""
    if len(folds) < 3:
        return None
    threshold = DecisionSettings().threshold
    per = []
    for i, f in enumerate(folds):
        t = fit_temperature([g for j, g in enumerate(folds) if j != i])
        after = temper(f.probs, t)
        per.append(CorpusCalibration(
            f.corpus, t, expected_calibration_error(f.probs, f.y),
            expected_calibration_error(after, f.y),
            verdict_stats(after, f.y, labels, threshold).verdict_share))
    return CalibrationResult(fit_temperature(folds), per)
