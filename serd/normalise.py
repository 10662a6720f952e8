"""Window normalisation: what the model card says to do to a window of frames before the model.

Fitted by ``train/`` on the training windows, stored in the card, and applied by the
classifier stage (:class:`serd.model.Classifier`) and by training and evaluation alike, so
the device normalises exactly as the model was trained.  It lives apart from
:mod:`serd.features`, whose fixed code computes the frames, because this is the part that
training fits (and the training feature cache, keyed by the front-end's source, stays
valid when only the normalisation changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.features import FeatureParams, FloatArray

KIND = "window_cmn_global_scale"
"""Every channel loses its mean over the window (the first shipped models' cards)."""
KIND_CHANNELS = "window_cmn_channels_global_scale"
"""Only the ``centred`` channels lose their window mean; the others a fixed offset."""


def channel_names(params: FeatureParams) -> tuple[str, ...]:
    """Names of the values in a frame: ``c0`` … ``c{n_mfcc-1}``, then ``voicing`` and
    ``log_f0`` when the front-end has its pitch channels (see :mod:`serd.features`)."""
    names = tuple(f"c{i}" for i in range(params.n_mfcc))
    return names + (("voicing", "log_f0") if params.pitch else ())


def channel_indices(names: Sequence[str], params: FeatureParams) -> tuple[int, ...]:
    """Indices of named channels; an unknown name is a ``ValueError`` that lists the names."""
    known = channel_names(params)
    bad = [n for n in names if n not in known]
    if bad:
        pitch = ", voicing, log_f0" if params.pitch else ""
        raise ValueError(f"unknown feature channels {bad}: the front-end has "
                         f"c0..c{params.n_mfcc - 1}{pitch}")
    return tuple(sorted({known.index(n) for n in names}))


@dataclass(frozen=True)
class Normalisation:
    """Per-window mean subtraction on some or all channels, then a global per-channel scale.

    Subtracting a window's mean of c0 removes the input gain, and of log-F0 the speaker's
    pitch level: both are constants for a call, unknown on a device, and say little about
    emotion.  ``centred`` names those channels (indices; ``None``: every channel, kind
    :data:`KIND`).  The other channels lose a fixed ``offset`` (their training mean)
    instead, so their level within the window stays: for c1…c39 that is the window's
    average spectral envelope, which carries vocal effort and voice quality (a tense,
    raised voice has a flatter spectrum), and for voicing the share of voiced frames.
    Removing those means too (kind :data:`KIND`) also removes a fixed microphone or line
    colouring, but scored lower on six classes and gained nothing across corpora
    (docs/experiments/LOG.md, fifth round); the training
    augmentation (telephone band, room, noise) teaches the model to live with the
    colouring instead.
    ``scale`` is 1/std of each channel over the training windows after the subtraction.
    """

    scale: tuple[float, ...]
    centred: tuple[int, ...] | None = None
    offset: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.scale)
        if self.centred is not None:
            if any(not 0 <= i < n for i in self.centred):
                raise ValueError(f"normalisation: centred channels {list(self.centred)} "
                                 f"outside 0..{n - 1}")
            if self.offset is None or len(self.offset) != n:
                raise ValueError("normalisation: centred channels need one offset per channel")

    @cached_property
    def _fixed(self) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]] | None:
        """(mask of the channels that lose ``offset``, ``offset``), built once rather than
        for every window the classifier normalises; ``None`` when every channel is centred."""
        if self.centred is None or self.offset is None:
            return None
        mask = np.ones(len(self.scale), dtype=bool)
        mask[list(self.centred)] = False
        return mask, np.asarray(self.offset, dtype=np.float64)

    @property
    def kind(self) -> str:
        return KIND if self.centred is None else KIND_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "scale": [float(s) for s in self.scale]}
        if self.centred is not None and self.offset is not None:
            out["centred"] = list(self.centred)
            out["offset"] = [float(o) for o in self.offset]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        kind = data.get("kind")
        scale = tuple(float(s) for s in data["scale"])
        if kind == KIND:
            return cls(scale=scale)
        if kind == KIND_CHANNELS:
            return cls(scale=scale, centred=tuple(int(i) for i in data["centred"]),
                       offset=tuple(float(o) for o in data["offset"]))
        raise ValueError(f"unknown normalisation kind {kind!r}")


def _subtrahend(w: npt.NDArray[np.floating[Any]],
                norm: Normalisation) -> npt.NDArray[np.floating[Any]]:
    """What is subtracted from each frame: the window's mean, or the fixed offset."""
    mean = w.mean(axis=-2, keepdims=True)
    fixed = norm._fixed
    if fixed is None:
        return mean
    mask, offset = fixed
    return np.where(mask, offset.astype(w.dtype, copy=False), mean)


def normalise_windows(windows: npt.NDArray[np.float32], norm: Normalisation) -> FloatArray:
    """Apply :class:`Normalisation` to (k, frames, d) windows (or one (frames, d) window)."""
    w = np.asarray(windows, dtype=np.float32)
    return (w - _subtrahend(w, norm)) * np.asarray(norm.scale, dtype=np.float32)


def fit_normalisation(windows: npt.NDArray[np.float32],
                      centred: Sequence[int] | None = None) -> Normalisation:
    """Fit on (k, frames, d) training windows: the offsets of the channels that are not
    ``centred`` (all are when ``None``), then the scale after the subtraction."""
    w = np.asarray(windows, dtype=np.float64)
    if centred is None:
        norm = Normalisation(scale=(1.0,) * w.shape[-1])
    else:
        offset = tuple(float(m) for m in w.reshape(-1, w.shape[-1]).mean(axis=0))
        norm = Normalisation(scale=(1.0,) * w.shape[-1], centred=tuple(sorted(set(centred))),
                             offset=offset)
    std = (w - _subtrahend(w, norm)).reshape(-1, w.shape[-1]).std(axis=0)
    return Normalisation(scale=tuple(float(1.0 / max(s, 1e-6)) for s in std),
                         centred=norm.centred, offset=norm.offset)
