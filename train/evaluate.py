"""Scoring: file-level verdicts from window probabilities, metrics, int8 through serd."""

from __future__ import annotations

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
