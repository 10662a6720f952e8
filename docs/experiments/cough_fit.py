"""Fit and score the cough check on cough_probe.py's outputs (docs/gate.md, sixth round).

    python docs/experiments/cough_fit.py SPEECH_TRAIN.npz COUGH_TRAIN.npz \
        [--test NAME=FILE.npz ...] [--out HEAD.npz] [--C 0.1]

Training rows: every chunk from a segment's confirmation on (speech 0, cough 1),
class-balanced.  A segment *opens* under threshold t if some row of it reads below t;
a clip is *found* if one of its segments opens.  Printed per test set and threshold:
the share of segments and of clips that open.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from serd.speechcheck import COUGH_FEATURES, cough_features

THRESHOLDS = (0.3, 0.4, 0.5, 0.65, 0.8)


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def pool(d: dict[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Rows from each segment's confirming chunk on: the check's input there, pooled over
    the segment so far (``window`` 0) or over its last ``window`` chunks."""
    x = d["x"].astype(np.float32)
    seg = d["seg"]
    out_x, keep = [], []
    bounds = np.flatnonzero(np.diff(seg)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(seg)], strict=True):
        s = x[lo:hi]
        n = np.arange(1, len(s) + 1)[:, None]
        if window <= 0:
            mean = np.cumsum(s, 0) / n
            peak = np.maximum.accumulate(s, 0)
        else:
            c = np.cumsum(np.vstack([np.zeros((1, s.shape[1]), np.float32), s]), 0)
            lo_i = np.maximum(np.arange(len(s)) + 1 - window, 0)
            mean = (c[1:] - c[lo_i]) / (np.arange(1, len(s) + 1) - lo_i)[:, None]
            peak = np.stack([s[a : i + 1].max(0) for i, a in enumerate(lo_i)])
        out_x.append(cough_features(mean, peak))
        keep.append(np.arange(lo, hi))
    idx = np.concatenate(keep) if keep else np.zeros(0, int)
    rows = d["offset"][idx] >= 0
    return {"x": np.concatenate(out_x)[rows] if out_x else np.zeros((0, COUGH_FEATURES), np.float32),
            "seg": seg[idx][rows], "clip": d["clip"][idx][rows],
            "offset": d["offset"][idx][rows], "segments": d["segments"], "paths": d["paths"]}


def rates(p: np.ndarray, d: dict[str, np.ndarray], t: float, max_offset: int) -> tuple:
    keep = d["offset"] <= max_offset
    seg, clip = d["seg"][keep], d["clip"][keep]
    ok = p[keep] < t
    nseg = int(d["segments"].sum())
    seg_open = np.zeros(nseg, bool)
    np.logical_or.at(seg_open, seg, ok)
    clips_with = np.unique(d["clip"])
    clip_open = np.zeros(len(d["paths"]), bool)
    np.logical_or.at(clip_open, clip, ok)
    return seg_open.mean(), clip_open[clips_with].mean(), int(clip_open[clips_with].sum()), \
        len(clips_with)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("speech")
    ap.add_argument("cough")
    ap.add_argument("--test", nargs="*", default=[])
    ap.add_argument("--out")
    ap.add_argument("--C", type=float, default=0.1)
    ap.add_argument("--max-offset", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=0, help="MLP hidden units (0: logistic)")
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--window", type=int, default=0, help="chunks pooled (0: since start)")
    a = ap.parse_args()
    s, c = pool(load(a.speech), a.window), pool(load(a.cough), a.window)
    s = {k: v[s["offset"] <= a.max_offset] if k in ("x", "seg", "clip", "offset") else v
         for k, v in s.items()}
    c = {k: v[c["offset"] <= a.max_offset] if k in ("x", "seg", "clip", "offset") else v
         for k, v in c.items()}
    xs, xc = s["x"], c["x"]
    x = np.concatenate([xs, xc])
    y = np.concatenate([np.zeros(len(xs)), np.ones(len(xc))])
    mu, sd = x.mean(0), x.std(0) + 1e-3
    w = np.concatenate([np.full(len(xs), 0.5 / len(xs)), np.full(len(xc), 0.5 / len(xc))])
    if a.hidden:
        # MLPClassifier takes no sample weights: balance by drawing as many speech rows
        # as there are cough rows.
        pick = np.random.default_rng(0).choice(len(xs), min(len(xs), len(xc)), replace=False)
        xb, yb = np.concatenate([xs[pick], xc]), np.r_[np.zeros(len(pick)), np.ones(len(xc))]
        clf = MLPClassifier((a.hidden,), alpha=a.alpha, early_stopping=True, max_iter=300,
                            random_state=0)
        clf.fit((xb - mu) / sd, yb)
    else:
        clf = LogisticRegression(C=a.C, max_iter=2000)
        clf.fit((x - mu) / sd, y, sample_weight=w * len(x))
    print(f"trained on {len(xs)} speech rows, {len(xc)} cough rows; C {a.C}, "
          f"hidden {a.hidden}, alpha {a.alpha}")
    sets = [("speech-train", s), ("cough-train", c)] + [
        (t.split("=")[0], pool(load(t.split("=")[1]), a.window)) for t in a.test]
    for name, d in sets:
        if not len(d["x"]):
            print(name, "| no segment opened")
            continue
        p = clf.predict_proba((d["x"] - mu) / sd)[:, 1]
        row = []
        for t in THRESHOLDS:
            so, co, k, n = rates(p, d, t, a.max_offset)
            row.append(f"{t}: seg {so:.4f} clip {co:.4f} ({n - k} of {n} lost)")
        print(name, "|", " | ".join(row))
    if a.out and (a.hidden or a.window):
        # serd.speechcheck.CoughCheck reads a logistic head on the pooling since the start.
        raise SystemExit("--out: the gate reads only logistic heads with --window 0")
    if a.out:
        np.savez(a.out, mean=mu.astype(np.float32), scale=sd.astype(np.float32),
                 coef=clf.coef_[0].astype(np.float32),
                 intercept=np.float32(clf.intercept_[0]))


if __name__ == "__main__":
    main()
