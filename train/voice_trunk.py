"""``serd-train voice-trunk``: ``models/voice-trunk.npz`` from Resemblyzer's checkpoint.

Resemblyzer 0.1.4 (PyPI, Apache-2.0) ships its GE2E speaker encoder as a torch checkpoint
in the legacy (pre-zip) pickle format.  This reads it without torch and keeps the first
``layers`` LSTM layers, as float16 (halves the file; the branch computes in float32):

    pip download --no-deps resemblyzer==0.1.4 -d /tmp/rz
    python -m zipfile -e /tmp/rz/Resemblyzer-0.1.4-py3-none-any.whl /tmp/rz
    serd-train voice-trunk /tmp/rz/resemblyzer/pretrained.pt
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from serd.voice import DEFAULT_TRUNK, VoiceParams

_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
           "DoubleStorage": np.float64, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Storage:
    def __init__(self, dtype: Any) -> None:
        self.dtype, self.data = dtype, np.zeros(0)


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: Any, stride: Any) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        item = self.storage.data.itemsize
        return np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], shape=tuple(self.size),
            strides=[s * item for s in self.stride]).copy()


def _rebuild(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def load_legacy_checkpoint(path: Path) -> Any:
    """A torch checkpoint in the legacy format, with tensors as numpy arrays.  Only the
    classes a state dict needs are allowed (anything else is refused, as untrusted)."""
    storages: dict[str, _Storage] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild
            if module == "torch" and name in _DTYPES:
                return _DTYPES[name]
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint")

        def persistent_load(self, pid: Any) -> _Storage:
            _, dtype, key = pid[:3]
            return storages.setdefault(key, _Storage(dtype))

    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            Unpickler(f).load()
        obj = Unpickler(f).load()
        for key in Unpickler(f).load():  # the storage keys, in file order
            st = storages[key]
            n = struct.unpack("<q", f.read(8))[0]
            st.data = np.frombuffer(f.read(n * np.dtype(st.dtype).itemsize), st.dtype)

    def convert(o: Any) -> Any:
        if isinstance(o, _Tensor):
            return o.array()
        if isinstance(o, dict):
            return {k: convert(v) for k, v in o.items()}
        return o

    return convert(obj)


def write_trunk(checkpoint: Path, out: Path = DEFAULT_TRUNK,
                params: VoiceParams | None = None) -> Path:
    p = params or VoiceParams()
    state = load_legacy_checkpoint(checkpoint)["model_state"]
    keep: dict[str, Any] = {}
    for k in range(p.layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            keep[f"{name}_l{k}"] = np.asarray(state[f"lstm.{name}_l{k}"], np.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **keep)
    return out


def lstm_graph_fn(trunk: Path = DEFAULT_TRUNK, params: VoiceParams | None = None) -> Any:
    """One frame of the trunk's LSTM layers as a TensorFlow function, for :func:`write_lstm`
    (and the test that checks it against serd's numpy LSTM before quantisation).

    Inputs: ``pre`` (1, 4 units), layer 1's input projection of the frame with its bias
    (serd computes it in float32 for all of a call's frames at once: the mel powers span
    decades, too wide for int8), and ``state`` (2 layers, units): h and c of layer 1, then
    of layer 2.  Output: the state after the frame, in the same layout; its second-last
    row is the last layer's output.  One frame per graph, not a loop or an unrolled run:
    XNNPACK packs each product's weights per node, so an unrolled run's copies no longer
    fit the core's cache and cost more than they save.
    """
    import tensorflow as tf  # noqa: PLC0415 (train extra only)

    p = params or VoiceParams()
    u = p.units
    with np.load(trunk) as z:
        w = {k: np.asarray(z[k], np.float32) for k in z.files}
    wh = [tf.constant(w[f"weight_hh_l{k}"].T) for k in range(p.layers)]
    wi = [tf.constant(w[f"weight_ih_l{k}"].T) for k in range(1, p.layers)]
    b = [tf.constant(w[f"bias_ih_l{k}"] + w[f"bias_hh_l{k}"]) for k in range(1, p.layers)]

    @tf.function(input_signature=[tf.TensorSpec([1, 4 * u], tf.float32, name="pre"),
                                  tf.TensorSpec([2 * p.layers, u], tf.float32, name="state")])
    def lstm(pre: Any, state: Any) -> Any:
        after: list[Any] = []
        for k in range(p.layers):
            h, c = state[2 * k : 2 * k + 1], state[2 * k + 1 : 2 * k + 2]
            if k:
                pre = tf.matmul(after[-2], wi[k - 1]) + b[k - 1]  # the last layer's h
            # PyTorch's gate order: input, forget, cell, output.
            g_in, g_forget, g_cell, g_out = tf.split(pre + tf.matmul(h, wh[k]), 4, 1)
            c = tf.sigmoid(g_forget) * c + tf.sigmoid(g_in) * tf.tanh(g_cell)
            h = tf.sigmoid(g_out) * tf.tanh(c)
            after += [h, c]
        return tf.concat(after, axis=0)

    return lstm


def write_lstm(trunk: Path = DEFAULT_TRUNK, out: Path | None = None,
               params: VoiceParams | None = None) -> Path:
    """``serd-train voice-lstm``: the trunk's LSTM as a LiteRT model beside the trunk
    (``voice-lstm.tflite``), weights int8 per output channel (dynamic-range quantisation:
    LiteRT quantises each frame's inputs on the fly).  The numpy LSTM reads 1 MB of float32
    weights per layer and frame and makes ten numpy calls per layer and frame; int8 weights
    stay in the core's cache, and one invoke does a frame of both layers."""
    import tensorflow as tf  # noqa: PLC0415 (train extra only)

    from serd.voice import DEFAULT_LSTM  # noqa: PLC0415

    fn = lstm_graph_fn(trunk, params)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations
    blob = conv.convert()
    path = out or DEFAULT_LSTM
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def attach_lstm(card_path: Path, lstm: Path | None = None) -> Any:
    """Point a card's voice branch at the LiteRT LSTM (its file name and SHA-256) and
    record the trunk's fingerprint as computed with it; returns the new card.

    The head stays as trained: with the LSTM's int8 weights the window statistics move a
    little (docs/performance.md has by how much, and the fused output on the test clips);
    ``serd-train fit`` writes cards that name the LSTM from the start.
    """
    from serd.model import ModelCard, fingerprint_signal  # noqa: PLC0415
    from serd.voice import DEFAULT_LSTM, VoiceTrunk, voice_fingerprint  # noqa: PLC0415

    path = lstm or DEFAULT_LSTM
    card = ModelCard.load(card_path)
    if card.voice is None:
        raise ValueError(f"model card {card_path} has no voice branch")
    trunk = VoiceTrunk(params=card.voice.params, lstm=path)
    assert trunk.lite is not None
    voice = dataclasses.replace(
        card.voice, lstm_file=path.name, lstm_sha256=trunk.lite.sha256,
        fingerprint=tuple(voice_fingerprint(
            trunk, fingerprint_signal(card.voice.params.sample_rate))))
    card = dataclasses.replace(card, voice=voice)
    card.save(card_path)
    return card
