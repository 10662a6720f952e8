"""The usual speech-emotion pipeline of the tutorials, as a stand-alone script.

``librosa.load`` (resampling to librosa's default 22050 Hz), ``librosa.feature.mfcc``
with 40 coefficients, frames padded/cropped to 3 s, and a Keras Conv1D + LSTM model of
the tutorials' shape (random weights: this is about cost, not accuracy), called with
``model.predict``.  It imports nothing from serd.  Run by ``bench.usual`` in fresh
processes:

    python bench/usual_worker.py make  MODEL.keras
    python bench/usual_worker.py cold  MODEL.keras CLIP        # one clip, cold
    python bench/usual_worker.py warm  MODEL.keras CLIP...     # per-clip times, warm

Each prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SR = 22050  # librosa's default
N_MFCC = 40
FRAMES = 130  # 3 s at librosa's default hop of 512 samples
LABELS = 6


def build(path: str) -> None:
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((FRAMES, N_MFCC)),
        layers.Conv1D(64, 5, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling1D(2),
        layers.Conv1D(128, 5, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling1D(2),
        layers.Dropout(0.3),
        layers.LSTM(128),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(LABELS, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.save(path)
    print(json.dumps({"parameters": int(model.count_params())}))


def features(clip: str):
    import librosa  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    y, sr = librosa.load(clip, sr=SR)
    m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=N_MFCC).T
    if m.shape[0] < FRAMES:
        m = np.pad(m, ((0, FRAMES - m.shape[0]), (0, 0)))
    return m[:FRAMES][None].astype("float32")


def cold(path: str, clip: str) -> None:
    t0 = time.perf_counter()
    import librosa  # noqa: F401, PLC0415
    import tensorflow as tf  # noqa: PLC0415

    t1 = time.perf_counter()
    model = tf.keras.models.load_model(path)
    t2 = time.perf_counter()
    probs = model.predict(features(clip), verbose=0)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_clip_s": t3 - t2,
                      "label": int(probs.argmax())}))


def warm(path: str, clips: list[str]) -> None:
    import tensorflow as tf  # noqa: PLC0415

    model = tf.keras.models.load_model(path)
    model.predict(features(clips[0]), verbose=0)  # warm-up: graph tracing, caches
    per_clip, cpu = [], []
    for clip in clips:
        t0, c0 = time.perf_counter(), time.process_time()
        model.predict(features(clip), verbose=0)
        per_clip.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(json.dumps({"per_clip_s": per_clip, "per_clip_cpu_s": cpu}))


def main() -> None:
    mode, path, *rest = sys.argv[1:]
    if mode == "make":
        build(path)
    elif mode == "cold":
        cold(path, rest[0])
    elif mode == "warm":
        warm(path, rest)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
