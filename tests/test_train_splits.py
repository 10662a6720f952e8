"""Speaker-disjoint splits."""

from __future__ import annotations

from collections import Counter

import pytest

from train.corpora import Item
from train.splits import corpus_folds, cv_folds, final_split, hold_out, speaker_folds
from train.taxonomy import RAVDESS8, SIX, Taxonomy


def _ravdess() -> list[Item]:
    return [Item(f"r/{a:02d}/{e}.wav", "ravdess", f"ravdess:{a:02d}", e, "m" if a % 2 else "f")
            for a in range(1, 25) for e in RAVDESS8]


def _combined() -> list[Item]:
    crema = [Item(f"c/{a}_{e}.wav", "cremad", f"cremad:{a}", e, "")
             for a in range(1001, 1092, 2) for e in SIX]
    return _ravdess() + crema


@pytest.mark.parametrize("items_fn", [_ravdess, _combined])
@pytest.mark.parametrize("k", [5, 6])
def test_cv_folds_are_speaker_disjoint(items_fn, k: int) -> None:
    items = items_fn()
    folds = cv_folds(items, k, early_stop_fraction=0.1, seed=3)
    all_speakers = {it.speaker for it in items}
    tested = [s for f in folds for s in f.test]
    assert sorted(tested) == sorted(all_speakers)  # every speaker tested exactly once
    for f in folds:
        train, es, test = set(f.train), set(f.early_stop), set(f.test)
        assert not train & test
        assert not es & test
        assert not train & es
        assert train | es | test == all_speakers
        assert es  # there is an early-stopping set
        # every file lands in exactly one role
        roles = Counter(("train" if it.speaker in train else "es" if it.speaker in es else "test")
                        for it in items)
        assert sum(roles.values()) == len(items)


def test_ravdess_six_folds_of_four_actors_balanced_by_gender() -> None:
    folds = speaker_folds(_ravdess(), 6, seed=0)
    for fold in folds:
        assert len(fold) == 4
        genders = Counter("m" if int(s.split(":")[1]) % 2 else "f" for s in fold)
        assert genders == {"m": 2, "f": 2}


def test_combined_folds_spread_each_corpus() -> None:
    folds = speaker_folds(_combined(), 6, seed=0)
    for fold in folds:
        per = Counter(s.split(":")[0] for s in fold)
        assert per["ravdess"] == 4
        assert 7 <= per["cremad"] <= 8


def test_splits_are_reproducible_and_seeded() -> None:
    items = _combined()
    assert speaker_folds(items, 6, seed=1) == speaker_folds(items, 6, seed=1)
    assert speaker_folds(items, 6, seed=1) != speaker_folds(items, 6, seed=2)


def test_hold_out_and_final_split() -> None:
    items = _ravdess()
    speakers = sorted({it.speaker for it in items})
    train, es = hold_out(items, speakers, 0.1, seed=0)
    assert not set(train) & set(es)
    assert set(train) | set(es) == set(speakers)
    assert Counter(int(s[-2:]) % 2 for s in es) == {0: 1, 1: 1}  # one per gender
    f = final_split(items, 0.1, seed=0)
    assert not f.test
    assert set(f.train) | set(f.early_stop) == set(speakers)


def test_leave_one_corpus_out_never_trains_on_the_tested_corpus() -> None:
    items = _combined()
    folds = corpus_folds(items, early_stop_fraction=0.1, seed=3)
    assert [f.index for f in folds] == [0, 1]
    for fold, tested in zip(folds, ("cremad", "ravdess"), strict=True):  # sorted by name
        assert {s.split(":")[0] for s in fold.test} == {tested}
        assert len(fold.test) == len({it.speaker for it in items if it.corpus == tested})
        assert {s.split(":")[0] for s in fold.train + fold.early_stop} == (
            {"cremad", "ravdess"} - {tested})
        assert fold.early_stop
    with pytest.raises(ValueError, match="at least 2 corpora"):
        corpus_folds(_ravdess(), 0.1)


def test_too_many_folds_is_an_error() -> None:
    items = _ravdess()[:16]  # two actors
    with pytest.raises(ValueError, match="not enough speakers"):
        speaker_folds(items, 3)


def test_taxonomy_maps_for_training_only() -> None:
    tax = Taxonomy("six", SIX, {"calm": "neutral"})
    calm = Item("x", "ravdess", "ravdess:01", "calm", "m")
    surprised = Item("y", "ravdess", "ravdess:01", "surprised", "m")
    assert tax.train_label(calm) == SIX.index("neutral")
    assert tax.eval_label(calm) is None
    assert tax.train_label(surprised) is None
    assert tax.eval_label(surprised) is None
    with pytest.raises(ValueError, match="not labels"):
        Taxonomy("bad", SIX, {"calm": "boredom"})
