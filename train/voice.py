"""The voice branch's training side: window statistics of the trunk, cached; the head.

Every statistic comes from :class:`serd.voice.VoiceStream` over exactly the windows that
:func:`serd.windows.windows_of` gives (``keep_audio=True``), the windows whose MFCCs the
CNN sees, in the same order: row ``i`` of a voice set belongs to row ``i`` of the window
set of the same items and variant.  Each (variant, corpus) is one
``voice-*.npz`` in the cache directory, keyed by the window set's key, the trunk's (and
its LiteRT LSTM's) digest and the source of :mod:`serd.voice`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serd.features import FeatureParams
from serd.gate import VadSettings
from serd.voice import DEFAULT_LSTM, VOICE_VERSION, VoiceHead, VoiceStream, VoiceTrunk
from serd.windows import windows_of
from train.augment import AugmentParams
from train.corpora import Item
from train.dataset import Variant, cache_key, extract_all, render, save_atomic, stack_rows
from train.sources import source_hash

_TRUNK: VoiceTrunk | None = None


def training_trunk() -> VoiceTrunk:
    """The trunk as the cards ``serd-train`` writes run it: with serd's LiteRT LSTM when
    there is one (``serd-train voice-lstm``), so that the head is fitted on the statistics
    the device computes; else the numpy LSTM."""
    global _TRUNK  # noqa: PLW0603 (one trunk per extraction process)
    if _TRUNK is None:
        _TRUNK = VoiceTrunk(lstm=DEFAULT_LSTM if DEFAULT_LSTM.is_file() else None)
    return _TRUNK


def extract_voice(path: str, variant: Variant, *, aug: AugmentParams, seed: int,
                  features: FeatureParams, vad: VadSettings) -> npt.NDArray[np.float32]:
    """(k, 512) trunk statistics of one file's windows (k may be 0), by the daemon's own
    stream (:class:`serd.voice.VoiceStream`), one per file as the daemon has one per
    channel."""
    trunk = training_trunk()
    audio = render(path, variant, aug, seed)
    ws = windows_of(audio, features, variant.windows, vad, keep_audio=True)
    stream = VoiceStream(trunk)
    out = np.zeros((len(ws), trunk.params.n_outputs), np.float32)
    for i, w in enumerate(ws):
        out[i] = stream(w)
    return out


def _job(args: tuple) -> npt.NDArray[np.float32]:
    path, variant, aug, seed, features, vad = args
    return extract_voice(path, variant, aug=aug, seed=seed, features=features, vad=vad)


def voice_path(items: Sequence[Item], variant: Variant, cache_dir: Path, *, aug: AugmentParams,
               seed: int, features: FeatureParams, vad: VadSettings) -> Path:
    h = hashlib.sha256()
    h.update(cache_key(items, variant, aug=aug, seed=seed, features=features, vad=vad).encode())
    trunk = training_trunk()
    h.update(f"voice {VOICE_VERSION} {trunk.sha256}".encode())
    if trunk.lite is not None:
        h.update(f" lstm {trunk.lite.sha256}".encode())
    h.update(source_hash(["serd.voice"]).encode())
    return cache_dir / f"voice-{variant.name}-{h.hexdigest()[:20]}.npz"


def build_voice(items: Sequence[Item], variant: Variant, *, aug: AugmentParams, seed: int,
                cache_dir: Path, jobs: int, features: FeatureParams, vad: VadSettings,
                progress: bool = True) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """(x, file) of ``items`` for ``variant``, from the cache when present."""
    items = list(items)
    path = voice_path(items, variant, cache_dir, aug=aug, seed=seed, features=features, vad=vad)
    if path.is_file():
        with np.load(path) as z:
            return z["x"], z["file_index"]
    args = [(it.path, variant, aug, seed, features, vad) for it in items]
    outs = extract_all(_job, args, f"voice {variant.name} ({len(items)} files)", jobs, progress)
    x, file = stack_rows(outs, np.zeros((0, training_trunk().params.n_outputs),
                                        np.float32))
    save_atomic(path, x, file)
    return x, file


def fit_head(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], n_labels: int,
             c: float) -> VoiceHead:
    """Standardisation + class-balanced multinomial logistic regression (L2, ``C=c``)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    coef = np.zeros((n_labels, x.shape[1]), np.float32)
    intercept = np.full(n_labels, -1e3, np.float32)  # a class never seen: never predicted
    classes = np.unique(y)
    if classes.size == 1:  # (tiny test sets) nothing to regress: always that class
        intercept[classes[0]] = 0.0
    else:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        lr.fit(z, y)
        if classes.size == 2:  # scikit-learn's binary form: p(second) = sigmoid(w.x + b)
            coef[classes[1]], intercept[classes[0]] = lr.coef_[0], 0.0
            intercept[classes[1]] = lr.intercept_[0]
        else:
            coef[lr.classes_] = lr.coef_
            intercept[lr.classes_] = lr.intercept_
    return VoiceHead(mean.astype(np.float32), scale.astype(np.float32), coef, intercept)


def save_head(head: VoiceHead, path: Path) -> None:
    """Write a head as :meth:`serd.voice.VoiceHead.load` reads it."""
    np.savez(path, mean=head.mean, scale=head.scale, coef=head.coef,
             intercept=head.intercept)
