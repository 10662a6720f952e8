"""Cross-validation: a protocol's folds, scheduled, recorded and summarised.

:class:`CrossValidation` resolves a protocol into folds (:class:`CvPlan`), trains,
exports and evaluates each fold (:meth:`~CrossValidation.run_fold`), in this process or
in worker processes (several folds side by side), keeps each finished fold's record in
the cache's ``folds/`` (so an interrupted or repeated CV resumes: a fold with the same
key is not trained again), and writes the protocol's ``cv-<protocol>.json``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import train
from serd.model import ModelSettings, load_classifier
from train.config import TrainConfig, TrainingConfig
from train.corpora import Item
from train.evaluation import evaluate
from train.fit import export, fit_voice, set_tf_threads, train_cnn
from train.processes import InProcess, answerable, completed, died, spawned_pool, stop_now
from train.results import CvResult, FoldResult, aggregate
from train.sources import source_hash
from train.splits import Fold, corpus_folds, cv_folds
from train.taxonomy import Taxonomy
from train.windowsets import WindowSets, labelled

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CvPlan:
    """A CV protocol resolved against the corpora found."""

    tax: Taxonomy
    items: list[Item]
    """Every item the protocol reads (tested corpora and training-only extras)."""
    main: list[Item]
    """Items of the tested corpora only."""
    folds: list[Fold]
    training: TrainingConfig
    """The ``training`` section with the protocol's overrides."""
    extra: list[str]
    """Training-only corpora (``extra_train_corpora``)."""
    split: str
    """``speakers`` or ``corpus`` (:attr:`ProtocolConfig.split`)."""


class CrossValidation:
    """Runs CV protocols over ``sets``; ``resume``: reuse CV folds already trained with the
    same settings, data and code (see :meth:`fold_key`); False retrains them (their
    records are still written)."""

    def __init__(self, sets: WindowSets, resume: bool = True) -> None:
        self.sets = sets
        self.cfg = sets.cfg
        self.resume = resume
        self._protocol_keys: dict[str, str] = {}  # protocol -> fold-key base (see fold_key)

    def plan(self, protocol: str) -> CvPlan:
        """Everything a CV protocol's folds are run from (see :class:`CvPlan`)."""
        p = self.cfg.protocols[protocol]
        tax = self.sets.taxonomy(p.taxonomy)
        extra = list(p.extra_train_corpora)
        items = self.sets.corpus_items(p.all_corpora)
        tcfg = p.training
        main = [it for it in items if p.corpora is None or it.corpus in p.corpora]
        split = p.split
        frac = float(tcfg.early_stop_fraction)
        if split == "corpus":
            folds = corpus_folds(main, frac, self.sets.seed)
        else:
            assert p.folds is not None  # ProtocolConfig requires folds with split: speakers
            folds = cv_folds(main, p.folds, frac, self.sets.seed)
        if extra:
            # Speakers of the extra corpora are only ever trained on (never tested or used
            # for early stopping): the protocol's test folds stay as they are.
            extra_spk = tuple(sorted({it.speaker for it in items if it.corpus in extra}))
            folds = [Fold(f.index, f.train + extra_spk, f.early_stop, f.test) for f in folds]
        return CvPlan(tax, items, main, folds, tcfg, extra, split)

    def run_fold(self, protocol: str, index: int, probs: Path | None = None) -> FoldResult:
        """Train, export and evaluate one CV fold; its file probabilities go to ``probs``
        (default :meth:`probs_record`; a worker is given its caller's, whose fold key
        has the caller's thread settings)."""
        plan = self.plan(protocol)
        tax, items, folds, tcfg = plan.tax, plan.items, plan.folds, plan.training
        fold = folds[index]
        t0 = time.time()
        trained = train_cnn(self.sets, items, tax, fold,
                            f"{protocol} fold {fold.index + 1}/{len(folds)}", tcfg)
        test_idx, test_lab = labelled(items, fold.test, tax.eval_label)
        te = set(fold.test)
        other_idx = [i for i, it in enumerate(items)
                     if it.speaker in te and tax.eval_label(it) is None]
        calib_idx, calib_lab = labelled(items, fold.early_stop, tax.eval_label)
        head = fit_voice(self.sets, items, tax, fold.train + fold.early_stop,
                         self.sets.cfg.voice.max_files_per_corpus)
        with tempfile.TemporaryDirectory() as td:
            # The fold's model goes through serd's loader, as the device's does: its int8
            # CNN and its fusion with the voice branch are the ones the device runs.
            tfl = Path(td) / "fold.tflite"
            export(self.sets, trained, tax, tfl, f"{protocol}-fold{fold.index}", head=head)
            size = tfl.stat().st_size
            clf = load_classifier(ModelSettings(path=str(tfl)))
            ev = evaluate(self.sets, trained, clf, items=items, test_idx=test_idx,
                          test_lab=test_lab, n_labels=len(tax.labels), other_idx=other_idx,
                          calib_idx=calib_idx, calib_lab=calib_lab,
                          dump=probs or self.probs_record(protocol, index))
        return FoldResult(
            fold=fold.index, test_speakers=list(fold.test),
            early_stop_speakers=list(fold.early_stop),
            n_train_speakers=len(fold.train), n_test_files=len(test_idx),
            n_train_files=trained.n_train_files, n_train_windows=trained.n_train_windows,
            n_train_windows_all_copies=trained.n_train_windows_all_copies,
            history=trained.history, tflite_bytes=size,
            params=int(trained.model.count_params()),
            clean=ev.clean, telephone=ev.telephone,
            other_emotions_int8=ev.other_emotions_int8,
            seconds=round(time.time() - t0, 1))

    # -- fold records: an interrupted or repeated CV resumes ---------------------------

    def fold_key(self, protocol: str, index: int) -> str:
        """Everything a fold's result depends on: every setting (the seed, and ``jobs`` and
        ``parallel_folds``, which set the thread count and with it the order of sums), the
        files' labels and speakers, the cache keys of its data (file contents, front-end,
        renderings), the source of ``serd/`` and ``train/``, and the library versions.
        Runs repeat exactly, so a fold with the same key has the same result."""
        base = self._protocol_keys.get(protocol)
        if base is None:
            corpora = self.cfg.protocols[protocol].all_corpora
            items = [it.to_dict() for it in self.sets.corpus_items(corpora)]
            blob = {
                "format": 1, "protocol": protocol, "config": asdict(self.cfg),
                # Labels, speakers and genders: a manifest can change them without changing
                # a byte of audio.  Then the cache keys: contents, front-end, renderings.
                "items": hashlib.sha256(json.dumps(items).encode()).hexdigest(),
                "data": sorted(path.name for path in self.sets.cache_paths(corpora)),
                "code": code_hash(), "versions": _versions(),
            }
            base = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode())\
                .hexdigest()
            self._protocol_keys[protocol] = base
        return hashlib.sha256(f"{base}:{index}".encode()).hexdigest()

    def fold_record(self, protocol: str, index: int) -> Path:
        """Where a fold's result is kept (in the cache directory, outside the repo)."""
        key = self.fold_key(protocol, index)
        return self.sets.cache / "folds" / f"{protocol}-fold{index}-{key[:24]}.json"

    def probs_record(self, protocol: str, index: int) -> Path:
        """Beside the fold record: the fold's file probabilities (:func:`evaluate`'s dump),
        for studies of calibration and adaptation that need no retraining."""
        return self.fold_record(protocol, index).with_suffix(".probs.npz")

    def fold_records(self) -> set[Path]:
        """The fold records (and their probabilities) that every CV protocol of this
        configuration would reuse."""
        return {path for name in self.cfg.protocols for f in self.plan(name).folds
                for path in (self.fold_record(name, f.index),
                             self.probs_record(name, f.index))}

    def _load_fold(self, protocol: str, index: int) -> FoldResult | None:
        path = self.fold_record(protocol, index)
        try:
            return FoldResult.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            _LOGGER.warning("%s: unreadable fold record, training the fold again (%s)",
                            path, exc)
            return None

    def _fold_done(self, protocol: str, res: FoldResult) -> None:
        """Record a finished fold at once (kept even if a later fold fails), then log it."""
        self._save_fold(protocol, res)
        log_fold(protocol, res)

    def _save_fold(self, protocol: str, res: FoldResult) -> None:
        path = self.fold_record(protocol, res.fold)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(res.to_dict()) + "\n")
            tmp.replace(path)  # atomic: an interrupted run leaves no half record
        except (OSError, TypeError, ValueError) as exc:
            # Only resuming is lost; the CV itself goes on.
            _LOGGER.warning("%s: could not record the fold (%s); a rerun trains it again",
                            path, exc)

    # -- scheduling ---------------------------------------------------------------------

    def run(self, protocol: str, only_folds: list[int] | None = None,
            out_dir: Path | None = None) -> CvResult:
        """One protocol's CV (``serd-train cv``): its folds (``only_folds``, or all) trained
        or reused, summarised, written to ``out_dir`` if given."""
        p = self.cfg.protocols[protocol]
        t_start = time.time()
        todo, reused = self.todo(protocol, only_folds)
        parallel = self.cfg.parallel_folds
        in_workers = parallel > 1 and bool(todo)
        prep = self.sets.prepare(p.all_corpora, load=not in_workers) if todo else 0.0
        if in_workers:
            # Even a single fold goes to a worker, with the same thread count as in a full
            # run: the number of threads changes the order of floating-point sums, so this
            # keeps `cv --folds k` equal to fold k of `serd-train all`.
            results = self.in_processes([(protocol, i) for i in todo], parallel)[0][protocol]
        else:
            results = []
            for i in todo:
                results.append(self.run_fold(protocol, i))
                self._fold_done(protocol, results[-1])
        return self.summary(protocol, results, reused, prep, time.time() - t_start, out_dir)

    def todo(self, protocol: str, only_folds: list[int] | None
             ) -> tuple[list[int], list[FoldResult]]:
        """(folds still to train, results of folds reused from their records)."""
        folds = self.plan(protocol).folds
        todo = [f.index for f in folds if only_folds is None or f.index in only_folds]
        reused: list[FoldResult] = []
        if self.resume:
            reused = [r for i in todo if (r := self._load_fold(protocol, i)) is not None]
        if reused:
            _LOGGER.info("%s: folds %s already trained with these settings, data and code: "
                         "results reused from %s (--fresh trains them again)", protocol,
                         ",".join(str(r.fold) for r in reused), self.sets.cache / "folds")
        done = {r.fold for r in reused}
        return [i for i in todo if i not in done], reused

    def summary(self, protocol: str, run: list[FoldResult], reused: list[FoldResult],
                prep: float, seconds: float, out_dir: Path | None) -> CvResult:
        """The CV's result (``cv-<protocol>.json`` in ``out_dir``) from the folds trained now
        and those reused: folds, mean ± std, pooled confusion matrices, and the settings
        they ran with."""
        p = self.cfg.protocols[protocol]
        plan = self.plan(protocol)
        tax, main, folds = plan.tax, plan.main, plan.folds
        results = sorted(run + reused, key=lambda r: r.fold)
        cv = CvResult(
            protocol=protocol, taxonomy=tax.to_dict(),
            corpora=list(p.corpora) if p.corpora is not None
            else sorted({it.corpus for it in main}),
            extra_train_corpora=plan.extra, split=plan.split,
            folds=len(folds), folds_run=[r.fold for r in results],
            folds_reused=sorted(r.fold for r in reused),
            n_files=len(main), n_speakers=len({it.speaker for it in main}),
            seed=self.sets.seed, feature_seconds=round(prep, 1),
            seconds=round(seconds, 1),
            summary=aggregate(results, len(tax.labels)),
            per_fold=results,
            config={**{k: asdict(getattr(self.cfg, k))
                       for k in ("windows", "normalisation", "augment", "model")},
                    "training": asdict(plan.training)},
        )
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"cv-{protocol}.json").write_text(
                json.dumps(cv.to_dict(), indent=1) + "\n")
        return cv

    def fold_cost(self, protocol: str, index: int) -> int:
        """A fold's training work, for ordering: its training files times its epochs."""
        plan = self.plan(protocol)
        train_spk = set(plan.folds[index].train)
        return sum(it.speaker in train_spk for it in plan.items) * int(plan.training.epochs)

    def in_processes(self, todo: list[tuple[str, int]], workers: int,
                     beside: InProcess | None = None
                     ) -> tuple[dict[str, list[FoldResult]], dict[str, float]]:
        """Run (protocol, fold) jobs in ``workers`` fresh processes, each with its share of
        the threads; returns each protocol's results and when its last fold ended.
        ``beside`` (the shipped model's training): its failure ends the folds at once.

        TensorFlow keeps two cores well short of busy on these small models, so folds side
        by side, one thread each, get through a CV faster (docs/experiments/LOG.md, Timings
        history).
        Each worker loads the window sets from the cache (extracted beforehand, in this
        process, but not loaded there); this process drops any copies it holds, so memory
        is the workers' only.  Workers show no progress bars (two would garble one
        terminal); each fold is logged as it finishes.
        """
        self.sets.drop_loaded()
        cfg = replace(self.cfg, jobs=max(1, self.sets.jobs // workers), parallel_folds=1)
        for protocol in dict.fromkeys(p for p, _ in todo):
            n = sum(p == protocol for p, _ in todo)
            _LOGGER.info("%s: %d folds, %d at a time in worker processes", protocol, n,
                         min(workers, len(todo)))
        results: dict[str, list[FoldResult]] = {p: [] for p, _ in todo}
        finished: dict[str, float] = {}
        # The workers get this process's corpus scan (files, labels, de-duplication) rather
        # than walking and fingerprinting the corpora again, once per fold.
        items, dropped = self.sets.items, self.sets.dropped
        pool = spawned_pool(min(workers, len(todo)))
        try:
            futures = {pool.submit(answerable, _fold_worker, cfg, protocol, i, items, dropped,
                                   self.probs_record(protocol, i)): protocol
                       for protocol, i in todo}
            for protocol, future in completed(futures, beside):
                results[protocol].append(future.result())
                self._fold_done(protocol, results[protocol][-1])
                finished[protocol] = time.time()
        except BrokenProcessPool:
            stop_now(pool)
            raise died("a CV fold's worker process") from None
        except BaseException:
            # A failed fold (or Ctrl-C) ends the run now: the executor's own exit would
            # wait for every queued and running fold first, which can be most of an hour.
            # Finished folds are kept on disk and reused by the next run.
            stop_now(pool)
            raise
        pool.shutdown()
        return {p: sorted(r, key=lambda r: r.fold) for p, r in results.items()}, finished


def _fold_worker(cfg: TrainConfig, protocol: str, index: int, items: list[Item],
                 dropped: list[tuple[str, str]], probs: Path) -> FoldResult:
    """One CV fold in a worker process (see :meth:`CrossValidation.in_processes`)."""
    logging.basicConfig(level=logging.WARNING)
    set_tf_threads(cfg.jobs)
    sets = WindowSets(cfg, progress=False, scan=(items, dropped))
    return CrossValidation(sets).run_fold(protocol, index, probs)


def code_hash() -> str:
    """SHA-256 of every module of ``train`` (subpackages included) and of every ``serd``
    module they import, recursively (:mod:`train.sources`): a change in any code a fold's
    result depends on retrains it."""
    root = Path(train.__file__).parent
    modules = [".".join(("train", *f.relative_to(root).with_suffix("").parts))
               .removesuffix(".__init__") for f in sorted(root.rglob("*.py"))]
    return source_hash(modules)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "ai-edge-litert"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def log_fold(protocol: str, res: FoldResult) -> None:
    c, t = res.clean, res.telephone
    if "fused_int8" in c.kinds:
        _LOGGER.info("%s fold %d: fused with the voice branch: bacc int8 %.3f (voice alone "
                     "%.3f), telephone %.3f", protocol, res.fold,
                     c.kinds["fused_int8"].file.balanced_accuracy,
                     c.kinds["voice"].file.balanced_accuracy,
                     t.kinds["fused_int8"].file.balanced_accuracy)
    _LOGGER.info(
        "%s fold %d: bacc float %.3f int8 %.3f (window int8 %.3f), f1 int8 %.3f, "
        "telephone int8 %.3f, agreement %.3f, best epoch %s, %.0f s",
        protocol, res.fold, c.kinds["float"].file.balanced_accuracy,
        c.kinds["int8"].file.balanced_accuracy, c.kinds["int8"].window.balanced_accuracy,
        c.kinds["int8"].file.macro_f1, t.kinds["int8"].file.balanced_accuracy,
        c.agreements["agreement"].window_argmax, res.best_epoch, res.seconds)
