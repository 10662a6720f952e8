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
