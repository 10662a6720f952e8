"""The compact CNN and its training loop.

Input: one normalised window (200 frames x 42: 40 MFCCs, voicing, log-F0).  Each member
CNN runs 1-D convolutions over time with the coefficients as channels (cheap on a Pi:
every op is a small matrix product), BatchNorm (folded into the convolutions at export),
ReLU, max pooling, then pooling over time (mean and standard deviation, or mean and max),
dropout and a dense softmax.  With ``model.members`` > 1 the exported model averages the
members' probabilities; softmax and average stay inside the model, so the int8 file
outputs probabilities.

Training: each epoch draws, per training file, one of its cached renderings (the clean
one or an augmented copy), applies SpecAugment-style time/coefficient masks and mixup in
numpy, and weights classes to balance them.  After each epoch the held-out early-stopping
speakers are scored (file-level balanced accuracy, the daemon's mean-of-window-probs
verdict).  The selection score (``training.select``) is by default the file-level balanced
accuracy averaged over the last ``smooth_epochs`` epochs: on a handful of held-out
speakers the per-epoch accuracy jumps by several points, and the class-balanced log-loss
(``loss``) rises from over-confidence long before accuracy stops improving.  The best
epoch's weights are kept; training stops after ``patience`` epochs without improvement or
at the end of the cosine learning-rate schedule.  Epochs before ``min_epochs`` are never
picked (with ~2 held-out RAVDESS actors a lucky early epoch otherwise wins now and then,
while the learning rate is still high).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
from tqdm import tqdm

from train.config import ModelConfig, TrainingConfig
from train.evaluate import file_probs, scores

_LOGGER = logging.getLogger(__name__)


def _std_from_var(v: Any) -> Any:
    # relu: E[x^2] - E[x]^2 can round below zero; the epsilon keeps sqrt's gradient finite.
    return keras.ops.sqrt(keras.ops.relu(v) + 1e-4)


def _member(inp: Any, n_labels: int, cfg: ModelConfig, tag: str) -> Any:
    """One CNN from the input to its softmax; ``tag`` prefixes layer names (ensembles)."""
    x = inp
    for i, (f, k, p) in enumerate(zip(cfg.filters, cfg.kernels, cfg.pool, strict=True)):
        x = keras.layers.Conv1D(f, k, padding="same", use_bias=False, name=f"{tag}conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{tag}bn{i}")(x)
        x = keras.layers.ReLU(name=f"{tag}relu{i}")(x)
        if p > 1:
            x = keras.layers.MaxPooling1D(p, name=f"{tag}pool{i}")(x)
    avg = keras.layers.GlobalAveragePooling1D(name=f"{tag}gap")(x)
    pooling = cfg.pooling
    if pooling == "mean_std":
        # Statistics pooling (as in x-vectors): how much each learned feature varies over
        # the window, e.g. pitch and energy movement, next to its average.
        sq = keras.layers.GlobalAveragePooling1D(name=f"{tag}gap_sq")(
            keras.layers.Multiply(name=f"{tag}square")([x, x]))
        var = keras.layers.Subtract(name=f"{tag}var")(
            [sq, keras.layers.Multiply(name=f"{tag}mean_sq")([avg, avg])])
        spread = keras.layers.Lambda(_std_from_var, name=f"{tag}std")(var)
        x = keras.layers.Concatenate(name=f"{tag}pooled")([avg, spread])
    elif pooling == "mean_max":
        mx = keras.layers.GlobalMaxPooling1D(name=f"{tag}gmp")(x)
        x = keras.layers.Concatenate(name=f"{tag}pooled")([avg, mx])
    else:
        raise ValueError(f"model.pooling must be mean_max or mean_std, not {pooling!r}")
    x = keras.layers.Dropout(cfg.dropout, name=f"{tag}dropout")(x)
    return keras.layers.Dense(n_labels, activation="softmax", name=f"{tag}probs")(x)


def build_models(n_labels: int, cfg: ModelConfig, frames: int = 200, coeffs: int = 40,
                 batch_size: int | None = None) -> tuple[keras.Model, keras.Model]:
    """(training model, inference model), sharing their layers.

    With ``cfg.members`` = 1 both are the same single CNN.  With more, the members are
    independent CNNs on the same input: the training model has one output per member (each
    trained on its own loss, so they do not co-adapt), the inference model outputs the mean
    of their probabilities, in one int8 file.  Averaging independently initialised members
    cancels much of the run-to-run noise that a single small model has on a few speakers.
    """
    inp = keras.Input((frames, coeffs), batch_size=batch_size, name="mfcc")
    k = cfg.members
    if k < 1:
        raise ValueError("model.members must be >= 1")
    if k == 1:
        model = keras.Model(inp, _member(inp, n_labels, cfg, ""), name="serd_cnn")
        return model, model
    outs = [_member(inp, n_labels, cfg, f"m{j}_") for j in range(k)]
    train = keras.Model(inp, outs, name="serd_cnn_members")
    mean = keras.layers.Average(name="probs")(outs)
    return train, keras.Model(inp, mean, name="serd_cnn_ensemble")


def build_model(n_labels: int, cfg: ModelConfig, frames: int = 200, coeffs: int = 40,
                batch_size: int | None = None) -> keras.Model:
    """The inference model (what is exported): see :func:`build_models`."""
    return build_models(n_labels, cfg, frames, coeffs, batch_size)[1]


@dataclass
class TrainPool:
    """Normalised training windows of every rendering: x[i] is a window of file[i], copy[i]."""

    x: npt.NDArray[np.floating]
    y: npt.NDArray[np.int64]
    file: npt.NDArray[np.int64]
    copy: npt.NDArray[np.int64]
    n_copies: int
    group: npt.NDArray[np.int64] | None = None
    """The corpus (an index) of each window, for ``training.corpus_balance``."""

    def epoch_indices(self, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """One rendering per file, shuffled."""
        n_files = int(self.file.max()) + 1 if self.file.size else 0
        choice = rng.integers(0, self.n_copies, size=n_files)
        idx = np.flatnonzero(self.copy == choice[self.file])
        return rng.permutation(idx)


@dataclass
class EvalSet:
    """Normalised windows of labelled files: x[i] belongs to file[i] (0..n_files-1)."""

    x: npt.NDArray[np.float32]
    file: npt.NDArray[np.int64]
    y_file: npt.NDArray[np.int64]


def spec_augment(x: npt.NDArray[np.float32], cfg: TrainingConfig,
                 rng: np.random.Generator) -> None:
    """In-place time and coefficient masks (masked values set to 0 = the window mean)."""
    n, t, d = map(int, x.shape)
    for _ in range(cfg.time_masks):
        w = rng.integers(0, cfg.time_mask_frames + 1, size=n)
        s = rng.integers(0, t, size=n)
        ar = np.arange(t)[None, :]
        mask = (ar >= s[:, None]) & (ar < (s + w)[:, None])
        x[mask] = 0.0
    for _ in range(cfg.coef_masks):
        w = rng.integers(0, cfg.coef_mask_width + 1, size=n)
        s = rng.integers(1, d, size=n)  # never mask c0 entirely: keep the energy contour
        ar = np.arange(d)[None, :]
        mask = (ar >= s[:, None]) & (ar < (s + w)[:, None])
        x.transpose(0, 2, 1)[mask] = 0.0


def class_weights(y: npt.NDArray[np.int64], n_labels: int) -> npt.NDArray[np.float32]:
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_labels * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def corpus_class_weights(y: npt.NDArray[np.int64], group: npt.NDArray[np.int64],
                         n_labels: int) -> npt.NDArray[np.float32]:
    """Per-window weights (mean 1) that give every class present the same total weight and
    split a class's weight equally between the corpora that have it."""
    n_groups = int(group.max()) + 1 if group.size else 0
    cell = group * n_labels + y
    counts = np.bincount(cell, minlength=n_groups * n_labels).astype(np.float64)
    counts = counts.reshape(n_groups, n_labels)
    corpora_per_class = (counts > 0).sum(0)
    classes = int(np.count_nonzero(corpora_per_class))
    share = np.where(counts > 0, 1.0 / (classes * np.maximum(corpora_per_class, 1)
                                        * np.maximum(counts, 1)), 0.0)
    w = share.ravel()[cell] * y.size
    return w.astype(np.float32)


def predict(
    model: keras.Model, x: npt.NDArray[np.floating], batch: int = 512
) -> npt.NDArray[np.float32]:
    out = []
    for i in range(0, len(x), batch):
        out.append(np.asarray(model(np.asarray(x[i : i + batch], np.float32), training=False)))
    if not out:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.concatenate(out).astype(np.float32)


def evaluate_set(model: keras.Model, ev: EvalSet, n_labels: int) -> dict[str, Any]:
    """File-level scores on ``ev`` plus ``balanced_log_loss``: the cross-entropy of the file
    verdicts, each class weighted equally (smooth, unlike accuracy, on a few speakers)."""
    probs = predict(model, ev.x)
    fp, has = file_probs(probs, ev.file, len(ev.y_file))
    out = scores(ev.y_file[has], fp[has].argmax(1), n_labels)
    y = ev.y_file[has]
    nll = -np.log(np.clip(fp[has][np.arange(y.size), y], 1e-6, 1.0))
    per_class = [nll[y == c].mean() for c in range(n_labels) if np.any(y == c)]
    out["balanced_log_loss"] = float(np.mean(per_class)) if per_class else float("inf")
    return out


def train_model(pool: TrainPool, val: EvalSet, n_labels: int, model_cfg: ModelConfig,
                cfg: TrainingConfig, *, seed: int, progress: bool = True,
                desc: str = "train") -> tuple[keras.Model, list[dict[str, Any]]]:
    """Train with early stopping on ``val``; returns the best model and per-epoch history."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    trainer, model = build_models(n_labels, model_cfg, pool.x.shape[1], pool.x.shape[2])
    members = len(trainer.outputs)
    epochs, bs = cfg.epochs, cfg.batch_size
    steps_per_epoch = max(1, math.ceil(len(pool.y) / pool.n_copies / bs))
    schedule = keras.optimizers.schedules.CosineDecay(
        float(cfg.learning_rate), decay_steps=epochs * steps_per_epoch, alpha=0.02)
    ce = keras.losses.CategoricalCrossentropy(label_smoothing=float(cfg.label_smoothing))
    trainer.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=float(cfg.weight_decay)),
        loss=[ce] * members if members > 1 else ce,  # one loss per member: no co-adaptation
    )
    cw = class_weights(pool.y, n_labels) if cfg.class_weighting \
        else np.ones(n_labels, np.float32)
    # Per window: the class's weight, or its (corpus, class) cell's.
    ww = corpus_class_weights(pool.y, pool.group, n_labels) \
        if cfg.class_weighting and cfg.corpus_balance and pool.group is not None \
        else cw[pool.y]
    eye = np.eye(n_labels, dtype=np.float32)
    best, best_score, best_epoch, wait = None, -np.inf, -1, 0
    select = cfg.select
    if select not in ("loss", "bacc", "smooth_bacc"):
        raise ValueError("training.select must be 'smooth_bacc', 'bacc' or 'loss'")
    smooth = cfg.smooth_epochs
    min_epochs = cfg.min_epochs
    history: list[dict[str, Any]] = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        idx = pool.epoch_indices(rng)
        x = np.asarray(pool.x[idx], np.float32)
        y = eye[pool.y[idx]]
        w = ww[idx]
        spec_augment(x, cfg, rng)
        alpha = float(cfg.mixup_alpha)
        if alpha > 0:
            lam = rng.beta(alpha, alpha, size=len(idx)).astype(np.float32)
            lam = np.maximum(lam, 1 - lam)  # the first window dominates
            perm = rng.permutation(len(idx))
            x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm]
            y = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
            w = lam * w + (1 - lam) * w[perm]
        # Every member sees the same targets and weights (one copy per output).
        ys, ws = ((y,) * members, (w,) * members) if members > 1 else (y, w)
        h = trainer.fit(x, ys, sample_weight=ws, batch_size=bs, epochs=1, verbose=0,
                        shuffle=False)
        loss = float(h.history["loss"][-1]) / members
        s = evaluate_set(model, val, n_labels)
        history.append({"epoch": epoch + 1, "loss": round(loss, 4),
                        "val_bacc": round(s["balanced_accuracy"], 4),
                        "val_f1": round(s["macro_f1"], 4),
                        "val_loss": round(s["balanced_log_loss"], 4)})
        if select == "loss":
            score = -s["balanced_log_loss"]
        elif select == "bacc":
            score = s["balanced_accuracy"]
        else:  # smoothed balanced accuracy: mean over the last `smooth` epochs
            score = float(np.mean([h["val_bacc"] for h in history[-smooth:]]))
        history[-1]["score"] = round(score, 4)
        bar.set_postfix(loss=f"{loss:.3f}", val_bacc=f"{s['balanced_accuracy']:.3f}",
                        val_loss=f"{s['balanced_log_loss']:.3f}")
        if epoch + 1 < min_epochs:
            continue  # early in the cosine schedule: never the pick, patience not counting
        if score > best_score:
            best, best_score, best_epoch, wait = model.get_weights(), score, epoch + 1, 0
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    bar.close()
    if best is not None:
        model.set_weights(best)
    best_row = history[best_epoch - 1] if best_epoch > 0 else {}
    history.append({"best_epoch": best_epoch, "best_val_bacc": best_row.get("val_bacc", 0.0),
                    "best_val_loss": best_row.get("val_loss", 0.0), "select": select})
    return model, history


def count_params(model: keras.Model) -> int:
    return int(model.count_params())
