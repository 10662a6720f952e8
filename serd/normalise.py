"""Window normalisation: what the model card says to do to a window of frames before the model.

Fitted by ``train/`` on the training windows, stored in the card, and applied by the
classifier stage (:class:`serd.model.Classifier`) and by training and evaluation alike, so
the device normalises exactly as the model was trained.  It lives apart from
:mod:`serd.features`, whose fixed code computes the frames, because this is the part that
training fits (and the training feature cache, keyed by the front-end's source, stays
valid when only the normalisation changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.features import FloatArray

KIND = "window_cmn_global_scale"


@dataclass(frozen=True)
class Normalisation:
    """Per-window mean subtraction, then a global per-channel scale.

    Subtracting each window's mean removes the microphone's and line's fixed colouring and
    the input gain (both are additive constants in the log-mel/cepstral domain), so a model
    trained on studio corpora transfers to other microphones and to telephone lines.  The
    dynamics within the window (energy and pitch movement, which carry emotion) remain.
    ``scale`` is 1/std of each channel over the training windows after mean removal.
    """

    scale: tuple[float, ...]
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": [float(s) for s in self.scale]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        kind = data.get("kind")
        if kind != KIND:
            raise ValueError(f"unknown normalisation kind {kind!r}")
        return cls(scale=tuple(float(s) for s in data["scale"]), kind=kind)


def normalise_windows(windows: npt.NDArray[np.float32], norm: Normalisation) -> FloatArray:
    """Apply :class:`Normalisation` to (k, frames, d) windows (or one (frames, d) window)."""
    w = np.asarray(windows, dtype=np.float32)
    centred = w - w.mean(axis=-2, keepdims=True)
    return centred * np.asarray(norm.scale, dtype=np.float32)


def fit_normalisation(windows: npt.NDArray[np.float32]) -> Normalisation:
    """Fit the global scale on (k, frames, d) training windows (after mean removal)."""
    w = np.asarray(windows, dtype=np.float64)
    centred = w - w.mean(axis=1, keepdims=True)
    std = centred.reshape(-1, w.shape[-1]).std(axis=0)
    return Normalisation(scale=tuple(float(1.0 / max(s, 1e-6)) for s in std))
