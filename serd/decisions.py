"""Decisions: from per-window probabilities to labels people can rely on.

Modelled on tflite-micro's ``RecognizeCommands``: window probabilities are averaged over
the last few windows of the current utterance (smoothing), a label is only claimed when the
smoothed probability reaches a threshold (below it the label is ``None``: nothing claimed),
and a claimed label only changes when a rival beats it by a margin (hysteresis), so the
dashboard does not flicker between two close emotions.

An utterance's verdict is the mean of its windows' probabilities, thresholded the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from serd.validate import require


@dataclass(frozen=True)
class Decision:
    """A labelled stretch of one channel: a window during speech, or a whole utterance."""

    type: Literal["window", "utterance"]
    channel: str
    segment: int
    start_s: float
    end_s: float
    label: str | None
    """None when the confidence is below the threshold: nothing is claimed."""
    confidence: float
    probs: dict[str, float] = field(default_factory=dict)
    raw_probs: tuple[float, ...] = ()
    """Window only: the model's own (unsmoothed) probabilities, in label order."""
    windows: int = 1
    """Utterance only: how many windows the verdict averages."""


@dataclass(frozen=True)
class DecisionSettings:
    """Smoothing, threshold and hysteresis of window and utterance labels."""

    smoothing_windows: int = 3
    """Windows averaged (within one utterance) for a window event's label."""
    threshold: float = 0.35
    """Smoothed probability needed to claim a label; below it the label is null."""
    hysteresis: float = 0.1
    """A claimed label is kept until a rival's smoothed probability exceeds it by this much."""

    def __post_init__(self) -> None:
        require(1 <= self.smoothing_windows <= 50, "smoothing_windows", "must be in 1..50")
        require(0.0 <= self.threshold <= 1.0, "threshold", "must be in 0..1")
        require(0.0 <= self.hysteresis < 1.0, "hysteresis", "must be in 0..1")


@dataclass(frozen=True)
class Verdict:
    label: str | None
    confidence: float
    probs: dict[str, float]


def verdict(labels: tuple[str, ...], probs: npt.NDArray[np.float32], threshold: float) -> Verdict:
    """Argmax label of ``probs`` if it reaches ``threshold``, else no label."""
    i = int(np.argmax(probs))
    conf = float(probs[i])
    return Verdict(
        labels[i] if conf >= threshold else None,
        round(conf, 4),
        {lab: round(float(p), 4) for lab, p in zip(labels, probs, strict=True)},
    )


def tempered(probs: npt.NDArray[np.float32], temperature: float) -> npt.NDArray[np.float32]:
    """``probs`` calibrated by a temperature: proportional to ``probs ** (1 / T)``.  T > 1
    spreads an over-confident model's probabilities (the argmax never changes)."""
    if temperature == 1.0:
        return probs
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    e = np.exp(logp - logp.max())
    return np.asarray(e / e.sum(), np.float32)


class Decider:
    """Stateful per-channel decisions: ``__call__(probs)`` per window, ``end()`` per utterance.

    ``temperature`` is the model card's calibration (:class:`serd.model.Calibration`): it
    is applied to what is judged (the smoothed window probabilities, an utterance's mean),
    so that a published confidence of 0.6 is right about 60 % of the time."""

    def __init__(self, labels: tuple[str, ...], settings: DecisionSettings | None = None,
                 temperature: float = 1.0) -> None:
        self.labels = labels
        self.temperature = temperature
        self.settings = settings or DecisionSettings()
        self._recent: deque[npt.NDArray[np.float32]] = deque(
            maxlen=self.settings.smoothing_windows
        )
        self.reset()

    def reset(self) -> None:
        """A new utterance starts: forget smoothing state and the current label."""
        self._recent.clear()
        self._sum = np.zeros(len(self.labels), np.float64)
        self._count = 0
        self.current: int | None = None

    def __call__(self, probs: npt.NDArray[np.float32]) -> Verdict:
        self._recent.append(probs)
        self._sum += probs
        self._count += 1
        smoothed = tempered(np.mean(self._recent, axis=0), self.temperature)
        s = self.settings
        best = int(np.argmax(smoothed))
        cur = self.current
        # Hysteresis: switch only when the rival clearly wins.
        if (
            cur is not None
            and best != cur
            and smoothed[best] < smoothed[cur] + s.hysteresis
            and smoothed[cur] >= s.threshold
        ):
            best = cur
        self.current = best if smoothed[best] >= s.threshold else None
        v = verdict(self.labels, smoothed, s.threshold)
        if v.label is not None and self.current is not None:
            v = Verdict(self.labels[self.current], round(float(smoothed[self.current]), 4), v.probs)
        return v

    def end(self) -> Verdict | None:
        """The utterance is over: its mean-probability verdict (None if it had no window)."""
        if self._count == 0:
            self.reset()
            return None
        mean = tempered((self._sum / self._count).astype(np.float32), self.temperature)
        out = verdict(self.labels, mean, self.settings.threshold)
        self.reset()
        return out
