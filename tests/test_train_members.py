"""An ensemble of members trains as independent CNNs and exports as one int8 file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from train.config import ModelConfig, load_config
from train.model import EvalSet, TrainPool, build_models, train_model
from train.quantize import to_int8

CFG = ModelConfig(members=1, filters=(6, 8), kernels=(3, 3), pool=(2, 1), pooling="mean_std",
                  dropout=0.1)
TRAIN = replace(load_config().training, epochs=2, patience=2, batch_size=16,
                learning_rate=0.01, weight_decay=1e-4, label_smoothing=0.0, mixup_alpha=0.0,
                time_masks=0, coef_masks=0, min_epochs=0)


def test_single_member_is_one_model() -> None:
    train, infer = build_models(3, CFG, frames=20, coeffs=5)
    assert train is infer
    assert len(infer.outputs) == 1


def test_members_are_averaged() -> None:
    train, infer = build_models(3, replace(CFG, members=3), frames=20, coeffs=5)
    assert len(train.outputs) == 3
    assert infer.count_params() == train.count_params()
    x = np.random.default_rng(0).standard_normal((4, 20, 5)).astype(np.float32)
    each = [np.asarray(p) for p in train(x, training=False)]
    np.testing.assert_allclose(np.asarray(infer(x, training=False)), np.mean(each, axis=0),
                               atol=1e-6)
    # independently initialised: the members do not start out equal
    assert not np.allclose(each[0], each[1])


def test_members_train_and_export_as_one_int8_file() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((48, 20, 5)).astype(np.float32)
    y = np.arange(48) % 3
    x[:, :, 0] += y[:, None]  # learnable
    pool = TrainPool(x, y, np.arange(48), np.zeros(48, np.int64), 1)
    val = EvalSet(x[:12], np.arange(12), y[:12])
    model, history = train_model(pool, val, 3, replace(CFG, members=2), TRAIN, seed=3,
                                 progress=False)
    assert history[-1]["best_epoch"] >= 1
    blob = to_int8(model, 3, replace(CFG, members=2), x[:16])
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    assert list(interp.get_input_details()[0]["shape"]) == [1, 20, 5]
    assert list(interp.get_output_details()[0]["shape"]) == [1, 3]
