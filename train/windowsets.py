"""Window sets: the corpus items and their cached windows (and voice statistics) per variant.

:class:`WindowSets` is the data every training job reads: the corpus scan, the renderings
(training copies, clean and telephone evaluation), the window sets built from the feature
cache (:mod:`train.dataset`, :mod:`train.voice`) and kept in memory per corpus, and the
cache's housekeeping (which files a configuration uses, pruning the others).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.features import FeatureParams
from serd.gate import VadSettings
from serd.voice import VoiceParams
from train.config import TrainConfig, resolve
from train.corpora import CorpusError, Item, load_corpora
from train.dataset import (
    DEFAULT_CACHE,
    Variant,
    WindowSet,
    build,
    cache_path,
    ensure_cached,
)
from train.taxonomy import Taxonomy
from train.voice import build_voice, voice_path


@dataclass
class Selection:
    """Windows of a subset of files, re-indexed 0..n_files-1."""

    x: npt.NDArray[np.floating]
    file: npt.NDArray[np.int64]
    y_file: npt.NDArray[np.int64]
    n_files: int


class WindowSets:
    """Holds the configuration, the corpus items and the in-memory window sets."""

    def __init__(self, cfg: TrainConfig, progress: bool = True, *,
                 scan: tuple[list[Item], list[tuple[str, str]]] | None = None) -> None:
        """``scan``: the corpus items and dropped duplicates of an earlier scan of the same
        roots (a CV fold worker gets its parent's), instead of scanning them again."""
        self.cfg = cfg
        self.progress = progress
        self.seed = cfg.seed
        self.jobs = cfg.jobs
        self.roots = [resolve(r) for r in cfg.corpora_roots]
        self.cache = resolve(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE
        self.features = FeatureParams()
        self.windows = cfg.windows.windows()  # what the daemon uses: evaluation and the card
        self.train_windows = cfg.windows.train_windows()
        self.train_vad = cfg.windows.train_vad_settings()
        self.eval_vad = VadSettings()
        self.aug = cfg.augment.params
        self.copies = cfg.augment.copies
        self.centred = cfg.normalisation.centred_channels(self.features)
        self._items: list[Item] | None = scan[0] if scan else None
        self.dropped: list[tuple[str, str]] = scan[1] if scan else []
        self._sets: dict[tuple[str, str], WindowSet] = {}
        self._voice: dict[tuple[str, str], tuple[npt.NDArray[np.float32],
                                                 npt.NDArray[np.int32]]] = {}

    def taxonomy(self, name: str) -> Taxonomy:
        return self.cfg.taxonomies[name].taxonomy(name)

    # -- data ------------------------------------------------------------------------

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            self.cache.mkdir(parents=True, exist_ok=True)
            self._items, self.dropped = load_corpora(self.roots, None, self.cache)
            if not self._items:
                raise CorpusError(f"no corpus files found under {self.roots}")
        return self._items

    def corpus_items(self, corpora: Sequence[str] | None) -> list[Item]:
        if corpora is None:
            return list(self.items)
        out = [it for it in self.items if it.corpus in corpora]
        missing = set(corpora) - {it.corpus for it in out}
        if missing:
            raise CorpusError(f"corpora {sorted(missing)} not found under {self.roots}")
        return out

    def train_variants(self) -> list[Variant]:
        clean = Variant("clean", 0, self.train_windows, "float16")
        return [clean] + [Variant("augment", k, self.train_windows, "float16")
                          for k in range(1, self.copies + 1)]

    def eval_variants(self) -> list[Variant]:
        return [Variant("clean", 0, self.windows), Variant("telephone", 0, self.windows)]

    def window_set(self, items: list[Item], variant: Variant) -> WindowSet:
        """Windows of ``items`` (any corpora) for a variant; cached per corpus."""

        def corpus_set(corpus: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
            key = (variant.name + ("-train" if variant.dtype == "float16" else ""), corpus)
            if key not in self._sets:
                self._sets[key] = build(self._corpus_items(corpus), variant, aug=self.aug,
                                        seed=self.seed, cache_dir=self.cache, jobs=self.jobs,
                                        features=self.features, vad=self.vad(variant),
                                        progress=self.progress)
            return self._sets[key].x, self._sets[key].file

        win, _ = self.windows.frames(self.features)
        return self._gather(items, corpus_set,
                            np.zeros((0, win, self.features.n_features), np.float32))

    def voice_set(self, items: list[Item], variant: Variant) -> WindowSet:
        """The voice branch's statistics of the windows of ``window_set(items, variant)``,
        row for row (an evaluation variant: clean or telephone)."""

        def corpus_set(corpus: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
            key = (variant.name, corpus)
            if key not in self._voice:
                self._voice[key] = build_voice(
                    self._corpus_items(corpus), variant, aug=self.aug, seed=self.seed,
                    cache_dir=self.cache, jobs=self.jobs, features=self.features,
                    vad=self.vad(variant), progress=self.progress)
            return self._voice[key]

        return self._gather(items, corpus_set,
                            np.zeros((0, VoiceParams().n_outputs), np.float32))

    def _gather(self, items: list[Item],
                corpus_set: Callable[[str], tuple[npt.NDArray[Any], npt.NDArray[np.int32]]],
                empty: npt.NDArray[Any]) -> WindowSet:
        """The rows of ``items``' files from per-corpus sets (rows of a corpus's items, as
        :meth:`_corpus_items` lists them), re-indexed to ``items``."""
        xs, files = [], []
        pos = {it.path: i for i, it in enumerate(items)}
        for corpus in sorted({it.corpus for it in items}):
            x, file = corpus_set(corpus)
            remap = np.array([pos.get(it.path, -1) for it in self._corpus_items(corpus)],
                             np.int64)
            new = remap[file]
            keep = new >= 0
            xs.append(x[keep])
            files.append(new[keep])
        x = np.concatenate(xs) if xs else empty
        f = np.concatenate(files) if files else np.zeros(0, np.int64)
        return WindowSet(x, f.astype(np.int32), items)

    def voice_variants(self) -> list[Variant]:
        """The renderings the voice head is evaluated with (and fitted on)."""
        return self.eval_variants() if self.cfg.voice.telephone else self.eval_variants()[:1]

    def voice_train_variants(self) -> list[Variant]:
        """The renderings the voice head is fitted on: :meth:`voice_variants` and
        ``voice.augment_copies`` augmented copies, windowed as the daemon windows."""
        return self.voice_variants() + [Variant("augment", k, self.windows)
                                        for k in range(1, self.cfg.voice.augment_copies + 1)]

    def _corpus_items(self, corpus: str) -> list[Item]:
        return [it for it in self.items if it.corpus == corpus]

    def vad(self, variant: Variant) -> VadSettings:
        return self.train_vad if variant.dtype == "float16" else self.eval_vad

    def prepare(self, corpora: Sequence[str] | None, *, load: bool = True) -> float:
        """Extract (and with ``load``, load) every variant's windows for these corpora;
        returns seconds.  Without ``load`` only missing cache files are written: for CV
        folds in worker processes, which load what they need themselves."""
        t0 = time.time()
        if load:
            items = self.corpus_items(corpora)
            for v in self.train_variants() + self.eval_variants():
                self.window_set(items, v)
            if self.cfg.voice.enabled:
                for v in self.voice_train_variants():
                    self.voice_set(items, v)
        else:
            for part, v in self._cache_units(corpora):
                ensure_cached(part, v, aug=self.aug, seed=self.seed, cache_dir=self.cache,
                              jobs=self.jobs, features=self.features, vad=self.vad(v),
                              progress=self.progress)
            for part, v in self._voice_units(corpora):
                build_voice(part, v, aug=self.aug, seed=self.seed, cache_dir=self.cache,
                            jobs=self.jobs, features=self.features, vad=self.vad(v),
                            progress=self.progress)
            self._voice.clear()  # the workers load what they need themselves
        return time.time() - t0

    def _voice_units(self, corpora: Sequence[str] | None) -> list[tuple[list[Item], Variant]]:
        if not self.cfg.voice.enabled:
            return []
        items = self.corpus_items(corpora)
        return [(self._corpus_items(corpus), v) for v in self.voice_train_variants()
                for corpus in sorted({it.corpus for it in items})]

    def _cache_units(self, corpora: Sequence[str] | None) -> list[tuple[list[Item], Variant]]:
        """(one corpus's items, variant): the unit of one cache file."""
        items = self.corpus_items(corpora)
        return [(self._corpus_items(corpus), v)
                for v in self.train_variants() + self.eval_variants()
                for corpus in sorted({it.corpus for it in items})]

    def cache_paths(self, corpora: Sequence[str] | None) -> set[Path]:
        """The cache files that :meth:`prepare` reads or writes for these corpora, with this
        configuration (one per variant and corpus)."""
        return {cache_path(part, v, self.cache, aug=self.aug, seed=self.seed,
                           features=self.features, vad=self.vad(v))
                for part, v in self._cache_units(corpora)} | {
            voice_path(part, v, self.cache, aug=self.aug, seed=self.seed,
                       features=self.features, vad=self.vad(v))
            for part, v in self._voice_units(corpora)}

    def drop_loaded(self) -> None:
        """Forget the window sets held in memory (worker processes load their own)."""
        self._sets.clear()

    def prune_cache(self, keep: set[Path]) -> tuple[int, int]:
        """Delete the cache's window files and fold records other than ``keep``: those of
        older corpus files, front-ends, settings or code.  Returns (files, bytes) deleted."""
        n = size = 0
        stale = [*self.cache.glob("windows-*.npz"), *self.cache.glob("voice-*.npz"),
                 *self.cache.glob("folds/*.json"), *self.cache.glob("folds/*.probs.npz")]
        for f in sorted(stale):
            if f not in keep:
                size += f.stat().st_size
                f.unlink()
                n += 1
        return n, size


def labelled(items: Sequence[Item], speakers: Iterable[str],
             label: Callable[[Item], int | None]) -> tuple[list[int], list[int]]:
    """The indices of the items of ``speakers`` that ``label`` gives a class (the others
    are not used), and those classes."""
    wanted = set(speakers)
    idx: list[int] = []
    labels: list[int] = []
    for i, it in enumerate(items):
        y = label(it) if it.speaker in wanted else None
        if y is not None:
            idx.append(i)
            labels.append(y)
    return idx, labels


def capped(items: Sequence[Item], idx: list[int], labels: list[int], cap: int, seed: int
           ) -> tuple[list[int], list[int]]:
    """At most ``cap`` of the files ``idx`` per corpus (a seeded random subset, in the
    original order); ``cap`` 0: all of them."""
    if cap <= 0:
        return idx, labels
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for corpus in sorted({items[i].corpus for i in idx}):
        mine = [j for j, i in enumerate(idx) if items[i].corpus == corpus]
        pick = mine if len(mine) <= cap else rng.choice(mine, size=cap, replace=False)
        keep.update(int(j) for j in pick)
    order = sorted(keep)
    return [idx[j] for j in order], [labels[j] for j in order]


def select(ws: WindowSet, idx: list[int], labels: list[int]) -> Selection:
    """The windows of the items ``idx`` of ``ws`` with these ``labels``."""
    remap = np.full(len(ws.items), -1, np.int64)
    remap[np.asarray(idx, np.int64)] = np.arange(len(idx))
    new = remap[ws.file]
    keep = new >= 0
    return Selection(ws.x[keep], new[keep], np.asarray(labels, np.int64), len(idx))
