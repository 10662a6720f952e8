"""Thirteenth round: which layer of the GE2E speaker encoder carries emotion?

Throwaway experiment code (docs/experiments/LOG.md, "Thirteenth round"); it led to serd's voice
branch (serd/voice.py), which is what the README's figures measure.  It extends
``speaker_encoder_probe.py`` (run from this folder, with that probe's wheel unpacked):

``layers``: per file of the six-class protocol, the mean and standard deviation over time
of each LSTM layer's outputs (M0/S0, M1/S1, M2/S2; 256 each), averaged over Resemblyzer's
1.6 s partials, beside the final embedding (E) and serd's statistics, in the file order
of ``speech_embedding_probe.py embed``'s ``feats-six.npz``.

``fuse``: per CV fold, a logistic regression (C=0.01, balanced) on the training speakers'
files for each named view (``M1+S1`` etc.), alone and multiplied with the CNN's int8 file
probabilities (CNN log weight 0.5 and 0.7), from ``dump-file-probs.patch`` dumps.

``checks``: the same regressions on unseen sentences (trained on one half of each corpus's
sentences, tested on the other) and across corpora (trained on one corpus, tested on the
other, with the cross_corpus CNN dumps).

``windows``: per daemon window (default VAD, 2 s, hop 0.5 s), layers 1-2 run from a zero
state over the window's 40 mel bands (librosa, centred frames, window level lifted to
-30 dBFS), clean and through the telephone channel; then per fold a regression on the
training speakers' windows (clean, or clean + telephone) whose window probabilities are
averaged per file and multiplied with the CNN's file probabilities.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from speaker_encoder_probe import SpeakerEncoder, _items, _sigmoid
from speech_embedding_probe import half_of

from serd.features import FeatureParams
from serd.gate import VadSettings
from serd.windows import windows_of
from train.augment import telephone
from train.config import load_config
from train.corpora import load_audio
from train.pipeline import Runner


def lstm_layers(w: dict[str, np.ndarray], x: np.ndarray, n_layers: int = 3
                ) -> list[np.ndarray]:
    """(B, T, 40) -> each layer's (B, T, 256) outputs, from a zero state."""
    seq, outs = x, []
    for k in range(n_layers):
        pre = seq @ w[f"lstm.weight_ih_l{k}"].T + w[f"lstm.bias_ih_l{k}"] + w[f"lstm.bias_hh_l{k}"]
        wh = w[f"lstm.weight_hh_l{k}"].T
        h = np.zeros((len(x), 256), np.float32)
        c = np.zeros((len(x), 256), np.float32)
        out = np.empty((*seq.shape[:2], 256), np.float32)
        for t in range(seq.shape[1]):
            g = pre[:, t] + h @ wh
            c = _sigmoid(g[:, 256:512]) * c + _sigmoid(g[:, :256]) * np.tanh(g[:, 512:768])
            h = _sigmoid(g[:, 768:]) * np.tanh(c)
            out[:, t] = h
        seq = out
        outs.append(out)
    return outs


def _lr(x: np.ndarray, y: np.ndarray) -> Any:
    sc = StandardScaler().fit(x)
    lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
    lr.fit(sc.transform(x), y)
    return lambda z: lr.predict_proba(sc.transform(z))


def _fused(cnn: np.ndarray, p: np.ndarray, w: float) -> np.ndarray:
    return w * np.log(np.clip(cnn, 1e-6, 1)) + (1 - w) * np.log(np.clip(p, 1e-6, 1))


def layers(args: argparse.Namespace) -> None:
    _, items = _items(args)
    ref = np.load(args.feats)
    assert list(ref["SPK"]) == [it.speaker for it in items]
    enc = SpeakerEncoder(Path(args.checkpoint))
    parts = [enc.partials(load_audio(it.path)) for it in items]
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    allp = np.concatenate(parts)
    stats: dict[str, list[np.ndarray]] = {f"{s}{k}": [] for s in "MS" for k in range(3)}
    for i in range(0, len(allp), 512):
        for k, out in enumerate(lstm_layers(enc.w, allp[i:i + 512])):
            stats[f"M{k}"].append(out.mean(1))
            stats[f"S{k}"].append(out.std(1))
    res = {}
    for key, v in stats.items():
        a = np.concatenate(v)
        res[key] = np.stack([a[owner == j].mean(0) for j in range(len(items))])
    np.savez(args.out, **res, E=ref["E"], S_serd=ref["S"], Y=ref["Y"],
             SPK=ref["SPK"])


def fuse(args: argparse.Namespace) -> None:
    plan, items = _items(args)
    row = {it.path: i for i, it in enumerate(items)}
    d = np.load(args.layers)
    labels, speakers = d["Y"], d["SPK"]
    for view in args.views:
        x = np.hstack([d[k] for k in view.split("+")])
        res: dict[float, list[float]] = {}
        for fold in plan.folds:
            dump = np.load(Path(args.dumps) / f"six-fold{fold.index}.npz")
            has = dump["has"]
            idx = np.array([row[str(p)] for p in dump["paths"]])[has]
            train = np.isin(speakers, list(fold.train) + list(fold.early_stop))
            p = _lr(x[train], labels[train])(x[idx])
            for w in (0.0, 0.5, 0.7):
                res.setdefault(w, []).append(balanced_accuracy_score(
                    dump["y"][has], _fused(dump["probs"][has], p, w).argmax(1)))
        print(f"{view:20s} " + "  ".join(f"CNN weight {w}: {100 * np.mean(v):.1f} ± "
                                          f"{100 * np.std(v):.1f}" for w, v in res.items()))


def checks(args: argparse.Namespace) -> None:
    plan, items = _items(args)
    row = {it.path: i for i, it in enumerate(items)}
    d = np.load(args.layers)
    labels, speakers = d["Y"], d["SPK"]
    corpus = np.array([it.corpus for it in items])
    half = half_of(items)
    for view in args.views:
        x = np.hstack([d[k] for k in view.split("+")])
        seen, unseen = [], []
        for fold in plan.folds:
            test = np.isin(speakers, list(fold.test))
            train = np.isin(speakers, list(fold.train) + list(fold.early_stop))
            for h in (0, 1):
                pr = _lr(x[train & (half == h)], labels[train & (half == h)])
                for out, sel in ((seen, test & (half == h)), (unseen, test & (half != h))):
                    out.append(balanced_accuracy_score(labels[sel], pr(x[sel]).argmax(1)))
        msg = (f"{view:14s} sentences seen {100 * np.mean(seen):.1f}, unseen "
               f"{100 * np.mean(unseen):.1f} | across corpora:")
        for k in (0, 1):
            dump = np.load(Path(args.dumps) / f"cross_corpus-fold{k}.npz")
            has = dump["has"]
            idx = np.array([row[str(p)] for p in dump["paths"]])[has]
            tc = corpus[idx[0]]
            p = _lr(x[corpus != tc], labels[corpus != tc])(x[idx])
            for w in (0.0, 0.5, 1.0):
                acc = balanced_accuracy_score(dump["y"][has],
                                              _fused(dump["probs"][has], p, w).argmax(1))
                msg += f" {tc} CNN weight {w} {100 * acc:.1f}"
        print(msg)


def windows(args: argparse.Namespace) -> None:
    cfg = load_config(overrides={"corpora_roots": [args.corpora], "cache_dir": args.cache,
                                 "jobs": 1})
    runner = Runner(cfg, progress=False)
    plan, items = _items(args)
    w = SpeakerEncoder(Path(args.checkpoint)).w
    labels = np.array([plan.tax.eval_label(it) for it in items])
    speakers = np.array([it.speaker for it in items])
    row = {it.path: i for i, it in enumerate(items)}
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for chan in ("clean", "telephone"):
        mels, owner = [], []
        for n, it in enumerate(items):
            audio = load_audio(it.path)
            if chan == "telephone":
                audio = telephone(audio)
            for win in windows_of(audio, FeatureParams(), runner.windows, VadSettings()):
                a = audio[win.start_sample:win.end_sample]
                dbfs = 10 * np.log10(np.mean(a ** 2) + 1e-12)
                if dbfs < -30:
                    a = a * 10 ** ((-30 - dbfs) / 20)
                mels.append(librosa.feature.melspectrogram(
                    y=a, sr=16000, n_fft=400, hop_length=160, n_mels=40).astype(np.float32).T)
                owner.append(n)
        x = np.zeros((len(mels), 512), np.float32)
        lens = np.array([len(m) for m in mels])
        for n_frames in np.unique(lens):
            sel = np.flatnonzero(lens == n_frames)
            out = lstm_layers(w, np.stack([mels[j] for j in sel]), 2)[1]
            x[sel] = np.hstack([out.mean(1), out.std(1)])
        feats[chan] = (x, np.array(owner))
    (xc, oc), (xt, ot) = feats["clean"], feats["telephone"]
    for mode in ("clean", "clean + telephone"):
        res: dict[tuple[str, float], list[float]] = {}
        for fold in plan.folds:
            dump = np.load(Path(args.dumps) / f"six-fold{fold.index}.npz")
            has = dump["has"]
            idx = np.array([row[str(p)] for p in dump["paths"]])[has]
            keep = list(fold.train) + list(fold.early_stop)
            trc, trt = np.isin(speakers[oc], keep), np.isin(speakers[ot], keep)
            xf, yf = xc[trc], labels[oc][trc]
            if mode != "clean":
                xf, yf = np.vstack([xf, xt[trt]]), np.concatenate([yf, labels[ot][trt]])
            pr = _lr(xf, yf)
            for chan, x, ow in (("clean", xc, oc), ("telephone", xt, ot)):
                pw = pr(x)
                p = np.stack([pw[ow == i].mean(0) if (ow == i).any() else np.full(6, 1 / 6)
                              for i in idx])
                for wt in (0.0, 0.5):
                    res.setdefault((chan, wt), []).append(balanced_accuracy_score(
                        dump["y"][has], _fused(dump["probs"][has], p, wt).argmax(1)))
        for (chan, wt), v in res.items():
            print(f"trained on {mode}, tested {chan}, CNN weight {wt}: "
                  f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="../shared/corpora")
    ap.add_argument("--cache", default="~/.cache/serd/features", help="serd-train's cache")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("layers")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--feats", required=True, help="feats-six-rz.npz of speaker_encoder_probe")
    e.add_argument("--out", required=True)
    for name in ("fuse", "checks"):
        f = sub.add_parser(name)
        f.add_argument("--layers", required=True, help="the npz written by layers")
        f.add_argument("--dumps", required=True, help="SERD_DUMP folder of the patched CV runs")
        f.add_argument("views", nargs="+", help="e.g. E M1 M1+S1 M0+S0+M1+S1")
    w = sub.add_parser("windows")
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--dumps", required=True)
    args = ap.parse_args()
    {"layers": layers, "fuse": fuse, "checks": checks, "windows": windows}[args.cmd](args)


if __name__ == "__main__":
    main()
