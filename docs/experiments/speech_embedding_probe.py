"""Twelfth round: is there emotion that serd's CNN misses in a pretrained speech embedding?

Throwaway experiment code (docs/experiments/LOG.md, "Twelfth round"); nothing in serd/ or train/
uses it.  The embedding is Google's speech_embedding (Lin et al. 2020,
arXiv:2002.01322) as re-implemented in the openWakeWord 0.5.1 wheel, which bundles it:

    pip download --no-deps openwakeword==0.5.1 -d /tmp/ow
    (cd /tmp/ow && python -m zipfile -e openwakeword-0.5.1-py3-none-any.whl .)

``embed``: for every file of a protocol, mean and standard deviation over the whole file
of (a) serd's 42 frame features and (b) the 96-d embeddings (76 mel frames of about 10
ms, one every 8), saved as ``feats-<protocol>.npz``.

``fuse``: per CV fold, a logistic regression on those statistics of the fold's training
and early-stopping speakers, alone and multiplied (weighted log-probabilities) with the
CNN's int8 file probabilities of the same test files.  The CNN's probabilities come from a
CV run with ``docs/experiments/dump-file-probs.patch`` applied and ``SERD_DUMP=<dir>``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from serd.features import FeatureParams, mfcc
from serd.gate import VadSettings
from serd.windows import windows_of
from train.augment import telephone
from train.config import load_config
from train.corpora import load_audio
from train.pipeline import CvPlan, Runner


class SpeechEmbedding:
    """openWakeWord's mel model, then the embedding model over 76-frame windows, step 8."""

    def __init__(self, models: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

        self.mel = Interpreter(model_path=str(models / "melspectrogram.tflite"), num_threads=1)
        self.emb = Interpreter(model_path=str(models / "embedding_model.tflite"), num_threads=1)

    @staticmethod
    def _run(interp: Any, x: np.ndarray) -> np.ndarray:
        interp.resize_tensor_input(0, list(x.shape), strict=True)
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).astype(np.float32)[None]
        spec = np.squeeze(self._run(self.mel, pcm)) / 10 + 2  # openWakeWord's scaling
        if spec.shape[0] < 76:
            spec = np.concatenate([spec, np.ones((76 - spec.shape[0], 32), np.float32)])
        wins = np.stack([spec[i:i + 76] for i in range(0, spec.shape[0] - 75, 8)])
        out = self._run(self.emb, wins[..., None].astype(np.float32))
        return out.reshape(len(wins), -1)


def _plan(args: argparse.Namespace) -> CvPlan:
    cfg = load_config(overrides={"corpora_roots": [args.corpora], "cache_dir": args.cache,
                                 "jobs": 1})
    return Runner(cfg, progress=False).cv_plan(args.protocol)


def _items(plan: CvPlan) -> list[Any]:
    return [it for it in plan.main if plan.tax.eval_label(it) is not None]


def sentence_halves(items: list[Any]) -> dict[str, int]:
    """``corpus:sentence`` -> 0 or 1: each corpus's sorted sentence codes, alternately
    (as ``SERD_SENTENCE_HALF`` in dump-file-probs.patch splits them)."""
    half: dict[str, int] = {}
    for corpus in sorted({it.corpus for it in items}):
        codes = sorted({it.text for it in items if it.corpus == corpus})
        half.update({f"{corpus}:{c}": j % 2 for j, c in enumerate(codes)})
    return half


def half_of(items: list[Any]) -> np.ndarray:
    """Each item's sentence half (see :func:`sentence_halves`)."""
    halves = sentence_halves(items)
    return np.array([halves[f"{it.corpus}:{it.text}"] for it in items])


def embed(args: argparse.Namespace) -> None:
    plan = _plan(args)
    model = SpeechEmbedding(Path(args.models))
    stats_serd, stats_emb, labels, speakers = [], [], [], []
    for it in _items(plan):
        audio = load_audio(it.path)
        if args.channel == "telephone":
            audio = telephone(audio)
        f, e = mfcc(audio), model(audio)
        stats_serd.append(np.concatenate([f.mean(0), f.std(0)]))
        stats_emb.append(np.concatenate([e.mean(0), e.std(0)]))
        labels.append(plan.tax.eval_label(it))
        speakers.append(it.speaker)
    suffix = "" if args.channel == "clean" else f"-{args.channel}"
    np.savez(Path(args.out) / f"feats-{args.protocol}{suffix}.npz", S=np.array(stats_serd),
             E=np.array(stats_emb), Y=np.array(labels), SPK=np.array(speakers))


def fuse(args: argparse.Namespace) -> None:
    plan = _plan(args)
    row = {it.path: i for i, it in enumerate(_items(plan))}
    d = np.load(args.feats)
    stats_serd, stats_emb, labels, speakers = d["S"], d["E"], d["Y"], d["SPK"]
    views = {"embedding": stats_emb, "serd + embedding": np.hstack([stats_serd, stats_emb])}
    res: dict[tuple[str, float], list[float]] = {}
    for fold in plan.folds:
        dump = np.load(Path(args.dumps) / f"{args.protocol}-fold{fold.index}.npz")
        has = dump["has"]
        idx = np.array([row[str(p)] for p in dump["paths"]])[has]
        cnn, y = dump["probs"][has], dump["y"][has]
        assert (labels[idx] == y).all()
        train = np.isin(speakers, list(fold.train) + list(fold.early_stop))
        for name, x in views.items():
            sc = StandardScaler().fit(x[train])
            lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
            lr.fit(sc.transform(x[train]), labels[train])
            p = lr.predict_proba(sc.transform(x[idx]))
            for w in (0.0, 0.3, 0.5, 0.7, 1.0):
                logp = w * np.log(np.clip(cnn, 1e-6, 1)) + (1 - w) * np.log(np.clip(p, 1e-6, 1))
                res.setdefault((name, w), []).append(balanced_accuracy_score(y, logp.argmax(1)))
    for (name, w), v in res.items():
        print(f"{name:17s} CNN weight {w}: {100 * np.mean(v):.1f} ± {100 * np.std(v):.1f} "
              f"folds {np.round(100 * np.array(v), 1).tolist()}")


def channel(args: argparse.Namespace) -> None:
    """Logistic regressions trained on clean statistics (with ``--train-both`` on clean and
    telephone ones), tested on clean and on telephone."""
    plan = _plan(args)
    clean, tel = np.load(args.feats), np.load(args.telephone)
    assert (clean["SPK"] == tel["SPK"]).all()
    speakers, labels = clean["SPK"], clean["Y"]
    for name, keys in (("serd", ["S"]), ("embedding", ["E"]), ("serd + embedding", ["S", "E"])):
        x_clean = np.hstack([clean[k] for k in keys])
        x_tel = np.hstack([tel[k] for k in keys])
        accs: dict[str, list[float]] = {"clean": [], "telephone": []}
        for fold in plan.folds:
            train = np.isin(speakers, list(fold.train) + list(fold.early_stop))
            test = np.isin(speakers, list(fold.test))
            x_fit, y_fit = x_clean[train], labels[train]
            if args.train_both:  # as serd's CNN: telephone renderings in training too
                x_fit = np.vstack([x_fit, x_tel[train]])
                y_fit = np.concatenate([y_fit, labels[train]])
            sc = StandardScaler().fit(x_fit)
            lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
            lr.fit(sc.transform(x_fit), y_fit)
            for tag, x in (("clean", x_clean), ("telephone", x_tel)):
                pred = lr.predict(sc.transform(x[test]))
                accs[tag].append(balanced_accuracy_score(labels[test], pred))
        c, t = 100 * np.mean(accs["clean"]), 100 * np.mean(accs["telephone"])
        print(f"{name:17s} clean {c:.1f}, telephone {t:.1f} (drop {c - t:.1f})")


def window_stats(items: list[Any], window_params: Any, speech: SpeechEmbedding,
                 extra: Callable[[list[np.ndarray]], np.ndarray] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(x, owner): for each 2 s window that the daemon classifies (default VAD,
    ``window_params``' window and hop), the speech embedding's mean and std over the
    window, and ``extra`` of the windows' audio beside them; ``owner``: the item index."""
    hop = 8 * 160  # samples between embeddings; each is centred 38 mel frames in
    stats, spans, owner = [], [], []
    for n, it in enumerate(items):
        audio = load_audio(it.path)
        emb = speech(audio)
        centre = np.arange(len(emb)) * hop + 38 * 160
        for w in windows_of(audio, FeatureParams(), window_params, VadSettings()):
            inside = (centre >= w.start_sample) & (centre < w.end_sample)
            e = emb[inside] if inside.any() else emb[[int(np.argmin(np.abs(
                centre - (w.start_sample + w.end_sample) // 2)))]]
            stats.append(np.concatenate([e.mean(0), e.std(0)]))
            if extra is not None:
                spans.append(audio[w.start_sample:w.end_sample])
            owner.append(n)
    x = np.array(stats)
    if extra is not None:
        x = np.hstack([x, extra(spans)])
    return x, np.array(owner)


def window_fusion(plan: CvPlan, items: list[Any], x: np.ndarray, own: np.ndarray,
                  dumps: Path, protocol: str) -> None:
    """Per fold, a regression on the training speakers' windows; its window probabilities
    averaged per file as the daemon averages the CNN's, then multiplied with the CNN's
    file probabilities (``dumps``: the patched CV run's)."""
    labels = np.array([plan.tax.eval_label(it) for it in items])
    speakers = np.array([it.speaker for it in items])
    row = {it.path: i for i, it in enumerate(items)}
    res: dict[float, list[float]] = {}
    for fold in plan.folds:
        dump = np.load(dumps / f"{protocol}-fold{fold.index}.npz")
        has = dump["has"]
        idx = np.array([row[str(p)] for p in dump["paths"]])[has]
        cnn, y = dump["probs"][has], dump["y"][has]
        train = np.isin(speakers[own], list(fold.train) + list(fold.early_stop))
        sc = StandardScaler().fit(x[train])
        lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
        lr.fit(sc.transform(x[train]), labels[own][train])
        pw = lr.predict_proba(sc.transform(x))
        p = np.stack([pw[own == i].mean(0) for i in idx])
        for w in (0.0, 0.3, 0.5, 0.7, 1.0):
            logp = w * np.log(np.clip(cnn, 1e-6, 1)) + (1 - w) * np.log(np.clip(p, 1e-6, 1))
            res.setdefault(w, []).append(balanced_accuracy_score(y, logp.argmax(1)))
    print(f"{len(x)} windows of {len(set(own.tolist()))} files")
    for w, v in res.items():
        print(f"windows: CNN weight {w}: {100 * np.mean(v):.1f} ± {100 * np.std(v):.1f} "
              f"folds {np.round(100 * np.array(v), 1).tolist()}")


def windows(args: argparse.Namespace) -> None:
    """The probe on the daemon's windows (see :func:`window_stats`, :func:`window_fusion`)."""
    cfg = load_config(overrides={"corpora_roots": [args.corpora], "cache_dir": args.cache,
                                 "jobs": 1})
    runner = Runner(cfg, progress=False)
    plan = runner.cv_plan(args.protocol)
    items = _items(plan)
    x, own = window_stats(items, runner.windows, SpeechEmbedding(Path(args.models)))
    window_fusion(plan, items, x, own, Path(args.dumps), args.protocol)


def sentences(args: argparse.Namespace) -> None:
    """Does a regression lean on which sentence is spoken?  Each corpus's sentences are
    split into two halves; per speaker fold and half, a regression trained on the training
    speakers' files of that half is tested on the test speakers' files of the same half
    (seen sentences) and of the other half (unseen sentences)."""
    plan = _plan(args)
    items = _items(plan)
    d = np.load(args.feats)
    labels, speakers = d["Y"], d["SPK"]
    half = half_of(items)
    for name, keys in (("serd", ["S"]), ("embedding", ["E"]), ("serd + embedding", ["S", "E"])):
        x = np.hstack([d[k] for k in keys])
        seen, unseen = [], []
        for fold in plan.folds:
            test_spk = np.isin(speakers, list(fold.test))
            train_spk = np.isin(speakers, list(fold.train) + list(fold.early_stop))
            for h in (0, 1):
                train = train_spk & (half == h)
                sc = StandardScaler().fit(x[train])
                lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
                lr.fit(sc.transform(x[train]), labels[train])
                for out, sel in ((seen, test_spk & (half == h)), (unseen, test_spk & (half != h))):
                    pred = lr.predict(sc.transform(x[sel]))
                    out.append(balanced_accuracy_score(labels[sel], pred))
        a, b = 100 * np.mean(seen), 100 * np.mean(unseen)
        print(f"{name:17s} seen sentences {a:.1f}, unseen sentences {b:.1f} (drop {a - b:.1f})")


def cnn_sentences(args: argparse.Namespace) -> None:
    """The CNN's int8 file verdicts on the test speakers' files of sentence half 0 and 1:
    from a CV run trained on half 0 only (``--dumps``: the patched run with
    ``SERD_SENTENCE_HALF=0``) and, as the control for how hard each half is, from the
    normal run trained on every sentence (``--all-dumps``)."""
    plan = _plan(args)
    items = _items(plan)
    half = dict(zip([it.path for it in items], half_of(items).tolist(), strict=True))
    for tag, folder in (("trained on half 0", args.dumps), ("trained on all", args.all_dumps)):
        accs: dict[int, list[float]] = {0: [], 1: []}
        for fold in plan.folds:
            dump = np.load(Path(folder) / f"{args.protocol}-fold{fold.index}.npz")
            has = dump["has"]
            h = np.array([half[str(p)] for p in dump["paths"]])
            for k in (0, 1):
                sel = has & (h == k)
                accs[k].append(balanced_accuracy_score(dump["y"][sel],
                                                       dump["probs"][sel].argmax(1)))
        a, b = 100 * np.mean(accs[0]), 100 * np.mean(accs[1])
        print(f"CNN {tag:17s}: half 0 {a:.1f}, half 1 {b:.1f} (difference {a - b:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="../shared/corpora")
    ap.add_argument("--cache", default="~/.cache/serd/features", help="serd-train's cache")
    ap.add_argument("--protocol", default="six")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--models", required=True,
                   help="openwakeword/resources/models of the unpacked 0.5.1 wheel")
    e.add_argument("--out", default=".")
    e.add_argument("--channel", choices=["clean", "telephone"], default="clean",
                   help="telephone: train.augment.telephone before both front-ends")
    f = sub.add_parser("fuse")
    f.add_argument("--feats", required=True, help="feats-<protocol>.npz written by embed")
    f.add_argument("--dumps", required=True, help="SERD_DUMP folder of the patched CV run")
    c = sub.add_parser("channel")
    c.add_argument("--feats", required=True, help="feats-<protocol>.npz (clean)")
    c.add_argument("--telephone", required=True, help="feats-<protocol>-telephone.npz")
    c.add_argument("--train-both", action="store_true",
                   help="train on the clean and the telephone statistics")
    w = sub.add_parser("windows")
    w.add_argument("--models", required=True,
                   help="openwakeword/resources/models of the unpacked 0.5.1 wheel")
    w.add_argument("--dumps", required=True, help="SERD_DUMP folder of the patched CV run")
    t = sub.add_parser("sentences")
    t.add_argument("--feats", required=True, help="feats-<protocol>.npz written by embed")
    n = sub.add_parser("cnn-sentences")
    n.add_argument("--dumps", required=True, help="dumps of the SERD_SENTENCE_HALF=0 run")
    n.add_argument("--all-dumps", required=True, help="dumps of the normal run")
    args = ap.parse_args()
    {"embed": embed, "fuse": fuse, "channel": channel, "windows": windows,
     "sentences": sentences, "cnn-sentences": cnn_sentences}[args.cmd](args)


if __name__ == "__main__":
    main()
