"""Evaluation: a fold's exported model on its test speakers, clean and over the telephone.

The int8 figures are computed by serd's own runtime (:class:`serd.model.Classifier`), and
the fused ones by the card's voice branch as the device fuses it, so the CV measures what
the device runs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.decisions import DecisionSettings
from serd.model import Classifier
from serd.normalise import normalise_windows
from train.corpora import Item
from train.dataset import Variant
from train.evaluate import file_probs, int8_window_probs, scores, verdict_stats
from train.fit import Trained
from train.results import (
    AGREEMENTS,
    CONDITIONS,
    KINDS,
    Agreement,
    ConditionResult,
    Kind,
    LevelScores,
    Scores,
)
from train.voice import warm_reference
from train.windowsets import Selection, WindowSets, select

VERDICT_KINDS: tuple[Kind, ...] = ("int8", "voice", "fused_int8")
"""Kinds whose file verdicts get :class:`train.evaluate.VerdictStats`."""


@dataclass
class Evaluation:
    """A model's scores on one fold's test files."""

    clean: ConditionResult
    telephone: ConditionResult
    other_emotions_int8: dict[str, list[int]] | None
    """Files of emotions outside the taxonomy: what the device's model calls them."""


def evaluate(sets: WindowSets, trained: Trained, clf: Classifier, *,
             items: list[Item], test_idx: list[int], test_lab: list[int],
             n_labels: int, other_idx: list[int] | None = None,
             calib_idx: list[int] | None = None, calib_lab: list[int] | None = None,
             dump: Path | None = None) -> Evaluation:
    """Scores of the float and int8 CNN alone, and, when the exported model ``clf`` has a
    voice branch, of the branch alone and fused with each CNN (``fused_float``,
    ``fused_int8``: the latter is what the device computes), on the clean and the
    telephone renderings of the test files.  ``clf`` is the fold's model as serd loads
    it (:func:`serd.model.load_classifier`): its int8 CNN and its fusion are the
    device's.  ``dump``: also write every test file's probabilities per kind and
    condition, with its label, corpus and speaker (and the device's probabilities of the
    ``calib_idx`` files, clean: the early-stopping speakers, for calibration studies), to
    this ``.npz``."""
    from train.model import predict  # noqa: PLC0415

    out: dict[str, ConditionResult] = {}
    card = clf.card
    labels = list(card.labels)
    threshold = DecisionSettings().threshold
    saved: dict[str, Any] = {"labels": np.array(labels)}  # the dump's arrays
    for v, tag in zip(sets.eval_variants(), CONDITIONS, strict=True):
        sel = select(sets.window_set(items, v), test_idx, test_lab)
        raw = np.asarray(sel.x, np.float32)
        pf = predict(trained.model, normalise_windows(raw, card.normalisation))
        pq = int8_window_probs(clf, raw)
        kinds: dict[Kind, npt.NDArray[np.float32]] = {"float": pf, "int8": pq}
        if clf.voice is not None:
            vsel = select(sets.voice_set(items, v), test_idx, test_lab)
            if not np.array_equal(vsel.file, sel.file):
                raise RuntimeError(f"voice cache of {v.name} is out of step with its "
                                   "windows: delete the cache's voice-*.npz")
            stats = line_relative(sets, clf, items, test_idx, vsel)
            kinds |= {"voice": clf.voice.head(stats), "fused_float": clf.fused(pf, stats),
                      "fused_int8": clf.fused(pq, stats)}
        y_win = sel.y_file[sel.file]
        res = ConditionResult(files=sel.n_files,
                              files_with_windows=int(np.unique(sel.file).size),
                              windows=len(raw), kinds={})
        fps: dict[Kind, npt.NDArray[np.float32]] = {}
        has = np.zeros(sel.n_files, bool)
        for kind, p in kinds.items():
            fps[kind], has = file_probs(p, sel.file, sel.n_files)
            res.kinds[kind] = LevelScores(
                file=Scores.from_dict(scores(sel.y_file[has], fps[kind][has].argmax(1),
                                             n_labels)),
                window=Scores.from_dict(scores(y_win, p.argmax(1), n_labels)))
        corp = np.array([items[i].corpus for i in test_idx])
        if len(set(corp)) > 1:
            for kind in KINDS:
                if kind in ("int8", "fused_int8") and kind in fps:
                    res.per_corpus[kind] = {
                        c: scores(sel.y_file[has & (corp == c)],
                                  fps[kind][has & (corp == c)].argmax(1),
                                  n_labels)["balanced_accuracy"] for c in sorted(set(corp))}
        for name, (a, b) in AGREEMENTS.items():
            if b in kinds:
                res.agreements[name] = Agreement(
                    window_argmax=float((kinds[a].argmax(1) == kinds[b].argmax(1)).mean())
                    if len(raw) else 1.0,
                    file_argmax=float((fps[a][has].argmax(1) == fps[b][has].argmax(1))
                                      .mean()) if has.any() else 1.0)
        for kind in VERDICT_KINDS:
            if kind in fps:
                res.verdicts[kind] = verdict_stats(fps[kind][has], sel.y_file[has], labels,
                                                   threshold)
        if dump is not None:
            saved |= {f"{tag}_{k}": fp for k, fp in fps.items()}
            saved |= {f"{tag}_has": has, "y": sel.y_file,
                      "corpus": np.array([items[i].corpus for i in test_idx]),
                      "speaker": np.array([items[i].speaker for i in test_idx])}
        out[tag] = res
    dist: dict[str, list[int]] | None = None
    if other_idx:
        # Emotions outside the taxonomy (RAVDESS calm/surprised in the six-class model):
        # what the int8 model (fused with its voice branch, if any) calls them.
        v = sets.eval_variants()[0]
        sel = select(sets.window_set(items, v), other_idx, [0] * len(other_idx))
        fpq, has = _device_file_probs(sets, clf, items, other_idx, sel, v)
        pred = fpq.argmax(1)
        dist = {}
        for j, i in enumerate(other_idx):
            if has[j]:
                dist.setdefault(items[i].label, [0] * n_labels)[int(pred[j])] += 1
    if dump is not None:
        if calib_idx:
            v = sets.eval_variants()[0]
            sel = select(sets.window_set(items, v), calib_idx, calib_lab or [])
            saved["calib_y"], saved["calib_fused_int8"], saved["calib_has"] = (
                sel.y_file, *_device_file_probs(sets, clf, items, calib_idx, sel, v))
        dump.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(dump, **saved)
    return Evaluation(out["clean"], out["telephone"], dist)


def _device_file_probs(sets: WindowSets, clf: Classifier, items: list[Item], idx: list[int],
                       sel: Selection, variant: Variant
                       ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """File probabilities of the device's model (int8 CNN, fused with the voice branch
    where the model has one) and the mask of files with a window."""
    pq = int8_window_probs(clf, np.asarray(sel.x, np.float32))
    if clf.voice is not None:
        vsel = select(sets.voice_set(items, variant), idx, [0] * len(idx))
        pq = clf.fused(pq, line_relative(sets, clf, items, idx, vsel))
    return file_probs(pq, sel.file, sel.n_files)



def line_relative(sets: WindowSets, clf: Classifier, items: list[Item], idx: list[int],
                  vsel: Selection) -> npt.NDArray[np.float32]:
    """The voice statistics ``vsel`` (of the files ``idx``) as the device's head sees
    them: for a head with a line reference, each test corpus is a line that has heard
    ``voice.warm_utterances`` of its own files (:func:`train.voice.warm_reference`), and
    every file of it is scored against that reference; else the statistics as they are."""
    x = np.asarray(vsel.x, np.float32)
    branch = clf.voice
    if branch is None or branch.head.reference is None or branch.reference is None:
        return x
    labels = list(clf.card.labels)
    neutral = labels.index("neutral") if "neutral" in labels else None
    corpus = np.array([items[i].corpus for i in idx])[vsel.file] if len(idx) else \
        np.zeros(0, str)
    out = x.copy()
    for c in np.unique(corpus):
        m = corpus == c
        ref = warm_reference(x[m], vsel.file[m], vsel.y_file, branch.head.reference,
                             branch.reference, neutral, sets.cfg.voice.warm_utterances,
                             seed=sets.seed + zlib.crc32(c.encode()))
        out[m] = x[m] - ref
    return out
