"""Cross-validation and final training: corpora -> cached windows -> CNN -> int8 -> metrics."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import serd
from serd.features import FeatureParams
from serd.gate import VadSettings
from serd.model import ModelCard, fingerprint_signal, frontend_fingerprint, voice_head_path
from serd.normalise import (
    Normalisation,
    fit_normalisation,
    normalise_windows,
)
from serd.voice import VOICE_VERSION, VoiceHead, VoiceParams, VoiceTrunk, fuse, voice_fingerprint
from train.config import TrainConfig, TrainingConfig, resolve
from train.corpora import CorpusError, Item, load_corpora
from train.dataset import (
    DEFAULT_CACHE,
    Variant,
    WindowSet,
    build,
    cache_path,
    ensure_cached,
)
from train.evaluate import file_probs, int8_window_probs, scores, summarise
from train.splits import Fold, corpus_folds, cv_folds, final_split
from train.taxonomy import Taxonomy
from train.voice import build_voice, fit_head, save_head, voice_path

_LOGGER = logging.getLogger(__name__)


@dataclass
class Selection:
    """Windows of a subset of files, re-indexed 0..n_files-1."""

    x: npt.NDArray[np.floating]
    file: npt.NDArray[np.int64]
    y_file: npt.NDArray[np.int64]
    n_files: int


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


class Runner:
    """Holds the configuration, the corpus items and the in-memory window sets."""

    def __init__(self, cfg: TrainConfig, progress: bool = True, *,
                 scan: tuple[list[Item], list[tuple[str, str]]] | None = None,
                 resume: bool = True) -> None:
        """``scan``: the corpus items and dropped duplicates of an earlier scan of the same
        roots (a CV fold worker gets its parent's), instead of scanning them again.
        ``resume``: reuse CV folds already trained with the same settings, data and code
        (see :meth:`fold_key`); False retrains them (their records are still written)."""
        self.cfg = cfg
        self.progress = progress
        self.resume = resume
        self._protocol_keys: dict[str, str] = {}  # protocol -> fold-key base (see fold_key)
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
        self._set_tf_threads()

    def _set_tf_threads(self) -> None:
        import tensorflow as tf  # noqa: PLC0415

        try:
            tf.config.threading.set_intra_op_parallelism_threads(self.jobs)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised (tests running several trainings)

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
                                        features=self.features, vad=self._vad(variant),
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
                    vad=self._vad(variant), progress=self.progress)
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

    def _voice_variants(self) -> list[Variant]:
        """The renderings the voice head is fitted on and evaluated with."""
        return self.eval_variants() if self.cfg.voice.telephone else self.eval_variants()[:1]

    def fit_voice(self, items: list[Item], tax: Taxonomy, speakers: Iterable[str]
                  ) -> VoiceHead | None:
        """The voice head, fitted on the windows of ``speakers`` (None: branch disabled)."""
        if not self.cfg.voice.enabled:
            return None
        idx, lab = _labelled(items, speakers, tax.train_label)
        xs, ys = [], []
        for v in self._voice_variants():
            sel = self.select(self.voice_set(items, v), idx, lab)
            xs.append(np.asarray(sel.x, np.float32))
            ys.append(sel.y_file[sel.file])
        return fit_head(np.concatenate(xs), np.concatenate(ys), len(tax.labels),
                        self.cfg.voice.c)

    def _corpus_items(self, corpus: str) -> list[Item]:
        return [it for it in self.items if it.corpus == corpus]

    def _vad(self, variant: Variant) -> VadSettings:
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
                for v in self._voice_variants():
                    self.voice_set(items, v)
        else:
            for part, v in self._cache_units(corpora):
                ensure_cached(part, v, aug=self.aug, seed=self.seed, cache_dir=self.cache,
                              jobs=self.jobs, features=self.features, vad=self._vad(v),
                              progress=self.progress)
            for part, v in self._voice_units(corpora):
                build_voice(part, v, aug=self.aug, seed=self.seed, cache_dir=self.cache,
                            jobs=self.jobs, features=self.features, vad=self._vad(v),
                            progress=self.progress)
            self._voice.clear()  # the workers load what they need themselves
        return time.time() - t0

    def _voice_units(self, corpora: Sequence[str] | None) -> list[tuple[list[Item], Variant]]:
        if not self.cfg.voice.enabled:
            return []
        items = self.corpus_items(corpora)
        return [(self._corpus_items(corpus), v) for v in self._voice_variants()
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
                           features=self.features, vad=self._vad(v))
                for part, v in self._cache_units(corpora)} | {
            voice_path(part, v, self.cache, aug=self.aug, seed=self.seed,
                       features=self.features, vad=self._vad(v))
            for part, v in self._voice_units(corpora)}

    def fold_records(self) -> set[Path]:
        """The fold records that every CV protocol of this configuration would reuse."""
        return {self.fold_record(name, f.index)
                for name in self.cfg.protocols for f in self.cv_plan(name).folds}

    def prune_cache(self, keep: set[Path]) -> tuple[int, int]:
        """Delete the cache's window files and fold records other than ``keep``: those of
        older corpus files, front-ends, settings or code.  Returns (files, bytes) deleted."""
        n = size = 0
        stale = [*self.cache.glob("windows-*.npz"), *self.cache.glob("voice-*.npz"),
                 *self.cache.glob("folds/*.json")]
        for f in sorted(stale):
            if f not in keep:
                size += f.stat().st_size
                f.unlink()
                n += 1
        return n, size

    # -- one training run ------------------------------------------------------------

    def select(self, ws: WindowSet, idx: list[int], labels: list[int]) -> Selection:
        remap = np.full(len(ws.items), -1, np.int64)
        remap[np.asarray(idx, np.int64)] = np.arange(len(idx))
        new = remap[ws.file]
        keep = new >= 0
        return Selection(ws.x[keep], new[keep], np.asarray(labels, np.int64), len(idx))

    def train_one(self, items: list[Item], tax: Taxonomy, fold: Fold, desc: str,
                  tcfg: TrainingConfig | None = None) -> dict[str, Any]:
        """Train on ``fold.train`` speakers, early-stop on ``fold.early_stop``."""
        tcfg = tcfg or self.cfg.training
        from train.model import EvalSet, TrainPool, train_model  # noqa: PLC0415

        tr_idx, tr_lab = _labelled(items, fold.train, tax.train_label)
        es_idx, es_lab = _labelled(items, fold.early_stop, tax.eval_label)

        parts = [self.select(self.window_set(items, v), tr_idx, tr_lab)
                 for v in self.train_variants()]
        clean = parts[0]
        rng = np.random.default_rng(self.seed)
        sub = rng.choice(len(clean.x), size=min(len(clean.x), 4000), replace=False)
        norm = fit_normalisation(np.asarray(clean.x[np.sort(sub)], np.float32), self.centred)
        xs, ys, fs, cs = [], [], [], []
        for c, p in enumerate(parts):
            xs.append(_normalise_f16(p.x, norm))
            ys.append(p.y_file[p.file])
            fs.append(p.file)
            cs.append(np.full(len(p.file), c, np.int64))
        pool = TrainPool(np.concatenate(xs), np.concatenate(ys), np.concatenate(fs),
                         np.concatenate(cs), len(parts))
        del xs
        ev = self.select(self.window_set(items, self.eval_variants()[0]), es_idx, es_lab)
        val = EvalSet(normalise_windows(np.asarray(ev.x, np.float32), norm), ev.file, ev.y_file)
        t0 = time.time()
        model, history = train_model(pool, val, len(tax.labels), self.cfg.model, tcfg,
                                     seed=self.seed + max(fold.index, 0),
                                     progress=self.progress, desc=desc)
        # Representative windows for int8 calibration: normalised training windows.
        n_rep = min(len(pool.x), tcfg.representative_windows)
        rsel = rng.choice(len(pool.x), size=n_rep, replace=False)
        return {
            "model": model, "norm": norm, "history": history,
            "train_seconds": time.time() - t0,
            "representative": np.asarray(pool.x[np.sort(rsel)], np.float32),
            "n_train_files": len(tr_idx), "n_train_windows": int(np.sum(pool.copy == 0)),
            "n_train_windows_all_copies": len(pool.y),
            "n_early_stop_files": len(es_idx),
        }

    def export(self, trained: dict[str, Any], tax: Taxonomy, path: Path, name: str, *,
               description: str = "", training: dict | None = None,
               metrics: dict | None = None, head: VoiceHead | None = None) -> ModelCard:
        """Write ``path`` (int8 tflite), with ``head`` its voice head
        (``<stem>.voice.npz``), and its card; returns the card."""
        from train.quantize import to_int8  # noqa: PLC0415

        blob = to_int8(trained["model"], len(tax.labels), self.cfg.model,
                       trained["representative"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        from serd.model import card_path_for, sha256_of  # noqa: PLC0415

        voice: dict[str, Any] = {}
        if head is not None:
            head_path = voice_head_path(path)
            save_head(head, head_path)
            trunk = VoiceTrunk()
            voice = {
                "version": VOICE_VERSION, "params": VoiceParams().to_dict(),
                "trunk": "GE2E speaker encoder of Resemblyzer 0.1.4 (Apache-2.0), LSTM "
                         "layers 1-2; statistics of layer 2 (serd/voice.py)",
                "trunk_sha256": trunk.sha256,
                "fingerprint": voice_fingerprint(
                    trunk, fingerprint_signal(self.features.sample_rate)),
                "head_file": head_path.name, "head_sha256": sha256_of(head_path),
                "cnn_weight": self.cfg.voice.cnn_weight, "c": self.cfg.voice.c,
                "fitted_on_telephone": self.cfg.voice.telephone,
            }
        card = ModelCard(
            name=name, labels=tax.labels, features=self.features, windows=self.windows,
            normalisation=trained["norm"], sha256=sha256_of(path),
            fingerprint=tuple(frontend_fingerprint(self.features)),
            created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            description=description, training=training or {}, metrics=metrics or {},
            voice=voice,
        )
        card.save(card_path_for(path))
        return card

    # -- evaluation -----------------------------------------------------------------

    def evaluate(self, trained: dict[str, Any], tflite: Path, card: ModelCard, *,
                 items: list[Item], test_idx: list[int], test_lab: list[int],
                 n_labels: int, other_idx: list[int] | None = None,
                 head: VoiceHead | None = None) -> dict[str, Any]:
        """Scores of the float and int8 CNN alone, and with ``head`` of the CNN fused with
        the voice branch (``fused_float``, ``fused_int8``: the latter is what the device
        computes), on the clean and the telephone renderings of the test files."""
        from train.model import predict  # noqa: PLC0415

        out: dict[str, Any] = {}
        w = self.cfg.voice.cnn_weight
        for v, tag in zip(self.eval_variants(), ("clean", "telephone"), strict=True):
            sel = self.select(self.window_set(items, v), test_idx, test_lab)
            raw = np.asarray(sel.x, np.float32)
            pf = predict(trained["model"], normalise_windows(raw, card.normalisation))
            pq = int8_window_probs(tflite, card, raw)
            kinds = {"float": pf, "int8": pq}
            if head is not None:
                vsel = self.select(self.voice_set(items, v), test_idx, test_lab)
                if not np.array_equal(vsel.file, sel.file):
                    raise RuntimeError(f"voice cache of {v.name} is out of step with its "
                                       "windows: delete the cache's voice-*.npz")
                pv = head(np.asarray(vsel.x, np.float32))
                kinds |= {"voice": pv, "fused_float": fuse(pf, pv, w),
                          "fused_int8": fuse(pq, pv, w)}
            y_win = sel.y_file[sel.file]
            res: dict[str, Any] = {"files": sel.n_files,
                                   "files_with_windows": int(np.unique(sel.file).size),
                                   "windows": len(raw)}
            fps: dict[str, npt.NDArray[np.float32]] = {}
            has = np.zeros(sel.n_files, bool)
            for kind, p in kinds.items():
                fps[kind], has = file_probs(p, sel.file, sel.n_files)
                res[kind] = {"file": scores(sel.y_file[has], fps[kind][has].argmax(1), n_labels),
                             "window": scores(y_win, p.argmax(1), n_labels)}
            corp = np.array([items[i].corpus for i in test_idx])
            if len(set(corp)) > 1:
                for kind in ("int8", "fused_int8"):
                    if kind in fps:
                        res[f"{kind}_per_corpus"] = {
                            c: scores(sel.y_file[has & (corp == c)],
                                      fps[kind][has & (corp == c)].argmax(1),
                                      n_labels)["balanced_accuracy"] for c in sorted(set(corp))}
            for name, (a, b) in (("agreement", ("float", "int8")),
                                 ("fused_agreement", ("fused_float", "fused_int8"))):
                if b in kinds:
                    res[name] = {
                        "window_argmax": float((kinds[a].argmax(1) == kinds[b].argmax(1)).mean())
                        if len(raw) else 1.0,
                        "file_argmax": float((fps[a][has].argmax(1) == fps[b][has].argmax(1))
                                             .mean()) if has.any() else 1.0,
                    }
            out[tag] = res
        if other_idx:
            # Emotions outside the taxonomy (RAVDESS calm/surprised in the six-class model):
            # what the int8 model (fused with its voice branch, if any) calls them.
            sel = self.select(self.window_set(items, self.eval_variants()[0]), other_idx,
                              [0] * len(other_idx))
            pq = int8_window_probs(tflite, card, np.asarray(sel.x, np.float32))
            if head is not None:
                vsel = self.select(self.voice_set(items, self.eval_variants()[0]), other_idx,
                                   [0] * len(other_idx))
                pq = fuse(pq, head(np.asarray(vsel.x, np.float32)), w)
            fpq, has = file_probs(pq, sel.file, sel.n_files)
            pred = fpq.argmax(1)
            dist: dict[str, list[int]] = {}
            for j, i in enumerate(other_idx):
                if has[j]:
                    dist.setdefault(items[i].label, [0] * n_labels)[int(pred[j])] += 1
            out["other_emotions_int8"] = dist
        return out

    # -- protocols ------------------------------------------------------------------

    def taxonomy(self, name: str) -> Taxonomy:
        return self.cfg.taxonomies[name].taxonomy(name)

    def cv_plan(self, protocol: str) -> CvPlan:
        """Everything a CV protocol's folds are run from (see :class:`CvPlan`)."""
        p = self.cfg.protocols[protocol]
        tax = self.taxonomy(p.taxonomy)
        extra = list(p.extra_train_corpora)
        items = self.corpus_items(p.all_corpora)
        tcfg = p.training
        main = [it for it in items if it.corpus in p.corpora]
        split = p.split
        frac = float(tcfg.early_stop_fraction)
        if split == "corpus":
            folds = corpus_folds(main, frac, self.seed)
        else:
            assert p.folds is not None  # ProtocolConfig requires folds with split: speakers
            folds = cv_folds(main, p.folds, frac, self.seed)
        if extra:
            # Speakers of the extra corpora are only ever trained on (never tested or used
            # for early stopping): the protocol's test folds stay as they are.
            extra_spk = tuple(sorted({it.speaker for it in items if it.corpus in extra}))
            folds = [Fold(f.index, f.train + extra_spk, f.early_stop, f.test) for f in folds]
        return CvPlan(tax, items, main, folds, tcfg, extra, split)

    def run_fold(self, protocol: str, index: int) -> dict[str, Any]:
        """Train, export and evaluate one CV fold; returns its (JSON-ready) results."""
        plan = self.cv_plan(protocol)
        tax, items, folds, tcfg = plan.tax, plan.items, plan.folds, plan.training
        fold = folds[index]
        t0 = time.time()
        trained = self.train_one(items, tax, fold,
                                 f"{protocol} fold {fold.index + 1}/{len(folds)}", tcfg)
        test_idx, test_lab = _labelled(items, fold.test, tax.eval_label)
        te = set(fold.test)
        other_idx = [i for i, it in enumerate(items)
                     if it.speaker in te and tax.eval_label(it) is None]
        head = self.fit_voice(items, tax, fold.train + fold.early_stop)
        with tempfile.TemporaryDirectory() as td:
            tfl = Path(td) / "fold.tflite"
            card = self.export(trained, tax, tfl, f"{protocol}-fold{fold.index}")
            size = tfl.stat().st_size
            ev = self.evaluate(trained, tfl, card, items=items, test_idx=test_idx,
                               test_lab=test_lab, n_labels=len(tax.labels),
                               other_idx=other_idx, head=head)
        return {
            "fold": fold.index, "test_speakers": list(fold.test),
            "early_stop_speakers": list(fold.early_stop),
            "n_train_speakers": len(fold.train), "n_test_files": len(test_idx),
            "n_train_files": trained["n_train_files"],
            "n_train_windows": trained["n_train_windows"],
            "n_train_windows_all_copies": trained["n_train_windows_all_copies"],
            "history": trained["history"], "tflite_bytes": size,
            "params": int(trained["model"].count_params()),
            **ev, "seconds": round(time.time() - t0, 1),
        }

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
            items = [it.to_dict() for it in self.corpus_items(corpora)]
            blob = {
                "format": 1, "protocol": protocol, "config": asdict(self.cfg),
                # Labels, speakers and genders: a manifest can change them without changing
                # a byte of audio.  Then the cache keys: contents, front-end, renderings.
                "items": hashlib.sha256(json.dumps(items).encode()).hexdigest(),
                "data": sorted(path.name for path in self.cache_paths(corpora)),
                "code": _code_hash(), "versions": _versions(),
            }
            base = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode())\
                .hexdigest()
            self._protocol_keys[protocol] = base
        return hashlib.sha256(f"{base}:{index}".encode()).hexdigest()

    def fold_record(self, protocol: str, index: int) -> Path:
        """Where a fold's result is kept (in the cache directory, outside the repo)."""
        key = self.fold_key(protocol, index)
        return self.cache / "folds" / f"{protocol}-fold{index}-{key[:24]}.json"

    def _load_fold(self, protocol: str, index: int) -> dict[str, Any] | None:
        path = self.fold_record(protocol, index)
        try:
            res: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            _LOGGER.warning("%s: unreadable fold record, training the fold again (%s)",
                            path, exc)
            return None
        return res

    def _fold_done(self, protocol: str, res: dict[str, Any]) -> None:
        """Record a finished fold at once (kept even if a later fold fails), then log it."""
        self._save_fold(protocol, res)
        _log_fold(protocol, res)

    def _save_fold(self, protocol: str, res: dict[str, Any]) -> None:
        path = self.fold_record(protocol, int(res["fold"]))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(res) + "\n")
            tmp.replace(path)  # atomic: an interrupted run leaves no half record
        except (OSError, TypeError, ValueError) as exc:
            # Only resuming is lost; the CV itself goes on.
            _LOGGER.warning("%s: could not record the fold (%s); a rerun trains it again",
                            path, exc)

    def run_cv(self, protocol: str, only_folds: list[int] | None = None,
               out_dir: Path | None = None) -> dict[str, Any]:
        p = self.cfg.protocols[protocol]
        t_start = time.time()
        todo, reused = self._cv_todo(protocol, only_folds)
        parallel = self.cfg.parallel_folds
        in_workers = parallel > 1 and bool(todo)
        prep = self.prepare(p.all_corpora, load=not in_workers) if todo else 0.0
        if in_workers:
            # Even a single fold goes to a worker, with the same thread count as in a full
            # run: the number of threads changes the order of floating-point sums, so this
            # keeps `cv --folds k` equal to fold k of `serd-train all`.
            results = self._folds_in_processes([(protocol, i) for i in todo],
                                               parallel)[0][protocol]
        else:
            results = []
            for i in todo:
                results.append(self.run_fold(protocol, i))
                self._fold_done(protocol, results[-1])
        return self._cv_summary(protocol, results, reused, prep, time.time() - t_start,
                                out_dir)

    def _cv_todo(self, protocol: str, only_folds: list[int] | None
                 ) -> tuple[list[int], list[dict[str, Any]]]:
        """(folds still to train, results of folds reused from their records)."""
        folds = self.cv_plan(protocol).folds
        todo = [f.index for f in folds if only_folds is None or f.index in only_folds]
        reused: list[dict[str, Any]] = []
        if self.resume:
            reused = [r for i in todo if (r := self._load_fold(protocol, i)) is not None]
        if reused:
            _LOGGER.info("%s: folds %s already trained with these settings, data and code: "
                         "results reused from %s (--fresh trains them again)", protocol,
                         ",".join(str(r["fold"]) for r in reused), self.cache / "folds")
        done = {int(r["fold"]) for r in reused}
        return [i for i in todo if i not in done], reused

    def _cv_summary(self, protocol: str, run: list[dict[str, Any]],
                    reused: list[dict[str, Any]], prep: float, seconds: float,
                    out_dir: Path | None) -> dict[str, Any]:
        """The CV's JSON (``cv-<protocol>.json`` in ``out_dir``) from the folds trained now
        and those reused: folds, mean ± std, pooled confusion matrices, and the settings
        they ran with."""
        p = self.cfg.protocols[protocol]
        plan = self.cv_plan(protocol)
        tax, main, folds = plan.tax, plan.main, plan.folds
        results = sorted(run + reused, key=lambda r: int(r["fold"]))
        summary = {
            "protocol": protocol, "taxonomy": tax.to_dict(), "corpora": list(p.corpora),
            "extra_train_corpora": plan.extra, "split": plan.split,
            "folds": len(folds), "folds_run": [r["fold"] for r in results],
            "folds_reused": sorted(int(r["fold"]) for r in reused),
            "n_files": len(main), "n_speakers": len({it.speaker for it in main}),
            "seed": self.seed, "feature_seconds": round(prep, 1),
            "seconds": round(seconds, 1),
            "summary": aggregate(results, len(tax.labels)),
            "per_fold": results,
            "config": {**{k: asdict(getattr(self.cfg, k))
                          for k in ("windows", "normalisation", "augment", "model")},
                       "training": asdict(plan.training)},
        }
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"cv-{protocol}.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    def _fold_cost(self, protocol: str, index: int) -> int:
        """A fold's training work, for ordering: its training files times its epochs."""
        plan = self.cv_plan(protocol)
        train = set(plan.folds[index].train)
        return sum(it.speaker in train for it in plan.items) * int(plan.training.epochs)

    def _folds_in_processes(self, todo: list[tuple[str, int]], workers: int
                            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
        """Run (protocol, fold) jobs in ``workers`` fresh processes, each with its share of
        the threads; returns each protocol's results and when its last fold ended.

        TensorFlow keeps two cores only about 60 % busy on these small models, so two
        folds side by side, one thread each, get through a CV about 1.5 times as fast
        (six classes: 15.6 instead of 24.3 min), and three about 8 % faster again (ravdess8
        on a 2-core VM: 322 instead of 349 s of folds).  Each worker loads the window sets
        from the cache (extracted beforehand, in this process, but not loaded there); this
        process drops any copies it holds, so memory is the workers' only.  Workers show no
        progress bars (two would garble one terminal); each fold is logged as it finishes.
        """
        self._sets.clear()
        cfg = replace(self.cfg, jobs=max(1, self.jobs // workers), parallel_folds=1)
        ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
        for protocol in dict.fromkeys(p for p, _ in todo):
            n = sum(p == protocol for p, _ in todo)
            _LOGGER.info("%s: %d folds, %d at a time in worker processes", protocol, n,
                         min(workers, len(todo)))
        results: dict[str, list[dict[str, Any]]] = {p: [] for p, _ in todo}
        finished: dict[str, float] = {}
        # The workers get this process's corpus scan (files, labels, de-duplication) rather
        # than walking and fingerprinting the corpora again, once per fold.
        items, dropped = self.items, self.dropped
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(_fold_worker, cfg, protocol, i, items, dropped): protocol
                       for protocol, i in todo}
            for future in as_completed(futures):
                protocol = futures[future]
                results[protocol].append(future.result())
                self._fold_done(protocol, results[protocol][-1])
                finished[protocol] = time.time()
        return {p: sorted(r, key=lambda r: int(r["fold"])) for p, r in results.items()}, finished

    def run_all(self, out_dir: Path, command: str
                ) -> tuple[dict[str, dict[str, Any]], ModelCard]:
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

        With one BLAS thread per extraction worker and three folds at a time, this took
        ``all`` on a 2-core VM from 55.1 to 39.1 min (docs/training.md, Timings).
        """
        protocols = list(self.cfg.protocols)
        if self.cfg.parallel_folds <= 1:
            cv = {name: self.run_cv(name, None, out_dir) for name in protocols}
            return cv, self.run_final(out_dir, cv, command)
        t0 = time.time()
        prep = {name: self.prepare(self.cfg.protocols[name].all_corpora, load=False)
                for name in protocols}
        self.prepare(self.cfg.final.corpora, load=False)
        todo = {name: self._cv_todo(name, None) for name in protocols}
        jobs = sorted(((name, i) for name in protocols for i in todo[name][0]),
                      key=lambda job: -self._fold_cost(*job))
        t_folds = time.time()
        results: dict[str, list[dict[str, Any]]] = {}
        finished: dict[str, float] = {}
        # The model is written to a staging folder and moved into out_dir (models/ by
        # default) with its complete card at the end: an interrupted run never leaves a
        # new model there beside the old CV files, or a card without metrics.
        with tempfile.TemporaryDirectory(prefix="serd-final-") as tmp:
            staging = Path(tmp)
            fit_pool = multiprocessing.get_context("spawn").Pool(1)
            try:
                fit = fit_pool.apply_async(_final_worker, (self.cfg, staging, command,
                                                           self.items, self.dropped))
                _LOGGER.info("shipped model: training in its own process, beside the folds")
                if jobs:
                    results, finished = self._folds_in_processes(jobs,
                                                                 self.cfg.parallel_folds)
                card: ModelCard = fit.get()
                fit_pool.close()
            finally:
                # After a failed fold (or Ctrl-C) stop the model's training too, rather
                # than wait the quarter of an hour it takes before reporting the error.
                fit_pool.terminate()
                fit_pool.join()
            cv = {}
            for name in protocols:
                # Wall time until the protocol's last fold was done (the folds of all
                # protocols share the workers), plus its own feature extraction.
                secs = prep[name] + finished.get(name, t_folds) - t_folds
                cv[name] = self._cv_summary(name, results.get(name, []), todo[name][1],
                                            prep[name], secs, out_dir)
            card = replace(card, metrics={name: cv_card_metrics(res)
                                          for name, res in cv.items()})
            from serd.model import card_path_for  # noqa: PLC0415

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
        return cv, card

    def run_final(self, out_dir: Path, cv: dict[str, dict[str, Any]], command: str) -> ModelCard:
        f = self.cfg.final
        tax = self.taxonomy(f.taxonomy)
        items = self.corpus_items(f.corpora)
        corpora = sorted({it.corpus for it in items})
        t0 = time.time()
        prep = self.prepare(corpora)
        tcfg = f.training
        fold = final_split(items, float(tcfg.early_stop_fraction), self.seed)
        trained = self.train_one(items, tax, fold, "final model", tcfg)
        head = self.fit_voice(items, tax, fold.train + fold.early_stop)
        used = [it for it in items if tax.train_label(it) is not None]
        training = {
            "corpora": corpora,
            "corpora_roots": [str(r) for r in self.roots],
            "files": len(used),
            "speakers": len({it.speaker for it in used}),
            "files_per_corpus": {c: sum(it.corpus == c for it in used) for c in corpora},
            "speakers_per_corpus": {c: len({it.speaker for it in used if it.corpus == c})
                                    for c in corpora},
            "files_per_label": {lab: sum(tax.train_label(it) == i for it in used)
                                for i, lab in enumerate(tax.labels)},
            "dropped_duplicates": [[Path(p).name, r] for p, r in self.dropped],
            "taxonomy": tax.to_dict(),
            "early_stop_speakers": list(fold.early_stop),
            "train_speakers": len(fold.train),
            "train_windows": trained["n_train_windows"],
            "train_windows_all_copies": trained["n_train_windows_all_copies"],
            "augmentation": {"copies": self.copies, **self.aug.to_dict()},
            "train_window_hop_seconds": self.train_windows.hop_seconds,
            "train_vad": asdict(self.cfg.windows)["train_vad"],
            "model": asdict(self.cfg.model),
            "params": int(trained["model"].count_params()),
            "optimiser": dict(sorted(asdict(tcfg).items())),
            "epochs_run": len(trained["history"]) - 1,
            "best_epoch": trained["history"][-1]["best_epoch"],
            "best_early_stop_balanced_accuracy": round(trained["history"][-1]["best_val_bacc"], 4),
            "seed": self.seed,
            "protocol": "all speakers of the corpora; early stopping on held-out speakers; "
                        "CV metrics below come from the speaker-disjoint protocols",
            "command": command,
            "train_seconds": round(trained["train_seconds"], 1),
            "feature_seconds": round(prep, 1),
        }
        metrics = {name: cv_card_metrics(res) for name, res in cv.items()}
        name = f.name
        members = self.cfg.model.members
        cnn = (f"the mean of {members} compact 1-D CNNs" if members > 1
               else "a compact 1-D CNN")
        inputs = "MFCC + voicing + log-F0" if self.features.pitch else "MFCC"
        desc = (f"Speech emotion recognition, {len(tax.labels)} classes "
                f"({', '.join(tax.labels)}), {cnn} over "
                f"{self.windows.window_seconds:g} s {inputs} windows, int8. "
                f"Trained on {', '.join(corpora)} (acted English speech).")
        if head is not None:
            desc += (" Each window's CNN opinion is fused with a logistic regression over a "
                     "pretrained speaker encoder's middle layer (serd/voice.py).")
        card = self.export(trained, tax, out_dir / f"{name}.tflite", name, description=desc,
                           training=training, metrics=metrics, head=head)
        _LOGGER.info("final model: %s, %.0f s", out_dir / f"{name}.tflite", time.time() - t0)
        return card


def _labelled(items: Sequence[Item], speakers: Iterable[str],
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


def _code_hash() -> str:
    """SHA-256 of every module of ``serd`` and ``train``: any code change retrains."""
    h = hashlib.sha256()
    for pkg in (Path(serd.__file__).parent, Path(__file__).parent):
        for f in sorted(pkg.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "ai-edge-litert"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _log_fold(protocol: str, res: dict[str, Any]) -> None:
    c = res["clean"]
    if "fused_int8" in c:
        _LOGGER.info("%s fold %d: fused with the voice branch: bacc int8 %.3f (voice alone "
                     "%.3f), telephone %.3f", protocol, res["fold"],
                     c["fused_int8"]["file"]["balanced_accuracy"],
                     c["voice"]["file"]["balanced_accuracy"],
                     res["telephone"]["fused_int8"]["file"]["balanced_accuracy"])
    _LOGGER.info(
        "%s fold %d: bacc float %.3f int8 %.3f (window int8 %.3f), f1 int8 %.3f, "
        "telephone int8 %.3f, agreement %.3f, best epoch %s, %.0f s",
        protocol, res["fold"], c["float"]["file"]["balanced_accuracy"],
        c["int8"]["file"]["balanced_accuracy"], c["int8"]["window"]["balanced_accuracy"],
        c["int8"]["file"]["macro_f1"], res["telephone"]["int8"]["file"]["balanced_accuracy"],
        c["agreement"]["window_argmax"], res["history"][-1]["best_epoch"], res["seconds"])


def _fold_worker(cfg: TrainConfig, protocol: str, index: int, items: list[Item],
                 dropped: list[tuple[str, str]]) -> dict[str, Any]:
    """One CV fold in a worker process (see Runner._folds_in_processes)."""
    logging.basicConfig(level=logging.WARNING)
    return Runner(cfg, progress=False, scan=(items, dropped)).run_fold(protocol, index)


def _final_worker(cfg: TrainConfig, out_dir: Path, command: str, items: list[Item],
                  dropped: list[tuple[str, str]]) -> ModelCard:
    """The shipped model in a process of its own (see Runner.run_all), its card still
    without CV metrics."""
    logging.basicConfig(level=logging.WARNING)
    return Runner(cfg, progress=False, scan=(items, dropped)).run_final(out_dir, {}, command)


def _normalise_f16(x: npt.NDArray[np.floating], norm: Normalisation,
                   chunk: int = 2048) -> npt.NDArray[np.float16]:
    out = np.empty(x.shape, np.float16)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = normalise_windows(np.asarray(x[i : i + chunk], np.float32), norm)
    return out


def aggregate(results: list[dict[str, Any]], n_labels: int) -> dict[str, Any]:
    """Mean ± std over folds, pooled confusion matrices, float-int8 and telephone deltas,
    for the CNN alone (``float``, ``int8``) and, where the folds have them, for the voice
    branch alone (``voice``) and the fused model (``fused_float``, ``fused_int8``)."""
    if not results:
        return {}
    kinds = [k for k in ("float", "int8", "voice", "fused_float", "fused_int8")
             if all(k in r["clean"] for r in results)]
    out: dict[str, Any] = {}
    for cond in ("clean", "telephone"):
        for kind in kinds:
            for level in ("file", "window"):
                for m in ("balanced_accuracy", "macro_f1"):
                    vals = [r[cond][kind][level][m] for r in results]
                    out[f"{cond}.{kind}.{level}.{m}"] = {**summarise(vals),
                                                         "per_fold": [round(v, 4) for v in vals]}
            cm = np.sum([r[cond][kind]["file"]["confusion"] for r in results], axis=0)
            out[f"{cond}.{kind}.file.confusion"] = cm.astype(int).tolist()
        for name in ("agreement", "fused_agreement"):
            if all(name in r[cond] for r in results):
                for level in ("window_argmax", "file_argmax"):
                    out[f"{cond}.{name}.{level}"] = summarise(
                        [r[cond][name][level] for r in results])
        out[f"{cond}.coverage"] = {
            "files": int(sum(r[cond]["files"] for r in results)),
            "files_with_windows": int(sum(r[cond]["files_with_windows"] for r in results))}
    for kind in kinds:
        drop = [r["clean"][kind]["file"]["balanced_accuracy"]
                - r["telephone"][kind]["file"]["balanced_accuracy"] for r in results]
        out[f"telephone_drop.{kind}"] = {**summarise(drop), "per_fold": [round(v, 4) for v in drop]}
    other: dict[str, Any] = {}
    for r in results:
        for lab, row in r.get("other_emotions_int8", {}).items():
            other[lab] = (np.asarray(other.get(lab, [0] * n_labels)) + row).astype(int).tolist()
    if other:
        out["other_emotions_int8"] = other
    for prefix, (a, b) in (("", ("float", "int8")), ("fused_", ("fused_float", "fused_int8"))):
        if b in kinds:
            diff = [r["clean"][a]["file"]["balanced_accuracy"]
                    - r["clean"][b]["file"]["balanced_accuracy"] for r in results]
            out[f"{prefix}float_minus_int8.file.balanced_accuracy"] = {
                **summarise(diff), "per_fold": [round(v, 4) for v in diff]}
    return out


def cv_card_metrics(cv: dict[str, Any]) -> dict[str, Any]:
    """The CV numbers that go into a model card (compact: no histories)."""
    s = cv["summary"]

    def r(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

    return {
        "protocol": cv["protocol"], "corpora": cv["corpora"], "labels": cv["taxonomy"]["labels"],
        "folds": cv["folds"], "speakers": cv["n_speakers"],
        "verdict": "file level = argmax of the mean of the file's window probabilities",
        **{k: (r(v) if isinstance(v, dict) else v) for k, v in s.items()},
        "fold_test_speakers": [f["test_speakers"] for f in cv["per_fold"]],
    }
