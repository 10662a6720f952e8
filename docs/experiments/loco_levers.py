"""Calibration and per-line prior adaptation on a leave-one-corpus-out CV, without retraining.

Reads the file probabilities each ``cross_corpus`` fold leaves beside its record
(``<cache>/folds/cross_corpus-fold<k>-<key>.probs.npz``, written by
``train.evaluation.evaluate``) and prints, per left-out corpus, for the device's verdict
(``fused_int8``, clean):

* as trained: balanced accuracy over the labels the corpus has, distress balanced
  accuracy (angry or fearful against the rest), ECE (10 bins), share of files whose top
  probability reaches serd's decision threshold (0.35);
* temperature scaling: one temperature T per fold, fitted (least file-level NLL) on the
  fold's *early-stopping speakers* (training corpora only), applied as p^(1/T)
  renormalised to the file verdict of the left-out corpus;
* prior re-estimation per line (Saerens, Latinne & Decaestecker 2002): the class priors of
  the line's recent utterances are re-estimated by EM over the last ``--window``
  utterances before each one (causal: an utterance never informs its own verdict), and
  the verdict is the posterior re-weighted by those priors over the training priors
  (uniform: training is class-weighted).  Measured on a realistic stream: files of the
  left-out corpus drawn so that ``--neutral`` of them are neutral and the rest spread
  evenly over its other labels, in random order (many speakers interleaved), and scored
  over every file of the stream (balanced accuracy and accuracy: the stream is not
  balanced), beside the same stream without adaptation.

    python docs/experiments/loco_levers.py CACHE_DIR [--window 100] [--neutral 0.6]

Choose between levers on these figures, not on the within-corpus CV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.evaluate import expected_calibration_error, scores, verdict_stats

THRESHOLD = 0.35


def temper(p: np.ndarray, t: float) -> np.ndarray:
    q = np.exp(np.log(np.clip(p, 1e-7, 1.0)) / t)
    return q / q.sum(1, keepdims=True)


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    grid = np.exp(np.linspace(np.log(0.25), np.log(6.0), 200))
    nll = [-np.log(np.clip(temper(p, t)[np.arange(y.size), y], 1e-7, 1)).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def em_priors(p: np.ndarray, iters: int = 20) -> np.ndarray:
    """Saerens et al. 2002: priors of the unlabelled ``p`` (posteriors under uniform
    training priors)."""
    k = p.shape[1]
    pi = np.full(k, 1.0 / k)
    for _ in range(iters):
        q = p * pi * k
        q /= q.sum(1, keepdims=True)
        pi = np.clip(q.mean(0), 1e-4, None)
        pi /= pi.sum()
    return pi


def stream(y: np.ndarray, present: list[int], neutral: float, rng: np.random.Generator
           ) -> np.ndarray:
    """Indices of a stream with ``neutral`` share of neutral files (label 0)."""
    others = [c for c in present if c != 0]
    by = {c: rng.permutation(np.flatnonzero(y == c)) for c in present}
    n_neutral = len(by.get(0, []))
    # as many files as the classes allow, neutral at its share
    n_other = min(len(by[c]) for c in others) if others else 0
    if 0 in by and neutral < 1:
        n_other = min(n_other, int(n_neutral * (1 - neutral) / neutral / max(len(others), 1)))
    n_n = round(n_other * len(others) * neutral / (1 - neutral)) if 0 in by else 0
    parts = ([by[0][:n_n]] if 0 in by else []) + [by[c][:n_other] for c in others]
    idx = np.concatenate(parts)
    return rng.permutation(idx)


def adapted(p: np.ndarray, window: int) -> np.ndarray:
    out = p.copy()
    k = p.shape[1]
    for t in range(1, len(p)):
        pi = em_priors(p[max(0, t - window):t])
        q = p[t] * pi * k
        out[t] = q / q.sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--neutral", type=float, default=0.6)
    ap.add_argument("--kind", default="fused_int8")
    ap.add_argument("--glob", default="cross_corpus-fold*.probs.npz")
    args = ap.parse_args()
    rows = []
    for path in sorted((Path(args.cache) / "folds").glob(args.glob)):
        d = np.load(path)
        labels = [str(x) for x in d["labels"]]
        has = d["clean_has"]
        p, y = d[f"clean_{args.kind}"][has], d["y"][has]
        corpus = str(d["corpus"][0])
        present = sorted(set(y.tolist()))
        v = verdict_stats(p, y, labels, THRESHOLD)
        bacc = scores(y, p.argmax(1), len(labels))["balanced_accuracy"]
        t = fit_temperature(d["calib_fused_int8"][d["calib_has"]], d["calib_y"][d["calib_has"]])
        pt = temper(p, t)
        vt = verdict_stats(pt, y, labels, THRESHOLD)
        rng = np.random.default_rng(0)
        s = stream(y, present, args.neutral, rng)
        ps, ys = pt[s], y[s]
        pa = adapted(ps, args.window)
        base = scores(ys, ps.argmax(1), len(labels))
        adap = scores(ys, pa.argmax(1), len(labels))
        whole = scores(y, (pt * em_priors(pt) * len(labels)).argmax(1), len(labels))
        rows.append((corpus, bacc, v.distress_balanced_accuracy, v.ece, v.verdict_share, t,
                     vt.ece, vt.verdict_share, len(s), base["balanced_accuracy"],
                     adap["balanced_accuracy"], base["accuracy"], adap["accuracy"],
                     whole["balanced_accuracy"],
                     expected_calibration_error(pa, ys)))
    head = ("corpus", "bacc", "distress", "ECE", "share", "T", "ECE(T)", "share(T)",
            "stream", "s.bacc", "s.bacc+EM", "s.acc", "s.acc+EM", "bacc+EM(all)", "s.ECE+EM")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in r))
    if rows:
        m = np.mean([[x for x in r[1:] if not isinstance(x, str)] for r in rows], axis=0)
        print("mean | " + " | ".join(f"{x:.3f}" for x in m))


if __name__ == "__main__":
    main()
