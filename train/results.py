"""Typed results of training: one CV fold, a CV's summary over its folds, a whole CV.

They serialise to the JSON that ``serd-train`` has always written (``cv-<protocol>.json``
in ``models/``, the fold records in the cache's ``folds/``): the same keys in the same
order, so a file loaded with ``from_dict`` and written back with ``to_dict`` is unchanged
(a test checks it on the shipped ``models/cv-*.json``).  The summary's JSON is flat
(``"clean.int8.file.balanced_accuracy"``); :class:`CvSummary` holds it as attributes and
flattens it only when written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

import numpy as np

from train.evaluate import VerdictStats, summarise

Kind = Literal["float", "int8", "voice", "fused_float", "fused_int8"]
"""Which model's probabilities: the CNN alone (float Keras model or the int8 file run by
serd), the voice branch alone, or the CNN fused with it (the device's ``fused_int8``)."""
KINDS: tuple[Kind, ...] = get_args(Kind)
Condition = Literal["clean", "telephone"]
CONDITIONS: tuple[Condition, ...] = get_args(Condition)
Level = Literal["file", "window"]
LEVELS: tuple[Level, ...] = get_args(Level)
AGREEMENTS: dict[str, tuple[Kind, Kind]] = {"agreement": ("float", "int8"),
                                            "fused_agreement": ("fused_float", "fused_int8")}
"""Agreement name -> the two kinds whose argmax it compares."""


@dataclass
class Scores:
    """What :func:`train.evaluate.scores` computes for one set of verdicts."""

    n: int
    balanced_accuracy: float
    macro_f1: float
    accuracy: float
    recall: list[float]
    confusion: list[list[int]]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scores:
        return cls(d["n"], d["balanced_accuracy"], d["macro_f1"], d["accuracy"], d["recall"],
                   d["confusion"])

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "balanced_accuracy": self.balanced_accuracy,
                "macro_f1": self.macro_f1, "accuracy": self.accuracy, "recall": self.recall,
                "confusion": self.confusion}


@dataclass
class LevelScores:
    """A kind's scores per file (mean of its window probabilities) and per window."""

    file: Scores
    window: Scores

    def at(self, level: Level) -> Scores:
        return self.file if level == "file" else self.window


@dataclass
class Agreement:
    """How often two kinds' argmax agree, per window and per file."""

    window_argmax: float
    file_argmax: float


@dataclass
class ConditionResult:
    """One fold's test files in one rendering (clean or telephone)."""

    files: int
    files_with_windows: int
    windows: int
    kinds: dict[Kind, LevelScores]
    per_corpus: dict[Kind, dict[str, float]] = field(default_factory=dict)
    """File balanced accuracy per corpus (``int8``, ``fused_int8``), when the test files
    come from more than one corpus."""
    agreements: dict[str, Agreement] = field(default_factory=dict)
    """``agreement`` (float vs int8 CNN), ``fused_agreement`` (the same fused)."""
    verdicts: dict[Kind, VerdictStats] = field(default_factory=dict)
    """Distress, calibration and verdict share of the file verdicts (``int8``,
    ``fused_int8``); absent from results written before they were measured."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConditionResult:
        return cls(
            d["files"], d["files_with_windows"], d["windows"],
            kinds={k: LevelScores(Scores.from_dict(d[k]["file"]),
                                  Scores.from_dict(d[k]["window"])) for k in KINDS if k in d},
            per_corpus={k: dict(d[f"{k}_per_corpus"]) for k in KINDS
                        if f"{k}_per_corpus" in d},
            agreements={a: Agreement(d[a]["window_argmax"], d[a]["file_argmax"])
                        for a in AGREEMENTS if a in d},
            verdicts={k: VerdictStats.from_dict(d[f"{k}_verdict"]) for k in KINDS
                      if f"{k}_verdict" in d})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": self.files, "files_with_windows": self.files_with_windows,
                               "windows": self.windows}
        for k, s in self.kinds.items():
            out[k] = {"file": s.file.to_dict(), "window": s.window.to_dict()}
        for k, pc in self.per_corpus.items():
            out[f"{k}_per_corpus"] = pc
        for a, ag in self.agreements.items():
            out[a] = {"window_argmax": ag.window_argmax, "file_argmax": ag.file_argmax}
        for k, v in self.verdicts.items():
            out[f"{k}_verdict"] = v.to_dict()
        return out


@dataclass
class FoldResult:
    """One CV fold: who it trained and tested on, its training history, its scores."""

    fold: int
    test_speakers: list[str]
    early_stop_speakers: list[str]
    n_train_speakers: int
    n_test_files: int
    n_train_files: int
    n_train_windows: int
    n_train_windows_all_copies: int
    history: list[dict[str, Any]]
    """One entry per epoch, then the selection (``best_epoch``, ``best_val_bacc``...)."""
    tflite_bytes: int
    params: int
    clean: ConditionResult
    telephone: ConditionResult
    other_emotions_int8: dict[str, list[int]] | None
    """Files of emotions outside the taxonomy: what the device's model calls them (counts
    per label); None when the test side has none."""
    seconds: float

    @property
    def best_epoch(self) -> int:
        return int(self.history[-1]["best_epoch"])

    def condition(self, cond: Condition) -> ConditionResult:
        return self.clean if cond == "clean" else self.telephone

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldResult:
        return cls(
            d["fold"], d["test_speakers"], d["early_stop_speakers"], d["n_train_speakers"],
            d["n_test_files"], d["n_train_files"], d["n_train_windows"],
            d["n_train_windows_all_copies"], d["history"], d["tflite_bytes"], d["params"],
            ConditionResult.from_dict(d["clean"]), ConditionResult.from_dict(d["telephone"]),
            d.get("other_emotions_int8"), d["seconds"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold, "test_speakers": self.test_speakers,
            "early_stop_speakers": self.early_stop_speakers,
            "n_train_speakers": self.n_train_speakers, "n_test_files": self.n_test_files,
            "n_train_files": self.n_train_files, "n_train_windows": self.n_train_windows,
            "n_train_windows_all_copies": self.n_train_windows_all_copies,
            "history": self.history, "tflite_bytes": self.tflite_bytes, "params": self.params,
            "clean": self.clean.to_dict(), "telephone": self.telephone.to_dict(),
            **({"other_emotions_int8": self.other_emotions_int8}
               if self.other_emotions_int8 is not None else {}),
            "seconds": self.seconds,
        }


@dataclass
class Stat:
    """Mean ± standard deviation over folds, with each fold's value where kept."""

    mean: float
    std: float
    per_fold: list[float] | None = None

    @classmethod
    def of(cls, values: list[float], per_fold: bool = True) -> Stat:
        s = summarise(values)
        return cls(s["mean"], s["std"], [round(v, 4) for v in values] if per_fold else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stat:
        return cls(d["mean"], d["std"], d.get("per_fold"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": self.mean, "std": self.std}
        if self.per_fold is not None:
            out["per_fold"] = self.per_fold
        return out


@dataclass
class KindSummary:
    """One kind in one condition over the folds."""

    file_balanced_accuracy: Stat
    file_macro_f1: Stat
    window_balanced_accuracy: Stat
    window_macro_f1: Stat
    confusion: list[list[int]]
    """File level, pooled over the folds."""

    @classmethod
    def of(cls, stats: list[Stat], confusion: list[list[int]]) -> KindSummary:
        """From the stats in :data:`LEVELS` x metrics order."""
        fb, fm, wb, wm = stats
        return cls(fb, fm, wb, wm, confusion)

    def stat(self, level: Level, metric: str) -> Stat:
        return cast(Stat, getattr(self, f"{level}_{metric}"))


_METRICS = ("balanced_accuracy", "macro_f1")
VERDICT_METRICS = ("distress_balanced_accuracy", "ece", "verdict_share")
""":class:`VerdictStats` fields summarised over folds (``<cond>.<kind>.file.<metric>``)."""


@dataclass
class ConditionSummary:
    kinds: dict[Kind, KindSummary]
    agreements: dict[str, tuple[Stat, Stat]]
    """Agreement name -> (window argmax, file argmax)."""
    files: int
    files_with_windows: int
    verdicts: dict[Kind, dict[str, Stat]] = field(default_factory=dict)
    """Kind -> :data:`VERDICT_METRICS` over the folds, where every fold has them."""


@dataclass
class CvSummary:
    """Mean ± std over folds, pooled confusion matrices, float−int8 and telephone drops,
    for every kind the folds have (:data:`KINDS`)."""

    clean: ConditionSummary
    telephone: ConditionSummary
    telephone_drop: dict[Kind, Stat]
    other_emotions_int8: dict[str, list[int]] | None
    float_minus_int8: dict[str, Stat]
    """Prefix (``""`` for the CNN, ``"fused_"`` for the fused model) -> file balanced
    accuracy of float minus int8."""

    def condition(self, cond: Condition) -> ConditionSummary:
        return self.clean if cond == "clean" else self.telephone

    @property
    def headline(self) -> Kind:
        """What the device computes: ``fused_int8`` when the CV fused a voice branch, else
        ``int8`` (the CNN alone)."""
        return "fused_int8" if "fused_int8" in self.clean.kinds else "int8"

    def flat(self) -> Iterator[tuple[str, Any]]:
        """The JSON's flat keys and values, in the order always written."""
        for cond in CONDITIONS:
            c = self.condition(cond)
            for kind, ks in c.kinds.items():
                for level in LEVELS:
                    for m in _METRICS:
                        yield f"{cond}.{kind}.{level}.{m}", ks.stat(level, m).to_dict()
                yield f"{cond}.{kind}.file.confusion", ks.confusion
                for m, st in c.verdicts.get(kind, {}).items():
                    yield f"{cond}.{kind}.file.{m}", st.to_dict()
            for name, (w, f) in c.agreements.items():
                yield f"{cond}.{name}.window_argmax", w.to_dict()
                yield f"{cond}.{name}.file_argmax", f.to_dict()
            yield f"{cond}.coverage", {"files": c.files,
                                       "files_with_windows": c.files_with_windows}
        for kind, st in self.telephone_drop.items():
            yield f"telephone_drop.{kind}", st.to_dict()
        if self.other_emotions_int8:
            yield "other_emotions_int8", self.other_emotions_int8
        for prefix, st in self.float_minus_int8.items():
            yield f"{prefix}float_minus_int8.file.balanced_accuracy", st.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return dict(self.flat())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CvSummary | None:
        if not d:
            return None

        def cond(c: str) -> ConditionSummary:
            kinds = {k: KindSummary.of(
                [Stat.from_dict(d[f"{c}.{k}.{lv}.{m}"]) for lv in LEVELS for m in _METRICS],
                d[f"{c}.{k}.file.confusion"])
                for k in KINDS if f"{c}.{k}.file.confusion" in d}
            agreements = {a: (Stat.from_dict(d[f"{c}.{a}.window_argmax"]),
                              Stat.from_dict(d[f"{c}.{a}.file_argmax"]))
                          for a in AGREEMENTS if f"{c}.{a}.window_argmax" in d}
            cov = d[f"{c}.coverage"]
            verdicts = {k: {m: Stat.from_dict(d[f"{c}.{k}.file.{m}"])
                            for m in VERDICT_METRICS}
                        for k in KINDS if f"{c}.{k}.file.{VERDICT_METRICS[0]}" in d}
            return ConditionSummary(kinds, agreements, cov["files"], cov["files_with_windows"],
                                    verdicts)

        return cls(cond("clean"), cond("telephone"),
                   {k: Stat.from_dict(d[f"telephone_drop.{k}"]) for k in KINDS
                    if f"telephone_drop.{k}" in d},
                   d.get("other_emotions_int8"),
                   {p: Stat.from_dict(d[f"{p}float_minus_int8.file.balanced_accuracy"])
                    for p in ("", "fused_")
                    if f"{p}float_minus_int8.file.balanced_accuracy" in d})


def aggregate(results: list[FoldResult], n_labels: int) -> CvSummary | None:
    """Mean ± std over folds, pooled confusion matrices, float-int8 and telephone deltas,
    for the CNN alone (``float``, ``int8``) and, where the folds have them, for the voice
    branch alone (``voice``) and the fused model (``fused_float``, ``fused_int8``).
    None without folds."""
    if not results:
        return None
    kinds = [k for k in KINDS if all(k in r.clean.kinds for r in results)]

    def cond(c: Condition) -> ConditionSummary:
        rs = [r.condition(c) for r in results]
        out = {}
        for k in kinds:
            st = [Stat.of([getattr(r.kinds[k].at(lv), m) for r in rs])
                  for lv in LEVELS for m in _METRICS]
            cm = np.sum([r.kinds[k].file.confusion for r in rs], axis=0)
            out[k] = KindSummary.of(st, cm.astype(int).tolist())
        agreements = {a: (Stat.of([r.agreements[a].window_argmax for r in rs], False),
                          Stat.of([r.agreements[a].file_argmax for r in rs], False))
                      for a in AGREEMENTS if all(a in r.agreements for r in rs)}
        verdicts = {k: {m: Stat.of([getattr(r.verdicts[k], m) for r in rs])
                        for m in VERDICT_METRICS}
                     for k in kinds if all(k in r.verdicts for r in rs)}
        return ConditionSummary(out, agreements, int(sum(r.files for r in rs)),
                                int(sum(r.files_with_windows for r in rs)), verdicts)

    drop = {k: Stat.of([r.clean.kinds[k].file.balanced_accuracy
                        - r.telephone.kinds[k].file.balanced_accuracy for r in results])
            for k in kinds}
    other: dict[str, list[int]] = {}
    for r in results:
        for lab, row in (r.other_emotions_int8 or {}).items():
            other[lab] = (np.asarray(other.get(lab, [0] * n_labels)) + row).astype(int).tolist()
    fmi = {prefix: Stat.of([r.clean.kinds[a].file.balanced_accuracy
                            - r.clean.kinds[b].file.balanced_accuracy for r in results])
           for prefix, (a, b) in zip(("", "fused_"), AGREEMENTS.values(), strict=True)
           if b in kinds}
    return CvSummary(cond("clean"), cond("telephone"), drop, other or None, fmi)


@dataclass
class CvResult:
    """A CV protocol's result: ``cv-<protocol>.json``."""

    protocol: str
    taxonomy: dict[str, Any]
    """:meth:`train.taxonomy.Taxonomy.to_dict` (name, labels, train_map)."""
    corpora: list[str]
    extra_train_corpora: list[str]
    split: str
    folds: int
    folds_run: list[int]
    folds_reused: list[int]
    n_files: int
    n_speakers: int
    seed: int
    feature_seconds: float
    seconds: float
    summary: CvSummary | None
    """None when no fold ran (an empty ``{}`` in the JSON)."""
    per_fold: list[FoldResult]
    config: dict[str, Any]
    """The settings the folds ran with (windows, normalisation, augment, model, training)."""

    @property
    def labels(self) -> list[str]:
        return list(self.taxonomy["labels"])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CvResult:
        return cls(
            d["protocol"], d["taxonomy"], d["corpora"], d.get("extra_train_corpora", []),
            d.get("split", "speakers"), d["folds"], d["folds_run"], d.get("folds_reused", []),
            d["n_files"], d["n_speakers"], d["seed"], d["feature_seconds"], d["seconds"],
            CvSummary.from_dict(d["summary"]),
            [FoldResult.from_dict(f) for f in d["per_fold"]], d["config"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "taxonomy": self.taxonomy, "corpora": self.corpora,
            "extra_train_corpora": self.extra_train_corpora, "split": self.split,
            "folds": self.folds, "folds_run": self.folds_run, "folds_reused": self.folds_reused,
            "n_files": self.n_files, "n_speakers": self.n_speakers, "seed": self.seed,
            "feature_seconds": self.feature_seconds, "seconds": self.seconds,
            "summary": self.summary.to_dict() if self.summary else {},
            "per_fold": [f.to_dict() for f in self.per_fold],
            "config": self.config,
        }

    def card_metrics(self) -> dict[str, Any]:
        """The CV numbers that go into a model card (compact: no histories)."""

        def r(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

        flat = self.summary.to_dict() if self.summary else {}
        return {
            "protocol": self.protocol, "corpora": self.corpora, "labels": self.labels,
            "folds": self.folds, "speakers": self.n_speakers,
            "verdict": "file level = argmax of the mean of the file's window probabilities",
            **{k: (r(v) if isinstance(v, dict) else v) for k, v in flat.items()},
            "fold_test_speakers": [f.test_speakers for f in self.per_fold],
        }
