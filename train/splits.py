"""Speaker-disjoint splits: k folds by speaker, and a held-out early-stopping set.

Speakers are grouped into strata by (corpus, gender); each stratum is shuffled with the
seed and dealt round-robin into the folds, the dealing position carrying on from one
stratum to the next, so every fold gets a near-equal share of every corpus and gender
(RAVDESS in 6 folds: 2 male and 2 female actors per fold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from train.corpora import CorpusError, Item


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[str, ...]
    """Speakers whose files are trained on."""
    early_stop: tuple[str, ...]
    """Training-side speakers held out for early stopping (never in ``test``)."""
    test: tuple[str, ...]

    def check(self) -> None:
        tr, es, te = set(self.train), set(self.early_stop), set(self.test)
        if tr & te or es & te or tr & es:
            raise AssertionError(f"fold {self.index}: speaker sets overlap")


def _strata(items: Sequence[Item]) -> dict[tuple[str, str], list[str]]:
    strata: dict[tuple[str, str], set[str]] = {}
    for it in items:
        strata.setdefault((it.corpus, it.gender), set()).add(it.speaker)
    return {k: sorted(v) for k, v in sorted(strata.items())}


def speaker_folds(items: Sequence[Item], k: int, seed: int = 0) -> list[list[str]]:
    """Partition the speakers of ``items`` into ``k`` folds, balanced per (corpus, gender)."""
    if k < 2:
        raise ValueError("need at least 2 folds")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    pos = 0
    for speakers in _strata(items).values():
        order = list(rng.permutation(len(speakers)))
        for i in order:
            folds[pos % k].append(speakers[i])
            pos += 1
    if any(not f for f in folds):
        raise ValueError(f"not enough speakers for {k} folds")
    return [sorted(f) for f in folds]


def hold_out(
    items: Sequence[Item], speakers: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split ``speakers`` into (train, early_stop), ~``fraction`` of each stratum held out."""
    chosen = set(speakers)
    sub = [it for it in items if it.speaker in chosen]
    rng = np.random.default_rng(seed + 7919)
    held: list[str] = []
    for spk in _strata(sub).values():
        n = max(1, round(fraction * len(spk))) if len(spk) > 1 else 0
        held.extend(spk[i] for i in rng.permutation(len(spk))[:n])
    train = sorted(chosen - set(held))
    return train, sorted(held)


def cv_folds(
    items: Sequence[Item], k: int, early_stop_fraction: float, seed: int = 0
) -> list[Fold]:
    """k folds: each fold's speakers are the test set, the rest split into train/early-stop."""
    parts = speaker_folds(items, k, seed)
    out = []
    for i, test in enumerate(parts):
        rest = [s for j, p in enumerate(parts) if j != i for s in p]
        train, es = hold_out(items, rest, early_stop_fraction, seed + i)
        fold = Fold(i, tuple(train), tuple(es), tuple(test))
        fold.check()
        out.append(fold)
    return out


def corpus_folds(items: Sequence[Item], early_stop_fraction: float, seed: int = 0) -> list[Fold]:
    """Leave one corpus out: fold i tests every speaker of the i-th corpus (sorted by name)
    and trains, and early-stops, on the speakers of the other corpora only."""
    corpora = sorted({it.corpus for it in items})
    if len(corpora) < 2:
        raise CorpusError(f"leave-one-corpus-out needs at least 2 corpora, got {corpora}")
    out = []
    for i, corpus in enumerate(corpora):
        test = sorted({it.speaker for it in items if it.corpus == corpus})
        rest = sorted({it.speaker for it in items if it.corpus != corpus})
        train, es = hold_out(items, rest, early_stop_fraction, seed + i)
        fold = Fold(i, tuple(train), tuple(es), tuple(test))
        fold.check()
        out.append(fold)
    return out


def final_split(items: Sequence[Item], early_stop_fraction: float, seed: int = 0) -> Fold:
    """All speakers: train + early-stop, no test (the shipped model)."""
    speakers = sorted({it.speaker for it in items})
    train, es = hold_out(items, speakers, early_stop_fraction, seed)
    fold = Fold(-1, tuple(train), tuple(es), ())
    fold.check()
    return fold
