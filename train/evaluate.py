"""Scoring: file-level verdicts from window probabilities, metrics, int8 through serd."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from serd.model import Classifier


def file_probs(window_probs: npt.NDArray[np.float32], file: npt.NDArray[np.int64],
               n_files: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Mean of each file's window probabilities (the daemon's utterance verdict).

    Returns (n_files, n_labels) probabilities and a mask of files that had any window.
    """
    n_labels = window_probs.shape[1] if window_probs.ndim == 2 else 0
    sums = np.zeros((n_files, n_labels), np.float64)
    np.add.at(sums, file, window_probs)
    counts = np.bincount(file, minlength=n_files)
    has = counts > 0
    out = np.zeros_like(sums)
    out[has] = sums[has] / counts[has, None]
    return out.astype(np.float32), has


def scores(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_labels: int) -> dict[str, Any]:
    """Balanced accuracy, macro-F1, accuracy, per-class recall and the confusion matrix."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(n_labels))
    if yt.size == 0:
        return {"n": 0, "balanced_accuracy": 0.0, "macro_f1": 0.0, "accuracy": 0.0,
                "recall": [0.0] * n_labels, "confusion": [[0] * n_labels for _ in labels]}
    cm = confusion_matrix(yt, yp, labels=labels)
    present = cm.sum(1) > 0
    recall = np.where(present, np.diag(cm) / np.maximum(cm.sum(1), 1), 0.0)
    return {
        "n": int(yt.size),
        "balanced_accuracy": float(balanced_accuracy_score(yt, yp)) if present.all()
        else float(recall[present].mean()),
        "macro_f1": float(f1_score(yt, yp, labels=[i for i in labels if present[i]],
                                   average="macro", zero_division=0)),
        "accuracy": float((yt == yp).mean()),
        "recall": [round(float(r), 4) for r in recall],
        "confusion": cm.astype(int).tolist(),
    }


def int8_window_probs(clf: Classifier,
                      raw_windows: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The int8 CNN's window probabilities exactly as the device computes them."""
    out = np.zeros((len(raw_windows), len(clf.labels)), np.float32)
    for i, w in enumerate(raw_windows):
        out[i] = clf(np.asarray(w, np.float32))
    return out


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()) if a.size else 0.0,
            "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


DISTRESS = ("angry", "fearful")
"""The labels an alert acts on: distress is either of them, against every other label."""

ECE_BINS = 10
"""Equal-width confidence bins of the expected calibration error."""


@dataclass
class VerdictStats:
    """How far the file verdicts can be acted on: distress (either :data:`DISTRESS` label
    against the rest, from the argmax, balanced accuracy), the expected calibration error
    of the verdict's confidence (its top probability against being right, ``ECE_BINS``
    equal-width bins), and the share of files whose confidence reaches the decision
    threshold (serd reports no label below it), with the balanced accuracy of those."""

    distress_balanced_accuracy: float
    ece: float
    verdict_share: float
    verdict_balanced_accuracy: float
    threshold: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerdictStats:
        return cls(d["distress_balanced_accuracy"], d["ece"], d["verdict_share"],
                   d["verdict_balanced_accuracy"], d["threshold"])

    def to_dict(self) -> dict[str, Any]:
        return {"distress_balanced_accuracy": self.distress_balanced_accuracy,
                "ece": self.ece, "verdict_share": self.verdict_share,
                "verdict_balanced_accuracy": self.verdict_balanced_accuracy,
                "threshold": self.threshold}


def expected_calibration_error(probs: npt.NDArray[np.floating], y: npt.NDArray[np.int64],
                               bins: int = ECE_BINS) -> float:
    """Sum over confidence bins of (share of files) x |accuracy - mean confidence|."""
    if y.size == 0:
        return 0.0
    conf = probs.max(1)
    right = probs.argmax(1) == y
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(float(right[m].mean()) - float(conf[m].mean()))
    return float(total)


def verdict_stats(probs: npt.NDArray[np.floating], y: npt.NDArray[np.int64],
                  labels: Sequence[str], threshold: float) -> VerdictStats:
    """:class:`VerdictStats` of file probabilities ``probs`` with true labels ``y``."""
    pred = probs.argmax(1) if y.size else np.zeros(0, np.int64)
    dis = [labels.index(lab) for lab in DISTRESS if lab in labels]
    yt, yp = np.isin(y, dis).astype(np.int64), np.isin(pred, dis).astype(np.int64)
    sure = probs.max(1) >= threshold if y.size else np.zeros(0, bool)
    return VerdictStats(
        distress_balanced_accuracy=scores(yt, yp, 2)["balanced_accuracy"],
        ece=expected_calibration_error(probs, y),
        verdict_share=float(sure.mean()) if y.size else 0.0,
        verdict_balanced_accuracy=scores(y[sure], pred[sure], len(labels))["balanced_accuracy"],
        threshold=threshold)
