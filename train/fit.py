"""Fitting: the CNN on a fold's training speakers, the voice head, and the exported model.

:func:`train_cnn` trains the (float) CNN with early stopping on held-out training
speakers, :func:`fit_voice` the voice branch's logistic regression on the same speakers,
and :func:`export` quantises the CNN to int8 and writes it with its card (and the head).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.model import ModelCard, fingerprint_signal, frontend_fingerprint, voice_head_path
from serd.normalise import Normalisation, fit_normalisation, normalise_windows
from serd.voice import (
    VOICE_VERSION,
    VoiceCard,
    VoiceHead,
    VoiceParams,
    voice_fingerprint,
)
from train.config import TrainingConfig
from train.corpora import Item
from train.splits import Fold
from train.taxonomy import Taxonomy
from train.voice import fit_head, save_head, training_trunk
from train.windowsets import WindowSets, capped, labelled, select


@dataclass
class Trained:
    """A trained (float) CNN and what its training saw."""

    model: Any
    """The Keras model."""
    norm: Normalisation
    history: list[dict[str, Any]]
    train_seconds: float
    representative: npt.NDArray[np.float32]
    """Normalised training windows for the int8 calibration."""
    n_train_files: int
    n_train_windows: int
    n_train_windows_all_copies: int
    n_early_stop_files: int


def set_tf_threads(jobs: int) -> None:
    import tensorflow as tf  # noqa: PLC0415

    try:
        tf.config.threading.set_intra_op_parallelism_threads(jobs)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised (tests running several trainings)


def train_cnn(sets: WindowSets, items: list[Item], tax: Taxonomy, fold: Fold, desc: str,
              tcfg: TrainingConfig | None = None) -> Trained:
    """Train on ``fold.train`` speakers, early-stop on ``fold.early_stop``."""
    tcfg = tcfg or sets.cfg.training
    from train.model import EvalSet, TrainPool, train_model  # noqa: PLC0415

    tr_idx, tr_lab = capped(items, *labelled(items, fold.train, tax.train_label),
                            tcfg.max_files_per_corpus, sets.seed)
    es_idx, es_lab = labelled(items, fold.early_stop, tax.eval_label)

    parts = [select(sets.window_set(items, v), tr_idx, tr_lab)
             for v in sets.train_variants()]
    clean = parts[0]
    rng = np.random.default_rng(sets.seed)
    sub = rng.choice(len(clean.x), size=min(len(clean.x), 4000), replace=False)
    norm = fit_normalisation(np.asarray(clean.x[np.sort(sub)], np.float32), sets.centred)
    corpora = sorted({items[i].corpus for i in tr_idx})
    file_group = np.array([corpora.index(items[i].corpus) for i in tr_idx], np.int64)
    xs, ys, fs, cs = [], [], [], []
    for c, p in enumerate(parts):
        xs.append(_normalise_f16(p.x, norm))
        ys.append(p.y_file[p.file])
        fs.append(p.file)
        cs.append(np.full(len(p.file), c, np.int64))
    files = np.concatenate(fs)
    pool = TrainPool(np.concatenate(xs), np.concatenate(ys), files,
                     np.concatenate(cs), len(parts), group=file_group[files])
    del xs
    ev = select(sets.window_set(items, sets.eval_variants()[0]), es_idx, es_lab)
    val = EvalSet(normalise_windows(np.asarray(ev.x, np.float32), norm), ev.file, ev.y_file)
    t0 = time.time()
    model, history = train_model(pool, val, len(tax.labels), sets.cfg.model, tcfg,
                                 seed=sets.seed + max(fold.index, 0),
                                 progress=sets.progress, desc=desc)
    # Representative windows for int8 calibration: normalised training windows.
    n_rep = min(len(pool.x), tcfg.representative_windows)
    rsel = rng.choice(len(pool.x), size=n_rep, replace=False)
    return Trained(
        model=model, norm=norm, history=history, train_seconds=time.time() - t0,
        representative=np.asarray(pool.x[np.sort(rsel)], np.float32),
        n_train_files=len(tr_idx), n_train_windows=int(np.sum(pool.copy == 0)),
        n_train_windows_all_copies=len(pool.y), n_early_stop_files=len(es_idx))


def fit_voice(sets: WindowSets, items: list[Item], tax: Taxonomy, speakers: Iterable[str],
              max_files_per_corpus: int = 0) -> VoiceHead | None:
    """The voice head, fitted on the windows of ``speakers`` (None: branch disabled), at
    most ``max_files_per_corpus`` files of each corpus (0: all)."""
    if not sets.cfg.voice.enabled:
        return None
    idx, lab = capped(items, *labelled(items, speakers, tax.train_label),
                      max_files_per_corpus, sets.seed)
    xs, ys, doms = [], [], []
    corpus = np.array([items[i].corpus for i in idx])
    for v in sets.voice_train_variants():
        sel = select(sets.voice_set(items, v), idx, lab)
        xs.append(np.asarray(sel.x, np.float32))
        ys.append(sel.y_file[sel.file])
        # A domain: one corpus in one rendering (voices, studio, channel), as a line is.
        doms.append(np.char.add(corpus[sel.file], "/" + v.name))
    vcfg = sets.cfg.voice
    return fit_head(np.concatenate(xs), np.concatenate(ys), len(tax.labels), vcfg.c,
                    domain=np.concatenate(doms), reference=vcfg.reference(),
                    neutral=neutral_index(tax))


def neutral_index(tax: Taxonomy) -> int | None:
    """The index of the neutral label, if the taxonomy has one."""
    return tax.labels.index("neutral") if "neutral" in tax.labels else None


def export(sets: WindowSets, trained: Trained, tax: Taxonomy, path: Path, name: str, *,
           description: str = "", training: dict | None = None,
           metrics: dict | None = None, head: VoiceHead | None = None) -> ModelCard:
    """Write ``path`` (int8 tflite), with ``head`` its voice head
    (``<stem>.voice.npz``), and its card; returns the card."""
    from train.quantize import to_int8  # noqa: PLC0415

    blob = to_int8(trained.model, len(tax.labels), sets.cfg.model,
                   trained.representative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    from serd.model import card_path_for, sha256_of  # noqa: PLC0415

    voice = None
    if head is not None:
        head_path = voice_head_path(path)
        save_head(head, head_path)
        trunk = training_trunk()  # the statistics the head was fitted on
        voice = VoiceCard(
            version=VOICE_VERSION, params=VoiceParams(),
            trunk="GE2E speaker encoder of Resemblyzer 0.1.4 (Apache-2.0), LSTM "
                  "layers 1-2; statistics of layer 2 (serd/voice.py)",
            trunk_sha256=trunk.sha256,
            lstm_file=trunk.lite.path.name if trunk.lite else "",
            lstm_sha256=trunk.lite.sha256 if trunk.lite else "",
            fingerprint=tuple(voice_fingerprint(
                trunk, fingerprint_signal(sets.features.sample_rate))),
            head_file=head_path.name, head_sha256=sha256_of(head_path),
            cnn_weight=sets.cfg.voice.cnn_weight, c=sets.cfg.voice.c,
            fitted_on_telephone=sets.cfg.voice.telephone,
            reference=sets.cfg.voice.reference() if head.reference is not None else None)
    card = ModelCard(
        name=name, labels=tax.labels, features=sets.features, windows=sets.windows,
        normalisation=trained.norm, sha256=sha256_of(path),
        fingerprint=tuple(frontend_fingerprint(sets.features)),
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        description=description, training=training or {}, metrics=metrics or {},
        voice=voice,
    )
    card.save(card_path_for(path))
    return card


def _normalise_f16(x: npt.NDArray[np.floating], norm: Normalisation,
                   chunk: int = 2048) -> npt.NDArray[np.float16]:
    out = np.empty(x.shape, np.float16)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = normalise_windows(np.asarray(x[i : i + chunk], np.float32), norm)
    return out
