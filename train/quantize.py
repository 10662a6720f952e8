"""Full-integer int8 export: int8 input, int8 output, softmax inside, input (1, 200, 42).

The representative dataset is normalised training windows, i.e. what the device feeds
the model after :func:`serd.normalise.normalise_windows`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import numpy.typing as npt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from train.config import ModelConfig
from train.model import build_model


def to_int8(model: keras.Model, n_labels: int, model_cfg: ModelConfig,
            representative: npt.NDArray[np.floating]) -> bytes:
    """Convert a trained model to an int8 TFLite flatbuffer."""
    frames, coeffs = model.input_shape[1], model.input_shape[2]
    # A batch-1 twin, so the file's input shape is exactly (1, frames, coeffs).
    twin = build_model(n_labels, model_cfg, frames, coeffs, batch_size=1)
    twin.set_weights(model.get_weights())
    conv = tf.lite.TFLiteConverter.from_keras_model(twin)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rep = np.asarray(representative, np.float32)

    def gen():
        for r in rep:
            yield [r[None]]

    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    # The converter prints the traced signature to stdout; keep the progress output clean.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(conv.convert())
