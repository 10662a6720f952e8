"""The voice branch: a pretrained speaker encoder's middle layer as a second opinion.

The CNN (``serd.model``) learns emotion from about 70 acted speakers, and that is what it
is short of: its six-class accuracy grows about 6 points with every doubling of the
training speakers (docs/training.md).  This branch borrows what a network has learnt from
thousands of speakers: the GE2E speaker encoder of Resemblyzer 0.1.4 (Apache-2.0; Wan et
al. 2018, "Generalized end-to-end loss for speaker verification"), three LSTM layers of
256 units over 40 mel bands, trained for text-independent speaker verification.  Its
final embedding is built to ignore how a speaker feels; its *second* layer still carries
it (voice quality, pitch and energy dynamics).  Per window, this module runs the first two
layers (frozen, float32, numpy) over the window's audio and summarises the second layer's
outputs by their mean and standard deviation over time (512 values).  A logistic
regression trained with the CNN (``serd-train``) turns those into probabilities, and
:func:`fuse` multiplies them with the CNN's (equal log weights).

Nothing here needs torch, TensorFlow or librosa: the mel spectrogram is computed in
numpy with librosa's conventions (``melspectrogram(sr=16000, n_fft=400, hop_length=160,
n_mels=40)``: centred frames, periodic Hann window, power, Slaney mel scale and area
normalisation), which a test checks against librosa itself.  The weights (layers 1-2 of
the encoder, float16, 1.6 MB) ship as ``models/voice-trunk.npz``; ``serd-train
voice-trunk`` makes that file from Resemblyzer's checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_LOGGER = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

DEFAULT_TRUNK = Path(__file__).resolve().parent.parent / "models" / "voice-trunk.npz"

VOICE_VERSION = 1
"""Bump whenever this module's arithmetic changes; cards record the version they used."""


class VoiceError(Exception):
    """The voice branch's files cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class VoiceParams:
    """The encoder's input and what is taken from it (fixed by the pretrained weights)."""

    sample_rate: int = 16000
    """Hz; the encoder was trained at 16 kHz."""
    n_fft: int = 400
    """Samples per spectrum frame (25 ms)."""
    hop_length: int = 160
    """Samples between frames (10 ms)."""
    n_mels: int = 40
    """Mel bands (Slaney scale, 0 Hz to Nyquist)."""
    target_dbfs: float = -30.0
    """Quieter windows are amplified to this mean power first (never attenuated), as the
    encoder's own preprocessing does."""
    layers: int = 2
    """LSTM layers run; the statistics come from the last of them."""
    units: int = 256
    """LSTM width."""

    @property
    def n_outputs(self) -> int:
        return 2 * self.units

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hz_to_mel_slaney(hz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    f = np.asarray(hz, np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def mel_to_hz_slaney(mel: npt.ArrayLike) -> npt.NDArray[np.float64]:
    m = np.asarray(mel, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)),
                    m * (200.0 / 3))


@lru_cache(maxsize=4)
def _tables(params: VoiceParams) -> tuple[FloatArray, FloatArray]:
    """(periodic Hann window, (n_fft//2+1, n_mels) Slaney mel matrix), computed once."""
    n = params.n_fft
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
    fft_hz = np.linspace(0, params.sample_rate / 2, n // 2 + 1)
    mel_pts = np.linspace(hz_to_mel_slaney(0.0), hz_to_mel_slaney(params.sample_rate / 2),
                          params.n_mels + 2)
    hz = mel_to_hz_slaney(mel_pts)
    fdiff = np.diff(hz)
    ramps = hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]  # equal area per band
    window.setflags(write=False)
    mel = weights.T.astype(np.float32)
    mel.setflags(write=False)
    return window, mel


def voice_mel(audio: npt.ArrayLike, params: VoiceParams | None = None) -> FloatArray:
    """(frames, n_mels) mel power spectrogram of one window, after volume normalisation."""
    p = params or VoiceParams()
    x = np.asarray(audio, np.float32).reshape(-1)
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    dbfs = 10.0 * np.log10(power + 1e-12)
    if x.size and dbfs < p.target_dbfs:
        x = x * np.float32(10.0 ** ((p.target_dbfs - dbfs) / 20.0))
    window, mel = _tables(p)
    half = p.n_fft // 2
    padded = np.pad(x, half)  # centred frames, zero padding (librosa's default)
    n_frames = 1 + x.size // p.hop_length
    idx = np.arange(p.n_fft)[None, :] + p.hop_length * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(padded[idx] * window, axis=1)
    mag2 = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    return np.asarray(mag2 @ mel, np.float32)


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), np.float32)


class VoiceTrunk:
    """``__call__(window_audio) -> (512,)``: mean and std over time of layer 2's outputs.

    :meth:`batch` does the same for several windows of equal length at once (training).
    """

    def __init__(self, path: Path | None = None, params: VoiceParams | None = None) -> None:
        self.params = params or VoiceParams()
        self.path = path or DEFAULT_TRUNK
        if not self.path.is_file():
            raise VoiceError(
                f"voice trunk {self.path} does not exist: reinstall serd to get "
                "models/voice-trunk.npz, or make it with serd-train voice-trunk"
            )
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        try:
            with np.load(self.path) as z:
                w = {k: np.asarray(z[k], np.float32) for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise VoiceError(f"voice trunk {self.path} is not readable: {exc}") from None
        p = self.params
        self._layers: list[tuple[FloatArray, FloatArray, FloatArray]] = []
        n_in = p.n_mels
        for k in range(p.layers):
            try:
                wi, wh = w[f"weight_ih_l{k}"], w[f"weight_hh_l{k}"]
                b = w[f"bias_ih_l{k}"] + w[f"bias_hh_l{k}"]
            except KeyError as exc:
                raise VoiceError(f"voice trunk {self.path} lacks {exc}: not a serd trunk") from None
            if wi.shape != (4 * p.units, n_in) or wh.shape != (4 * p.units, p.units):
                raise VoiceError(
                    f"voice trunk {self.path}: layer {k} has shapes {wi.shape}, {wh.shape}; "
                    f"expected {(4 * p.units, n_in)}, {(4 * p.units, p.units)}"
                )
            # Transposed once, so each step is one (batch, units) @ (units, 4 units).
            self._layers.append((np.ascontiguousarray(wi.T), np.ascontiguousarray(wh.T), b))
            n_in = p.units

    def __call__(self, audio: npt.ArrayLike) -> FloatArray:
        return self.batch(voice_mel(audio, self.params)[None])[0]

    def batch(self, mels: FloatArray) -> FloatArray:
        """(B, frames, n_mels) -> (B, 512)."""
        seq = np.asarray(mels, np.float32)
        u = self.params.units
        for wi, wh, b in self._layers:
            pre = seq @ wi + b
            h = np.zeros((seq.shape[0], u), np.float32)
            c = np.zeros_like(h)
            out = np.empty((*seq.shape[:2], u), np.float32)
            for t in range(seq.shape[1]):
                g = pre[:, t] + h @ wh
                # PyTorch's gate order: input, forget, cell, output.
                i, f, o = _sigmoid(g[:, :u]), _sigmoid(g[:, u:2 * u]), _sigmoid(g[:, 3 * u:])
                c = f * c + i * np.tanh(g[:, 2 * u:3 * u])
                h = o * np.tanh(c)
                out[:, t] = h
            seq = out
        return np.concatenate([seq.mean(axis=1), seq.std(axis=1)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class VoiceHead:
    """Standardisation and a multinomial logistic regression: (512,) -> probabilities."""

    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    """(n_labels, 512)."""
    intercept: FloatArray

    def __call__(self, x: FloatArray) -> FloatArray:
        z = (np.asarray(x, np.float32) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=-1, keepdims=True), np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=self.intercept)

    @classmethod
    def load(cls, path: Path, n_labels: int, n_inputs: int) -> VoiceHead:
        try:
            with np.load(path) as z:
                head = cls(*(np.asarray(z[k], np.float32)
                             for k in ("mean", "scale", "coef", "intercept")))
        except FileNotFoundError:
            raise VoiceError(f"voice head {path} is missing: it belongs beside the model "
                             "(serd-train writes both)") from None
        except (OSError, ValueError, KeyError) as exc:
            raise VoiceError(f"voice head {path} is not readable: {exc}") from None
        if head.coef.shape != (n_labels, n_inputs) or head.mean.shape != (n_inputs,) \
                or head.scale.shape != (n_inputs,) or head.intercept.shape != (n_labels,):
            raise VoiceError(f"voice head {path} has coefficients of shape {head.coef.shape}; "
                             f"the card needs {(n_labels, n_inputs)}")
        return head


def fuse(cnn: FloatArray, voice: FloatArray, cnn_weight: float = 0.5,
         floor: float = 1e-6) -> FloatArray:
    """The two opinions multiplied: softmax(w log p_cnn + (1 - w) log p_voice).

    ``floor`` keeps an int8 probability of exactly 0 from vetoing a class outright.
    """
    logp = (cnn_weight * np.log(np.clip(cnn, floor, 1.0))
            + (1.0 - cnn_weight) * np.log(np.clip(voice, floor, 1.0)))
    logp = logp - logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), np.float32)


def voice_fingerprint(trunk: VoiceTrunk, signal: npt.ArrayLike) -> list[float]:
    """The trunk's output on a fixed signal (``serd.model.fingerprint_signal``), first 16
    values, rounded: recorded on the card at training time and recomputed at load, as the
    MFCC fingerprint is."""
    return [round(float(v), 4) for v in trunk(signal)[:16]]


class VoiceBranch:
    """Trunk + head, and the fusion with the CNN: ``fused(cnn_probs, window_audio)``."""

    def __init__(self, trunk: VoiceTrunk, head: VoiceHead, cnn_weight: float = 0.5) -> None:
        self.trunk = trunk
        self.head = head
        self.cnn_weight = cnn_weight

    def __call__(self, audio: npt.ArrayLike) -> FloatArray:
        """The branch's own probabilities for one window's audio."""
        return self.head(self.trunk(audio))

    def fused(self, cnn: FloatArray, audio: npt.ArrayLike) -> FloatArray:
        return fuse(cnn, self(audio), self.cnn_weight)
