"""The model: file size, parameters and multiply-accumulates counted from the TFLite graph,
and int8 inference time per window.

Counting works on the interpreter's op list (``_get_ops_details``; the XNNPACK ``DELEGATE``
node is skipped, the ops it replaced are still listed) and tensor shapes after
``allocate_tensors``:

* parameters: elements of the constant tensors (inputs that no op produces) that feed
  weight-bearing ops (convolutions, fully connected, LSTM, batch matmul, elementwise
  ops with a constant operand such as a folded batch norm); shape and axis operands of
  reshapes, means, pads etc. are not parameters;
* MACs per window: CONV_2D ``out elements x kh x kw x cin``; DEPTHWISE_CONV_2D
  ``out elements x kh x kw``; FULLY_CONNECTED / BATCH_MATMUL ``out elements x inner``;
  TRANSPOSE_CONV ``in elements x kh x kw x cout``; UNIDIRECTIONAL_SEQUENCE_LSTM
  ``steps x 4 x units x (input + units)``.  Other ops (pooling, mean, softmax, adds) are
  listed but cost few operations.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median

WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
            "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "LSTM",
            "BATCH_MATMUL", "CONV_3D", "UNIDIRECTIONAL_SEQUENCE_RNN", "SVDF",
            "ADD", "MUL", "SUB", "PRELU", "EMBEDDING_LOOKUP"}


def graph_counts(model: Path) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interp = Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}

    def shape(i: int) -> tuple[int, ...]:
        return tuple(int(s) for s in tensors[i]["shape"])

    def const(i: int) -> bool:
        return i >= 0 and i not in produced and i not in graph_inputs

    params = 0
    counted: set[int] = set()
    macs = 0
    macs_by_op: Counter[str] = Counter()
    for op in ops:
        name = op["op_name"]
        ins = [int(i) for i in op["inputs"]]
        outs = [int(i) for i in op["outputs"]]
        if name in WEIGHTED:
            for i in ins:
                if const(i) and i not in counted:
                    counted.add(i)
                    params += int(np.prod(shape(i))) if shape(i) else 1
        out_elems = int(np.prod(shape(outs[0]))) if outs else 0
        m = 0
        if name == "CONV_2D":
            cout, kh, kw, cin = shape(ins[1])
            m = out_elems * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shape(ins[1])
            m = out_elems * kh * kw
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            inner = shape(ins[0])[-1]
            m = out_elems * inner
        elif name == "TRANSPOSE_CONV":
            cout, kh, kw, _ = shape(ins[1])
            m = int(np.prod(shape(ins[2]))) * kh * kw * cout
        elif name == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            x = shape(ins[0])
            units = shape(outs[0])[-1]
            steps = x[1] if len(x) == 3 else 1
            m = steps * 4 * units * (x[-1] + units)
        if m:
            macs += m
            macs_by_op[name] += m
    inp = interp.get_input_details()[0]
    return {
        "parameters": params,
        "macs_per_window": macs,
        "macs_by_op": dict(macs_by_op),
        "ops": dict(Counter(op["op_name"] for op in ops)),
        "input_shape": [int(s) for s in inp["shape"]],
        "input_dtype": np.dtype(inp["dtype"]).name,
        "counted_from": "tflite graph (ai_edge_litert interpreter op and tensor details)",
    }


def inference_time(model: Path, window: np.ndarray | None, repeats: int = 300) -> dict[str, Any]:
    """Median seconds per window: the Classifier call (normalise, quantise, invoke,
    dequantise) and the bare ``invoke()``, at 1 thread."""
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415

    clf = load_classifier(ModelSettings(path=str(model), num_threads=1))
    win, n = clf.input_shape[1], clf.input_shape[2]
    if window is None:
        window = np.random.default_rng(0).standard_normal((win, n)).astype(np.float32) * 10
    for _ in range(20):
        clf(window)
    calls, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        clf(window)
        calls.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    voice: dict[str, Any] = {}
    if clf.voice is not None:
        # The voice branch runs its LSTM once per 10 ms frame of speech (serd.voice.
        # VoiceStream): time one second of audio through mel + LSTM, and the head on a
        # window's statistics, at one BLAS thread as on the device.
        try:
            from threadpoolctl import threadpool_limits  # noqa: PLC0415
        except ImportError:  # a device install without the train extra: as it is
            threadpool_limits = None
        from serd.voice import stats, voice_mel  # noqa: PLC0415

        trunk, params = clf.voice.trunk, clf.voice.trunk.params
        audio = (np.random.default_rng(1).standard_normal(params.sample_rate + params.n_fft)
                 * 0.05).astype(np.float32)
        vt, vc = [], []
        with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
            for k in range(max(13, repeats // 10)):
                c0, t0 = time.thread_time(), time.perf_counter()
                out = trunk.run(voice_mel(audio, params), trunk.zero_state())
                clf.voice.head(stats(out, params))
                if k >= 3:
                    vt.append(time.perf_counter() - t0)
                    vc.append(time.thread_time() - c0)
        voice = {"voice_branch_ms_per_speech_s": median(vt) * 1000,
                 "voice_branch_cpu_ms_per_speech_s": median(vc) * 1000,
                 "voice_trunk_bytes": trunk.path.stat().st_size,
                 "voice_lstm": (f"LiteRT int8 ({trunk.lite.path.name})" if trunk.lite
                                else "numpy float32")}
    interp = clf._interp
    invokes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        interp.invoke()
        invokes.append(time.perf_counter() - t0)
    return {
        "runtime": clf.runtime,
        "classifier_call_ms": median(calls) * 1000,
        "classifier_call_cpu_ms": median(cpu) * 1000,
        "invoke_ms": median(invokes) * 1000,
        "repeats": repeats,
        "labels": list(clf.labels),
        "name": clf.name,
        **voice,
    }


def run(model: Path, window: np.ndarray | None = None, repeats: int = 300) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": str(model),
        "file_bytes": model.stat().st_size,
    }
    out.update(graph_counts(model))
    out.update(inference_time(model, window, repeats))
    return out
