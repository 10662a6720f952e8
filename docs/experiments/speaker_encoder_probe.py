"""Twelfth round, part two: a pretrained *speaker* encoder as a second opinion.

Throwaway experiment code (docs/experiments/LOG.md, "Twelfth round"). Resemblyzer 0.1.4 (PyPI,
Apache-2.0) bundles a GE2E speaker encoder (3-layer LSTM, 256 units, on 40 mel bands of
power, 1.6 s partials) trained for text-independent speaker verification, so unlike a
keyword-spotting embedding it is not built to encode the words. Its checkpoint is read
here without torch (the legacy pickle format) and run in numpy.

    pip download --no-deps resemblyzer==0.1.4 -d /tmp/rz
    (cd /tmp/rz && python -m zipfile -e Resemblyzer-0.1.4-py3-none-any.whl .)
    python docs/experiments/speaker_encoder_probe.py embed \
        --checkpoint /tmp/rz/resemblyzer/pretrained.pt \
        --feats /tmp/probe/feats-six.npz --out /tmp/probe/feats-six-rz.npz

writes the utterance embeddings (256 values per file, volume-normalised to -30 dBFS, no
silence trimming) next to serd's statistics from ``speech_embedding_probe.py embed``, in
the same file order, so that probe's ``fuse`` and ``sentences`` read it as they are.
``unseen`` is the CNN trained on sentence half 0 (``SERD_SENTENCE_HALF=0``) multiplied
with a regression trained on the same half, scored on the test speakers' files of both
halves.
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
from speech_embedding_probe import (  # this folder: run as a script
    SpeechEmbedding,
    half_of,
    window_fusion,
    window_stats,
)

from train.augment import telephone
from train.config import load_config
from train.corpora import load_audio
from train.pipeline import Runner
from train.voice_trunk import load_legacy_checkpoint  # the reader serd-train uses


class SpeakerEncoder:
    def __init__(self, checkpoint: Path) -> None:
        self.w = load_legacy_checkpoint(checkpoint)["model_state"]

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """(B, 160, 40) mel partials -> (B, 256) L2-normalised embeddings."""
        w = self.w
        seq = x
        h = np.zeros((len(x), 256), np.float32)
        for layer in range(3):
            wi, wh = w[f"lstm.weight_ih_l{layer}"], w[f"lstm.weight_hh_l{layer}"]
            pre = seq @ wi.T + w[f"lstm.bias_ih_l{layer}"] + w[f"lstm.bias_hh_l{layer}"]
            h = np.zeros((len(x), 256), np.float32)
            c = np.zeros((len(x), 256), np.float32)
            out = np.empty((*seq.shape[:2], 256), np.float32)
            for t in range(seq.shape[1]):
                g = pre[:, t] + h @ wh.T
                i, f = _sigmoid(g[:, :256]), _sigmoid(g[:, 256:512])
                c = f * c + i * np.tanh(g[:, 512:768])
                h = _sigmoid(g[:, 768:]) * np.tanh(c)
                out[:, t] = h
            seq = out
        e = np.maximum(h @ w["linear.weight"].T + w["linear.bias"], 0)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    @staticmethod
    def partials(wav: np.ndarray) -> np.ndarray:
        """Resemblyzer's preprocessing (no silence trimming) and 1.6 s partials, rate 1.3/s."""
        dbfs = 10 * np.log10(np.mean(wav ** 2) + 1e-12)
        if dbfs < -30:
            wav = wav * 10 ** ((-30 - dbfs) / 20)
        mel = librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160,
                                             n_mels=40).astype(np.float32).T
        n = max(len(mel), 160)
        mel = np.concatenate([mel, np.zeros((n + 160 - len(mel), 40), np.float32)])
        starts = list(range(0, max(1, n - 160 + 1), 77))
        if starts[-1] + 160 < n and (n - starts[-1] - 77) / 160 >= 0.75:
            starts.append(starts[-1] + 77)
        return np.stack([mel[s:s + 160] for s in starts])

    def utterances(self, wavs: list[np.ndarray]) -> np.ndarray:
        parts = [self.partials(w) for w in wavs]
        owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        allp = np.concatenate(parts)
        e = np.concatenate([self._embed(allp[i:i + 512]) for i in range(0, len(allp), 512)])
        u = np.stack([e[owner == i].mean(0) for i in range(len(wavs))])
        return u / np.linalg.norm(u, axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _items(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    cfg = load_config(overrides={"corpora_roots": [args.corpora], "cache_dir": args.cache,
                                 "jobs": 1})
    plan = Runner(cfg, progress=False).cv_plan("six")
    return plan, [it for it in plan.main if plan.tax.eval_label(it) is not None]


def embed(args: argparse.Namespace) -> None:
    _, items = _items(args)
    ref = np.load(args.feats)
    assert list(ref["SPK"]) == [it.speaker for it in items]
    audio = [load_audio(it.path) for it in items]
    if args.channel == "telephone":
        audio = [telephone(a) for a in audio]
    u = SpeakerEncoder(Path(args.checkpoint)).utterances(audio)
    np.savez(args.out, S=ref["S"], E=u, Y=ref["Y"], SPK=ref["SPK"])


def unseen(args: argparse.Namespace) -> None:
    plan, items = _items(args)
    h = half_of(items)
    row = {it.path: i for i, it in enumerate(items)}
    d = np.load(args.feats)
    x, y_all, spk = d["E"], d["Y"], d["SPK"]
    res: dict[tuple[int, float], list[float]] = {}
    for fold in plan.folds:
        dump = np.load(Path(args.dumps) / f"six-fold{fold.index}.npz")
        idx = np.array([row[str(p)] for p in dump["paths"]])
        train = np.isin(spk, list(fold.train) + list(fold.early_stop)) & (h == 0)
        sc = StandardScaler().fit(x[train])
        lr = LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000)
        lr.fit(sc.transform(x[train]), y_all[train])
        for k in (0, 1):
            sel = dump["has"] & (h[idx] == k)
            p = lr.predict_proba(sc.transform(x[idx[sel]]))
            for w in (1.0, 0.7, 0.5):
                logp = (w * np.log(np.clip(dump["probs"][sel], 1e-6, 1))
                        + (1 - w) * np.log(np.clip(p, 1e-6, 1)))
                res.setdefault((k, w), []).append(
                    balanced_accuracy_score(dump["y"][sel], logp.argmax(1)))
    for (k, w), v in sorted(res.items()):
        print(f"{'seen' if k == 0 else 'unseen'} sentences, CNN weight {w}: "
              f"{100 * np.mean(v):.1f} folds {np.round(100 * np.array(v), 1).tolist()}")


def windows(args: argparse.Namespace) -> None:
    """Both embeddings on the daemon's windows: the speech embedding's statistics over each
    window (as the speech probe's ``windows``) and the speaker encoder's embedding of the
    window's audio, then the speech probe's per-window regression and fusion."""
    cfg = load_config(overrides={"corpora_roots": [args.corpora], "cache_dir": args.cache,
                                 "jobs": 1})
    runner = Runner(cfg, progress=False)
    plan, items = _items(args)
    x, own = window_stats(items, runner.windows, SpeechEmbedding(Path(args.models)),
                          SpeakerEncoder(Path(args.checkpoint)).utterances)
    window_fusion(plan, items, x, own, Path(args.dumps), "six")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="../shared/corpora")
    ap.add_argument("--cache", default="~/.cache/serd/features", help="serd-train's cache")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--feats", required=True, help="feats-six.npz of speech_embedding_probe")
    e.add_argument("--out", required=True)
    e.add_argument("--channel", choices=["clean", "telephone"], default="clean",
                   help="telephone: train.augment.telephone first (pair with a telephone "
                   "--feats for the speech probe's channel command)")
    u = sub.add_parser("unseen")
    u.add_argument("--feats", required=True, help="a feats file whose E to use")
    u.add_argument("--dumps", required=True, help="dumps of the SERD_SENTENCE_HALF=0 run")
    w = sub.add_parser("windows")
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--models", required=True,
                   help="openwakeword/resources/models of the unpacked 0.5.1 wheel")
    w.add_argument("--dumps", required=True, help="SERD_DUMP folder of the patched CV run")
    args = ap.parse_args()
    {"embed": embed, "unseen": unseen, "windows": windows}[args.cmd](args)


if __name__ == "__main__":
    main()
