"""The shipped model: trained on every speaker of its corpora, with its card; and
``serd-train all``, which runs every CV protocol beside it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from serd.model import Calibration, ModelCard, card_path_for, voice_head_path
from train.calibration import calibrate, load_fold
from train.config import TrainConfig
from train.corpora import Item
from train.cv import CrossValidation
from train.fit import export, fit_voice, set_tf_threads, train_cnn
from train.processes import InProcess
from train.results import CvResult
from train.splits import final_split
from train.windowsets import WindowSets

_LOGGER = logging.getLogger(__name__)


def run_final(sets: WindowSets, out_dir: Path, cv: dict[str, CvResult],
              command: str) -> ModelCard:
    """Train, export and describe the shipped model (``serd-train fit``) into ``out_dir``;
    its card gets the metrics of ``cv``."""
    f = sets.cfg.final
    tax = sets.taxonomy(f.taxonomy)
    items = sets.corpus_items(f.corpora)
    corpora = sorted({it.corpus for it in items})
    t0 = time.time()
    prep = sets.prepare(corpora)
    tcfg = f.training
    fold = final_split(items, float(tcfg.early_stop_fraction), sets.seed)
    trained = train_cnn(sets, items, tax, fold, "final model", tcfg)
    head = fit_voice(sets, items, tax, fold.train + fold.early_stop,
                     sets.cfg.voice.max_files_per_corpus)
    used = [it for it in items if tax.train_label(it) is not None]
    training: dict[str, Any] = {
        "corpora": corpora,
        "corpora_roots": [str(r) for r in sets.roots],
        "files": len(used),
        "speakers": len({it.speaker for it in used}),
        "files_per_corpus": {c: sum(it.corpus == c for it in used) for c in corpora},
        "speakers_per_corpus": {c: len({it.speaker for it in used if it.corpus == c})
                                for c in corpora},
        "files_per_label": {lab: sum(tax.train_label(it) == i for it in used)
                            for i, lab in enumerate(tax.labels)},
        "dropped_duplicates": [[Path(p).name, r] for p, r in sets.dropped],
        "taxonomy": tax.to_dict(),
        "early_stop_speakers": list(fold.early_stop),
        "train_speakers": len(fold.train),
        "train_windows": trained.n_train_windows,
        "train_windows_all_copies": trained.n_train_windows_all_copies,
        "augmentation": {"copies": sets.copies, **sets.aug.to_dict()},
        "train_window_hop_seconds": sets.train_windows.hop_seconds,
        "train_vad": asdict(sets.cfg.windows)["train_vad"],
        # The gate as it ran, every key: ``train_vad`` holds only the keys configured, and
        # a later serd's defaults (such as the Silero confirm stage) would otherwise be
        # invisible on a card written before them.
        "train_vad_effective": asdict(sets.train_vad),
        "eval_vad": asdict(sets.eval_vad),
        "voice_max_files_per_corpus": sets.cfg.voice.max_files_per_corpus,
        "voice_augment_copies": sets.cfg.voice.augment_copies,
        "model": asdict(sets.cfg.model),
        "params": int(trained.model.count_params()),
        "optimiser": dict(sorted(asdict(tcfg).items())),
        "epochs_run": len(trained.history) - 1,
        "best_epoch": trained.history[-1]["best_epoch"],
        "best_early_stop_balanced_accuracy": round(trained.history[-1]["best_val_bacc"], 4),
        "seed": sets.seed,
        "protocol": "all speakers of the corpora; early stopping on held-out speakers; "
                    "CV metrics below come from the speaker-disjoint protocols",
        "command": command,
        "train_seconds": round(trained.train_seconds, 1),
        "feature_seconds": round(prep, 1),
    }
    metrics = {name: res.card_metrics() for name, res in cv.items()}
    name = f.name
    members = sets.cfg.model.members
    cnn = (f"the mean of {members} compact 1-D CNNs" if members > 1
           else "a compact 1-D CNN")
    inputs = "MFCC + voicing + log-F0" if sets.features.pitch else "MFCC"
    desc = (f"Speech emotion recognition, {len(tax.labels)} classes "
            f"({', '.join(tax.labels)}), {cnn} over "
            f"{sets.windows.window_seconds:g} s {inputs} windows, int8. "
            f"Trained on {', '.join(corpora)} (acted speech).")
    if head is not None:
        desc += (" Each window's CNN opinion is fused with a logistic regression over a "
                 "pretrained speaker encoder's middle layer (serd/voice.py).")
    card = export(sets, trained, tax, out_dir / f"{name}.tflite", name, description=desc,
                  training=training, metrics=metrics, head=head)
    _LOGGER.info("final model: %s, %.0f s", out_dir / f"{name}.tflite", time.time() - t0)
    return card


def run_all(cv: CrossValidation, out_dir: Path, command: str
            ) -> tuple[dict[str, CvResult], ModelCard]:
    """Every CV protocol and the shipped model (``serd-train all``); returns the CVs and
    the shipped model's card.

    With ``parallel_folds`` > 1 nothing waits for anything it does not need:

    * the folds of every protocol share one pool of workers, the largest first, so no
      worker idles at the end of a protocol while another finishes its last fold
      (cross_corpus's two folds differ twofold in size);
    * the shipped model trains alongside them, in a process of its own with ``jobs``
      threads, as when ``serd-train fit`` trains it alone: the same threads, so the
      same model.  Its card gets the CV metrics once the folds are done, and only then
      do model and card move from a staging folder into ``out_dir``.

    What this schedule saves on a small machine: docs/experiments/LOG.md, Timings history.
    """
    sets, cfg = cv.sets, cv.cfg
    protocols = list(cfg.protocols)
    if cfg.parallel_folds <= 1:
        cvs = {name: cv.run(name, None, out_dir) for name in protocols}
        return cvs, run_final(sets, out_dir, cvs, command)
    t0 = time.time()
    prep = {name: sets.prepare(cfg.protocols[name].all_corpora, load=False)
            for name in protocols}
    sets.prepare(cfg.final.corpora, load=False)
    todo = {name: cv.todo(name, None) for name in protocols}
    jobs = sorted(((name, i) for name in protocols for i in todo[name][0]),
                  key=lambda job: -cv.fold_cost(*job))
    t_folds = time.time()
    results: dict[str, list] = {}
    finished: dict[str, float] = {}
    # The model is written to a staging folder and moved into out_dir (models/ by
    # default) with its complete card at the end: an interrupted run never leaves a
    # new model there beside the old CV files, or a card without metrics.
    with tempfile.TemporaryDirectory(prefix="serd-final-") as tmp:
        staging = Path(tmp)
        fit = InProcess("shipped model's training", _final_worker, cfg, staging, command,
                        sets.items, sets.dropped)
        try:
            _LOGGER.info("shipped model: training in its own process, beside the folds")
            if jobs:
                # (The model's failure is raised as soon as it happens.)
                results, finished = cv.in_processes(jobs, cfg.parallel_folds, fit)
            card: ModelCard = fit.result()
        finally:
            # After a failed fold (or Ctrl-C) stop the model's training too, rather
            # than wait the quarter of an hour it takes before reporting the error.
            fit.stop()
        cvs = {}
        for name in protocols:
            # Wall time until the protocol's last fold was done (the folds of all
            # protocols share the workers), plus its own feature extraction.
            secs = prep[name] + finished.get(name, t_folds) - t_folds
            cvs[name] = cv.summary(name, results.get(name, []), todo[name][1],
                                   prep[name], secs, out_dir)
        card = replace(card, metrics={name: res.card_metrics() for name, res in cvs.items()})
        card = calibrated(cv, cvs, card)
        model = out_dir / f"{card.name}.tflite"
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(staging / model.name, model)
        head = voice_head_path(staging / model.name)
        if head.is_file():
            shutil.move(head, voice_head_path(model))
        else:
            voice_head_path(model).unlink(missing_ok=True)
        card.save(card_path_for(model))
    _LOGGER.info("every CV and the shipped model: %.0f s", time.time() - t0)
    return cvs, card


def calibrated(cv: CrossValidation, cvs: dict[str, CvResult], card: ModelCard) -> ModelCard:
    """``card`` with the temperature fitted on the ``cross_corpus`` folds' device
    probabilities (:mod:`train.calibration`) and the nested figures beside that
    protocol's metrics; unchanged without three or more such folds."""
    res = cvs.get("cross_corpus")
    if res is None:
        return card
    # What the device computes: the int8 CNN fused with the voice branch, or alone.
    kind = "fused_int8" if card.voice is not None else "int8"
    folds = [load_fold(cv.probs_record("cross_corpus", i), kind=kind)
             for i in range(res.folds)]
    found = [f for f in folds if f is not None]
    if len(found) != len(folds):
        _LOGGER.warning("calibration: %d of %d cross_corpus fold dumps are missing; "
                        "the model is not calibrated", len(folds) - len(found), len(folds))
        return card
    cal = calibrate(found, card.labels)
    if cal is None:
        return card
    _LOGGER.info("calibration: temperature %.3g (cross_corpus folds)", cal.temperature)
    metrics = dict(card.metrics)
    metrics["cross_corpus"] = {**metrics.get("cross_corpus", {}), "calibration": cal.to_dict()}
    return replace(card, metrics=metrics, calibration=Calibration(
        cal.temperature, "cross_corpus folds: " + ", ".join(f.corpus for f in found)))


def _final_worker(cfg: TrainConfig, out_dir: Path, command: str, items: list[Item],
                  dropped: list[tuple[str, str]]) -> ModelCard:
    """The shipped model in a process of its own (see :func:`run_all`), its card still
    without CV metrics."""
    logging.basicConfig(level=logging.WARNING)
    set_tf_threads(cfg.jobs)
    return run_final(WindowSets(cfg, progress=False, scan=(items, dropped)), out_dir, {},
                     command)
