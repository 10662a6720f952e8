"""Cross-validation and final training: corpora -> cached windows -> CNN -> int8 -> metrics.

:class:`Runner` is what ``serd-train`` drives; each job lives in its own module:

* :mod:`train.windowsets` -- corpus items and their cached window sets per rendering;
* :mod:`train.fit` -- training the CNN, fitting the voice head, exporting model + card;
* :mod:`train.evaluation` -- a fold's model scored on its test speakers;
* :mod:`train.cv` -- CV protocols: folds, scheduling (worker processes), fold records;
* :mod:`train.final` -- the shipped model, and ``serd-train all``;
* :mod:`train.results` -- the typed results that become ``cv-<protocol>.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from serd.features import WindowParams
from serd.model import ModelCard
from train.config import TrainConfig
from train.corpora import Item
from train.cv import CrossValidation, CvPlan
from train.final import run_all, run_final
from train.fit import set_tf_threads
from train.results import CvResult, FoldResult
from train.windowsets import WindowSets

__all__ = ["CvPlan", "Runner"]


class Runner:
    """The configuration's window sets and its CV protocols, run by ``serd-train``."""

    def __init__(self, cfg: TrainConfig, progress: bool = True, *,
                 scan: tuple[list[Item], list[tuple[str, str]]] | None = None,
                 resume: bool = True) -> None:
        """``scan``: the corpus items and dropped duplicates of an earlier scan of the same
        roots, instead of scanning them again.  ``resume``: reuse CV folds already trained
        with the same settings, data and code (:meth:`CrossValidation.fold_key`); False
        retrains them (their records are still written)."""
        self.cfg = cfg
        set_tf_threads(cfg.jobs)
        self.sets = WindowSets(cfg, progress, scan=scan)
        self.cv = CrossValidation(self.sets, resume)

    @property
    def items(self) -> list[Item]:
        return self.sets.items

    @property
    def cache(self) -> Path:
        return self.sets.cache

    @property
    def windows(self) -> WindowParams:
        """The daemon's windows: those evaluated and written on the card."""
        return self.sets.windows

    def prepare(self, corpora: Sequence[str] | None, *,
                load: bool = True) -> float:
        return self.sets.prepare(corpora, load=load)

    def cache_paths(self, corpora: Sequence[str] | None) -> set[Path]:
        return self.sets.cache_paths(corpora)

    def prune_cache(self, keep: set[Path]) -> tuple[int, int]:
        return self.sets.prune_cache(keep)

    def cv_plan(self, protocol: str) -> CvPlan:
        return self.cv.plan(protocol)

    def fold_record(self, protocol: str, index: int) -> Path:
        return self.cv.fold_record(protocol, index)

    def fold_records(self) -> set[Path]:
        return self.cv.fold_records()

    def run_fold(self, protocol: str, index: int) -> FoldResult:
        return self.cv.run_fold(protocol, index)

    def run_cv(self, protocol: str, only_folds: list[int] | None = None,
               out_dir: Path | None = None) -> CvResult:
        return self.cv.run(protocol, only_folds, out_dir)

    def run_final(self, out_dir: Path, cv: dict[str, CvResult], command: str) -> ModelCard:
        return run_final(self.sets, out_dir, cv, command)

    def run_all(self, out_dir: Path, command: str) -> tuple[dict[str, CvResult], ModelCard]:
        return run_all(self.cv, out_dir, command)
