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
from serd.voice import (
    DEFAULT_LSTM,
    VOICE_VERSION,
    LineReference,
    ReferenceParams,
    VoiceHead,
    VoiceStream,
    VoiceTrunk,
)
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


def domain_reference(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
                     neutral: int | None, neutral_share: float) -> npt.NDArray[np.float32]:
    """A training domain's reference: the mean of its windows' statistics, its neutral
    windows weighted to ``neutral_share`` of the total where it has neutral and other
    windows (as a line's mostly neutral stream would weight them)."""
    w = np.ones(len(x), np.float64)
    if neutral is not None:
        is_neu = y == neutral
        if is_neu.any() and (~is_neu).any():
            w[is_neu] = neutral_share / is_neu.sum()
            w[~is_neu] = (1.0 - neutral_share) / (~is_neu).sum()
    return np.asarray((w[:, None] * x).sum(axis=0) / w.sum(), np.float32)


def relative_to_domains(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
                        domain: npt.NDArray[np.str_], neutral: int | None,
                        params: ReferenceParams
                        ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Each row minus its domain's reference, and the prior: the mean of the domains'
    references (what a line that has heard nothing yet subtracts)."""
    out = np.empty_like(x)
    refs = []
    for d in np.unique(domain):
        m = domain == d
        ref = domain_reference(x[m], y[m], neutral, params.neutral_share)
        out[m] = x[m] - ref
        refs.append(ref)
    return out, np.asarray(np.mean(refs, axis=0), np.float32)


def warm_reference(x: npt.NDArray[np.float32], file: npt.NDArray[np.int64],
                   y_file: npt.NDArray[np.int64], prior: npt.NDArray[np.float32],
                   params: ReferenceParams, neutral: int | None, utterances: int,
                   seed: int) -> npt.NDArray[np.float32]:
    """A line's reference after it has heard ``utterances`` of these files (one domain's
    test files, rows ``x`` of file ``file``), drawn at random (seeded) with
    ``params.neutral_share`` of them neutral where there are neutral files, as a call
    centre's stream: what :class:`serd.voice.LineReference` holds then.  Only the stream's
    order uses the labels; the reference itself sees no label."""
    rng = np.random.default_rng(seed)
    files = np.unique(file)
    ref = LineReference(prior, params)
    if files.size == 0 or utterances <= 0:
        return ref.reference
    neu = files[y_file[files] == neutral] if neutral is not None else files[:0]
    other = np.setdiff1d(files, neu)
    if neu.size and other.size:
        draw = np.where(rng.random(utterances) < params.neutral_share,
                        rng.choice(neu, utterances), rng.choice(other, utterances))
    else:
        draw = rng.choice(files, utterances)
    rows: dict[int, npt.NDArray[np.int64]] = {}
    order = np.argsort(file, kind="stable")
    bounds = np.searchsorted(file[order], files)
    ends = np.append(bounds[1:], len(order))
    for f, a, b in zip(files, bounds, ends, strict=True):
        rows[int(f)] = order[a:b]
    for f in draw:
        for r in rows[int(f)]:
            ref.update(x[r])
    return ref.reference


def fit_head(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], n_labels: int,
             c: float, *, domain: npt.NDArray[np.str_] | None = None,
             reference: ReferenceParams | None = None, neutral: int | None = None
             ) -> VoiceHead:
    """Standardisation + class-balanced multinomial logistic regression (L2, ``C=c``).
    With ``reference``, on each row relative to its ``domain``'s reference
    (:func:`relative_to_domains`; ``neutral``: the neutral label's index, if any)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    prior = None
    if reference is not None:
        if domain is None:
            raise ValueError("a head with a reference needs each row's domain")
        x, prior = relative_to_domains(x, y, domain, neutral, reference)
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
    return VoiceHead(mean.astype(np.float32), scale.astype(np.float32), coef, intercept,
                     reference=prior)


def save_head(head: VoiceHead, path: Path) -> None:
    """Write a head as :meth:`serd.voice.VoiceHead.load` reads it."""
    arrays = {"mean": head.mean, "scale": head.scale, "coef": head.coef,
              "intercept": head.intercept}
    if head.reference is not None:
        arrays["reference"] = head.reference
    np.savez(path, **arrays)  # type: ignore[arg-type]
