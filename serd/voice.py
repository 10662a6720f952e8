"""The voice branch: a pretrained speaker encoder's middle layer as a second opinion.

The CNN (``serd.model``) learns emotion from about 70 acted speakers, and that is what it
is short of: its accuracy grows with every doubling of the training speakers
(docs/experiments/LOG.md).  This branch borrows what a network has learnt from
thousands of speakers: the GE2E speaker encoder of Resemblyzer 0.1.4 (Apache-2.0; Wan et
al. 2018, "Generalized end-to-end loss for speaker verification"), three LSTM layers of
256 units over 40 mel bands, trained for text-independent speaker verification.  Its
final embedding is built to ignore how a speaker feels; its *second* layer still carries
it (voice quality, pitch and energy dynamics).  Per window, this module runs the first two
layers (frozen) over the window's audio and summarises the second layer's outputs by their
mean and standard deviation over time (512 values).  The layers run in LiteRT with int8
weights when the model card names that LSTM (:class:`LiteLstm`, the shipped card does), else
in float32 numpy.  A logistic
regression trained with the CNN (``serd-train``) turns those into probabilities, and
:func:`fuse` multiplies them with the CNN's (equal log weights).

Nothing here needs torch, TensorFlow or librosa: the mel spectrogram is computed in
numpy with librosa's conventions (``melspectrogram(sr=16000, n_fft=400, hop_length=160,
n_mels=40)``: centred frames, periodic Hann window, power, Slaney mel scale and area
normalisation), which a test checks against librosa itself.  The weights (layers 1-2 of
the encoder, float16) ship as ``models/voice-trunk.npz``; ``serd-train
voice-trunk`` makes that file from Resemblyzer's checkpoint, and ``serd-train voice-lstm``
the LiteRT LSTM ``models/voice-lstm.tflite`` from it.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.quiet import native_stderr_quiet
from serd.windows import Window

FloatArray = npt.NDArray[np.float32]

# Package data (serd/models: in a checkout a link to the top-level models/ that training
# writes, in a wheel a copy of its shipped files), found where the package is installed.
DEFAULT_TRUNK = Path(str(resources.files("serd") / "models" / "voice-trunk.npz"))
DEFAULT_LSTM = DEFAULT_TRUNK.with_name("voice-lstm.tflite")
"""The trunk's two LSTM layers as a LiteRT model (``serd-train voice-lstm``), int8 weights:
a card that names it (``lstm_file``) runs the trunk with it, a card that does not runs the
numpy LSTM (float32)."""

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


@dataclass(frozen=True)
class ReferenceParams:
    """How the voice branch adapts to its line (:class:`LineReference`), as trained.

    A head trained with a reference sees each window's statistics minus the mean
    statistics of its *domain*: in training a corpus and rendering (a set of voices, a
    language, a studio, a channel), on the device the line's own recent speech.  What is
    left is how a window differs from the voices and room it comes from, which is what
    carries across corpora (docs/experiments/LOG.md, fifteenth round)."""

    prior_windows: float = 100.0
    """Weight of the prior reference (the mean of the training domains' references), in
    windows: a line's reference is ``(n * line_mean + prior_windows * prior) /
    (n + prior_windows)`` after ``n`` windows of its speech."""
    memory_windows: int = 2000
    """Windows the line's mean remembers: up to this many it is the plain mean, after it
    an exponential average over about this many (at a 0.5 s hop about 17 minutes of
    speech), so a line follows a change of headset or room."""
    neutral_share: float = 0.6
    """Share of neutral speech assumed in a line's stream: the training domains'
    references weight their neutral windows to this share (where a domain has any), as a
    call centre's stream is mostly neutral.  A training record; the device needs no
    labels."""

    def __post_init__(self) -> None:
        # From a card, so hostile: an infinite prior weight would make every reference NaN
        # (inf / inf), and a count is whole.
        if isinstance(self.prior_windows, bool) or isinstance(self.memory_windows, bool) \
                or not isinstance(self.memory_windows, int) \
                or not 0 <= self.prior_windows < float("inf") or self.memory_windows < 1 \
                or not 0 <= self.neutral_share <= 1:
            raise ValueError(f"bad reference parameters {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LineReference:
    """``__call__(stats) -> stats - reference``: one line's voice statistics, relative to
    the line's own speech so far (:class:`ReferenceParams`); the window then joins the
    mean.  ``reset()`` forgets the line (back to the prior).  One per analysed channel;
    it is not reset between utterances or calls: the reference is the line's, not a
    caller's, so one caller's mood is a small part of it."""

    def __init__(self, prior: FloatArray, params: ReferenceParams | None = None,
                 adapt: bool = True) -> None:
        """``adapt`` False: the reference stays at the prior (no adaptation)."""
        self.prior = np.asarray(prior, np.float32)
        self.params = params or ReferenceParams()
        self.adapt = adapt
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean = np.zeros_like(self.prior)

    @property
    def reference(self) -> FloatArray:
        k = self.params.prior_windows
        n = float(self.count)
        if n + k <= 0:
            return self.prior
        return np.asarray((n * self.mean + k * self.prior) / (n + k), np.float32)

    def update(self, stats: FloatArray) -> None:
        """Add one window's statistics to the line's mean."""
        if not self.adapt:
            return
        self.count = min(self.count + 1, self.params.memory_windows)
        self.mean += (np.asarray(stats, np.float32) - self.mean) / self.count

    def __call__(self, stats: FloatArray) -> FloatArray:
        out = np.asarray(stats, np.float32) - self.reference
        self.update(stats)
        return out

    def state(self) -> tuple[int, FloatArray]:
        """What the line has learnt: ``(count, mean)`` (a copy), for
        :meth:`restore` after a restart (``serd.linestate`` keeps it on disk)."""
        return self.count, self.mean.copy()

    def restore(self, count: int, mean: npt.ArrayLike) -> None:
        """Take up a :meth:`state` again; the caller has checked it (``serd.linestate``).
        A frozen reference (``adapt`` False) stays at the prior."""
        mean = np.asarray(mean, np.float32)
        if mean.shape != self.prior.shape or not 0 <= count <= self.params.memory_windows:
            raise ValueError(f"line reference state does not fit: count {count}, "
                             f"mean shape {mean.shape}, prior shape {self.prior.shape}")
        if not self.adapt:
            return
        self.count = int(count)
        self.mean = mean.copy()


@dataclass(frozen=True)
class VoiceCard:
    """The model card's ``voice`` section: which branch a model was trained with, and how
    its opinion is fused with the CNN's.  Written by ``serd-train``, read by
    :func:`serd.model.load_voice_branch`, which checks the files against it."""

    version: int
    """:data:`VOICE_VERSION` the branch was trained with."""
    params: VoiceParams
    trunk_sha256: str
    head_file: str
    head_sha256: str
    cnn_weight: float
    """The CNN's log weight in :func:`fuse` (the branch gets ``1 - cnn_weight``)."""
    fingerprint: tuple[float, ...] = ()
    """:func:`voice_fingerprint` at training time; empty: not checked."""
    trunk: str = ""
    """The trunk in words (provenance, licence)."""
    lstm_file: str = ""
    """The LiteRT LSTM the trunk runs with (:data:`DEFAULT_LSTM`'s name); empty: numpy."""
    lstm_sha256: str = ""
    c: float | None = None
    """The head's regularisation (training record)."""
    fitted_on_telephone: bool | None = None
    """Whether the head also saw telephone renderings (training record)."""
    reference: ReferenceParams | None = None
    """The head was trained on statistics relative to their domain's reference
    (:class:`LineReference`); its prior is in the head file.  None: absolute statistics."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "params": self.params.to_dict()}
        if self.trunk:
            out["trunk"] = self.trunk
        out["trunk_sha256"] = self.trunk_sha256
        if self.lstm_file:
            out |= {"lstm_file": self.lstm_file, "lstm_sha256": self.lstm_sha256}
        if self.fingerprint:
            out["fingerprint"] = list(self.fingerprint)
        out |= {"head_file": self.head_file, "head_sha256": self.head_sha256,
                "cnn_weight": self.cnn_weight}
        if self.c is not None:
            out["c"] = self.c
        if self.fitted_on_telephone is not None:
            out["fitted_on_telephone"] = self.fitted_on_telephone
        if self.reference is not None:
            out["reference"] = self.reference.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VoiceCard:
        """Raises KeyError, TypeError or ValueError on a malformed section."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        c = d.get("c")
        tel = d.get("fitted_on_telephone")
        ref = d.get("reference")
        if ref is not None and not isinstance(ref, dict):
            raise TypeError("reference: expected a JSON object")
        return cls(
            version=int(d["version"]), params=VoiceParams(**d["params"]),
            trunk_sha256=str(d["trunk_sha256"]), head_file=str(d["head_file"]),
            head_sha256=str(d["head_sha256"]), cnn_weight=float(d["cnn_weight"]),
            fingerprint=tuple(float(x) for x in d.get("fingerprint", ())),
            trunk=str(d.get("trunk", "")), lstm_file=str(d.get("lstm_file", "")),
            lstm_sha256=str(d.get("lstm_sha256", "")), c=None if c is None else float(c),
            fitted_on_telephone=None if tel is None else bool(tel),
            reference=None if ref is None else ReferenceParams(**ref))


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
    """(frames, n_mels) mel power spectrogram, frame ``j`` over samples ``[j hop, j hop +
    n_fft)`` (not centred: the same frames as serd's MFCCs, so a window's frames line up)."""
    p = params or VoiceParams()
    x = np.asarray(audio, np.float32).reshape(-1)
    if x.size < p.n_fft:
        return np.zeros((0, p.n_mels), np.float32)
    window, mel = _tables(p)
    n_frames = 1 + (x.size - p.n_fft) // p.hop_length
    idx = np.arange(p.n_fft)[None, :] + p.hop_length * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(x[idx] * window, axis=1)
    mag2 = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    return np.asarray(mag2 @ mel, np.float32)


def level_gain(audio: npt.ArrayLike, params: VoiceParams | None = None) -> float:
    """Power gain that lifts ``audio`` to ``target_dbfs`` (1 if it is louder already)."""
    p = params or VoiceParams()
    x = np.asarray(audio, np.float32)
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    dbfs = 10.0 * np.log10(power + 1e-12)
    return float(10.0 ** ((p.target_dbfs - dbfs) / 10.0)) if dbfs < p.target_dbfs else 1.0


class VoiceTrunk:
    """The frozen LSTM layers, run one frame after another with a carried state (in numpy,
    or in LiteRT when built with ``lstm``).

    :meth:`run` advances a :class:`LstmState` over new mel frames and returns the last
    layer's outputs; ``__call__(audio)`` is the statistics of one stretch of audio from a
    zero state (the card's fingerprint).  The streaming use is :class:`VoiceStream`.
    """

    def __init__(self, path: Path | None = None, params: VoiceParams | None = None,
                 lstm: Path | None = None,
                 interpreter: Callable[..., Any] | None = None) -> None:
        """``lstm``: the LiteRT LSTM to run the layers with (None: numpy), built by
        ``interpreter`` (a TFLite ``Interpreter`` class; default LiteRT's)."""
        self.params = params or VoiceParams()
        self.path = path or DEFAULT_TRUNK
        if not self.path.is_file():
            raise VoiceError(
                f"voice trunk {self.path} does not exist: reinstall serd to get "
                "models/voice-trunk.npz, or make it with serd-train voice-trunk"
            )
        data = self.path.read_bytes()  # read once: hashed for the card, then parsed
        self.sha256 = hashlib.sha256(data).hexdigest()
        p = self.params
        u = p.units
        # With the LiteRT LSTM only layer 1's input side is computed here: the other
        # matrices (in the LSTM file too) are not even decompressed.
        names = (["weight_ih_l0", "bias_ih_l0", "bias_hh_l0"] if lstm is not None else
                 [f"{name}_l{k}" for k in range(p.layers)
                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")])
        try:
            with np.load(io.BytesIO(data)) as z:
                w = {k: np.asarray(z[k], np.float32) for k in names}
        except KeyError as exc:
            raise VoiceError(f"voice trunk {self.path} lacks {exc}: not a serd trunk") from None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise VoiceError(f"voice trunk {self.path} is not readable: {exc}") from None
        self._layers: list[tuple[FloatArray, FloatArray, FloatArray]] = []
        self.lite: LiteLstm | None = None
        if lstm is not None:
            if w["weight_ih_l0"].shape != (4 * u, p.n_mels):
                raise VoiceError(f"voice trunk {self.path}: layer 0 has input weights of shape "
                                 f"{w['weight_ih_l0'].shape}; expected {(4 * u, p.n_mels)}")
            self.lite = LiteLstm(lstm, w["weight_ih_l0"].T,
                                 w["bias_ih_l0"] + w["bias_hh_l0"], p, interpreter)
            return
        # PyTorch's gate order is input, forget, cell, output.  Reordered to input, forget,
        # output, cell and the sigmoid gates' rows halved, one tanh per step gives all four
        # gates: sigmoid(x) = (1 + tanh(x / 2)) / 2.  (About a third fewer numpy calls per
        # step, which is most of the cost at one frame at a time.)
        order = np.r_[0:u, u:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        scale = np.r_[np.full(3 * u, 0.5), np.ones(u)].astype(np.float32)
        n_in = p.n_mels
        for k in range(p.layers):
            wi, wh = w[f"weight_ih_l{k}"], w[f"weight_hh_l{k}"]
            b = w[f"bias_ih_l{k}"] + w[f"bias_hh_l{k}"]
            if wi.shape != (4 * u, n_in) or wh.shape != (4 * u, u):
                raise VoiceError(
                    f"voice trunk {self.path}: layer {k} has shapes {wi.shape}, {wh.shape}; "
                    f"expected {(4 * u, n_in)}, {(4 * u, u)}"
                )
            self._layers.append((np.ascontiguousarray((wi[order] * scale[:, None]).T),
                                 np.ascontiguousarray((wh[order] * scale[:, None]).T),
                                 np.ascontiguousarray(b[order] * scale)))
            n_in = u

    def zero_state(self) -> LstmState:
        u = self.params.units
        return LstmState([np.zeros(u, np.float32) for _ in range(self.params.layers)],
                         [np.zeros(u, np.float32) for _ in range(self.params.layers)])

    def run(self, mel: FloatArray, state: LstmState) -> FloatArray:
        """(T, n_mels) -> (T, units): the last layer's outputs; ``state`` is advanced.

        Layer after layer over the new frames: each layer's input side is one matrix
        product for all of them, and only the recurrent side goes frame by frame, about
        half of each step the (256, 1024) product.  (Running the two layers in lockstep,
        one set of gate calls for both, was measured slower: numpy's calls on the strided
        (2, 1024) views cost more than they save; docs/performance.md has the costs.)
        """
        seq = np.asarray(mel, np.float32)
        if self.lite is not None:
            return self.lite.run(seq, state)
        u = self.params.units
        matmul, tanh, multiply = np.matmul, np.tanh, np.multiply  # looked up once
        for k, (wi, wh, b) in enumerate(self._layers):
            pre = seq @ wi + b
            out = np.empty((seq.shape[0], u), np.float32)
            h, c = state.h[k].copy(), state.c[k].copy()
            g = np.empty(4 * u, np.float32)
            tmp = np.empty(u, np.float32)
            s3, g_in, g_forget, g_out, g_cell = (g[: 3 * u], g[:u], g[u : 2 * u],
                                                 g[2 * u : 3 * u], g[3 * u :])
            for pre_t, h_next in zip(pre, out, strict=True):
                matmul(h, wh, out=g)
                g += pre_t
                tanh(g, out=g)
                s3 += 1.0  # the sigmoid gates: (1 + tanh(x / 2)) / 2
                s3 *= 0.5
                c *= g_forget
                multiply(g_in, g_cell, out=tmp)
                c += tmp
                tanh(c, out=h_next)
                multiply(h_next, g_out, out=h_next)
                h = h_next
            if seq.shape[0]:
                state.h[k], state.c[k] = h.copy(), c
            seq = out
        return seq

    def __call__(self, audio: npt.ArrayLike) -> FloatArray:
        """Statistics of one stretch of audio, from a zero state (as a segment's first
        window)."""
        x = np.asarray(audio, np.float32)
        out = self.run(voice_mel(x, self.params) * level_gain(x, self.params),
                       self.zero_state())
        return stats(out, self.params)


class LiteLstm:
    """The trunk's LSTM layers in LiteRT (``serd-train voice-lstm``), int8 weights.

    Layer 1's input projection is one float32 product over a run's frames here (the mel
    powers span decades, too wide for int8: quantised too, the outputs moved six times as
    far); one invoke then does a frame of both layers, its state an input and an output.
    """

    def __init__(self, path: Path, w_ih0: FloatArray, bias0: FloatArray,
                 params: VoiceParams, interpreter: Callable[..., Any] | None = None) -> None:
        self.path = path
        if not path.is_file():
            raise VoiceError(
                f"voice LSTM {path} does not exist: reinstall serd to get "
                f"models/{DEFAULT_LSTM.name}, or make it with serd-train voice-lstm"
            )
        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

            interpreter = Interpreter
        try:
            with native_stderr_quiet():
                self._it = interpreter(model_content=data, num_threads=1)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise VoiceError(f"voice LSTM {path} cannot be loaded: {exc}") from None
        u, n_layers = params.units, params.layers
        ins = {d["name"]: d for d in self._it.get_input_details()}
        outs = self._it.get_output_details()
        if ("pre" not in ins or "state" not in ins or len(outs) != 1
                or list(ins["pre"]["shape"]) != [1, 4 * u]
                or list(ins["state"]["shape"]) != [2 * n_layers, u]
                or list(outs[0]["shape"]) != [2 * n_layers, u]):
            raise VoiceError(f"voice LSTM {path} has the wrong inputs or outputs for this "
                             "trunk: make it with serd-train voice-lstm")
        self._pre, self._state = ins["pre"]["index"], ins["state"]["index"]
        self._out = outs[0]["index"]
        self._w = np.ascontiguousarray(w_ih0, np.float32)
        self._b = np.asarray(bias0, np.float32)
        self.units, self.layers = u, n_layers
        # One interpreter serves every channel's stream (the state is theirs); a lock
        # keeps two threads from interleaving their frames in it.
        self._lock = threading.Lock()

    def run(self, mel: FloatArray, state: LstmState) -> FloatArray:
        """As :meth:`VoiceTrunk.run`: (T, n_mels) -> (T, units), ``state`` advanced."""
        n = mel.shape[0]
        if n == 0:
            return np.zeros((0, self.units), np.float32)
        pre = mel @ self._w + self._b
        after = np.empty((n + 1, 2 * self.layers, self.units), np.float32)
        after[0] = [v for hc in zip(state.h, state.c, strict=True) for v in hc]
        it, i_pre, i_state, i_out = self._it, self._pre, self._state, self._out
        set_tensor, get_tensor, invoke = it.set_tensor, it.get_tensor, it.invoke
        with self._lock:
            for t in range(n):  # one invoke per frame: its state is the last one's output
                set_tensor(i_pre, pre[t : t + 1])
                set_tensor(i_state, after[t])
                invoke()
                after[t + 1] = get_tensor(i_out)
        state.h[:] = [after[n, 2 * k].copy() for k in range(self.layers)]
        state.c[:] = [after[n, 2 * k + 1].copy() for k in range(self.layers)]
        return np.ascontiguousarray(after[1:, 2 * self.layers - 2])


@dataclass
class LstmState:
    """Per-layer hidden and cell vectors."""

    h: list[FloatArray]
    c: list[FloatArray]


def stats(outputs: FloatArray, params: VoiceParams) -> FloatArray:
    """(T, units) -> (2 units,): mean and standard deviation over time (zeros if T is 0)."""
    if outputs.shape[0] == 0:
        return np.zeros(params.n_outputs, np.float32)
    return np.concatenate([outputs.mean(axis=0), outputs.std(axis=0)]).astype(np.float32)


class VoiceStream:
    """``__call__(window) -> (512,)``: the trunk's statistics over one window's frames.

    The LSTM runs once over each speech segment, frame after frame, its state carried from
    one window to the next: each 10 ms frame costs one step, whatever the window hop (a
    fresh run per window would cost window/hop = 4 times as much, over the daemon's CPU
    budget).  The statistics of a window are those of the outputs at its frames.  The
    segment's level is set once, from its first window (quieter speech is lifted to
    ``target_dbfs``, as the encoder's own preprocessing does), so the frames before and
    after a window see the same gain.  Windows must come in stream order, with their audio
    (``Windower(keep_audio=True)``); the daemon keeps one stream per channel, training one
    per file, so both compute the same numbers.
    """

    def __init__(self, trunk: VoiceTrunk) -> None:
        self.trunk = trunk
        self.reset()

    def reset(self) -> None:
        self._segment: int | None = None
        self._seg_start = 0  # absolute sample index of the segment's frame 0
        self._gain = 1.0
        self._state = self.trunk.zero_state()
        self._frames = 0  # frames of the segment run so far
        self._out = np.zeros((0, self.trunk.params.units), np.float32)
        self._out_from = 0  # segment frame index of _out[0]

    def __call__(self, window: Window) -> FloatArray:
        if window.audio is None:
            raise ValueError("the voice branch needs each window's audio "
                             "(Windower(keep_audio=True))")
        p = self.trunk.params
        if window.segment != self._segment:
            # A segment's first window starts at its frame 0 (serd.windows).
            self.reset()
            self._segment = window.segment
            self._seg_start = window.start_sample
            self._gain = level_gain(window.audio, p)
        rel = window.start_sample - self._seg_start
        first = rel // p.hop_length
        last = (window.end_sample - self._seg_start - p.n_fft) // p.hop_length  # inclusive
        if last >= self._frames:
            # The new frames' samples, from the window's audio (it reaches back to its
            # start, which is never after the first frame not yet run).
            lo = self._frames * p.hop_length - rel
            if lo < 0:
                raise ValueError("windows out of order for the voice branch")
            mel = voice_mel(window.audio[lo:], p)[: last + 1 - self._frames]
            out = self.trunk.run(mel * np.float32(self._gain), self._state)
            self._out = np.concatenate([self._out, out])
            self._frames += len(out)
        keep = max(0, first - self._out_from)  # no later window starts before this one
        if keep:
            self._out = self._out[keep:]
            self._out_from += keep
        span = self._out[first - self._out_from : last + 1 - self._out_from]
        return stats(span, p)


@dataclass(frozen=True)
class VoiceHead:
    """Standardisation and a multinomial logistic regression: (512,) -> probabilities.

    serd only reads heads (``serd-train`` writes them: ``train.voice.save_head``), as it
    writes no array anywhere."""

    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    """(n_labels, 512)."""
    intercept: FloatArray
    reference: FloatArray | None = None
    """The prior line reference (:class:`LineReference`) of a head trained on relative
    statistics; None for a head on absolute ones."""

    def __call__(self, x: FloatArray) -> FloatArray:
        """Probabilities of statistics as the head was trained on them (relative to a
        reference, for a head with one)."""
        z = (np.asarray(x, np.float32) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=-1, keepdims=True), np.float32)

    @classmethod
    def load(cls, path: Path, n_labels: int, n_inputs: int) -> VoiceHead:
        try:
            with np.load(path) as z:
                mean, scale, coef, intercept = (np.asarray(z[k], np.float32) for k in
                                                ("mean", "scale", "coef", "intercept"))
                prior = (np.asarray(z["reference"], np.float32)
                         if "reference" in z.files else None)
            head = cls(mean, scale, coef, intercept, reference=prior)
        except FileNotFoundError:
            raise VoiceError(f"voice head {path} is missing: it belongs beside the model "
                             "(serd-train writes both)") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise VoiceError(f"voice head {path} is not readable: {exc}") from None
        if head.coef.shape != (n_labels, n_inputs) or head.mean.shape != (n_inputs,) \
                or head.scale.shape != (n_inputs,) or head.intercept.shape != (n_labels,):
            raise VoiceError(f"voice head {path} has coefficients of shape {head.coef.shape}; "
                             f"the card needs {(n_labels, n_inputs)}")
        if head.reference is not None and head.reference.shape != (n_inputs,):
            raise VoiceError(f"voice head {path} has a reference of shape "
                             f"{head.reference.shape}; the card needs {(n_inputs,)}")
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
    """Trunk + head + the fusion weight: what a card's voice section loads.  Stateless, so
    one branch serves every channel; each channel runs its own :meth:`stream` and, for a
    head trained with a reference, its own :meth:`line_reference`."""

    def __init__(self, trunk: VoiceTrunk, head: VoiceHead, cnn_weight: float = 0.5,
                 reference: ReferenceParams | None = None, adapt: bool = True) -> None:
        """``adapt`` False keeps every line at the prior reference (no adaptation)."""
        if (reference is None) != (head.reference is None):
            raise VoiceError("the voice head and its card disagree on the line reference: "
                             "retrain the model with serd-train")
        self.trunk = trunk
        self.head = head
        self.cnn_weight = cnn_weight
        self.reference = reference
        self.adapt = adapt

    def stream(self) -> VoiceStream:
        return VoiceStream(self.trunk)

    def line_reference(self) -> LineReference | None:
        """A new line's reference (None: the head takes absolute statistics)."""
        if self.head.reference is None or self.reference is None:
            return None
        return LineReference(self.head.reference, self.reference, adapt=self.adapt)

    def fused(self, cnn: FloatArray, voice_stats: FloatArray) -> FloatArray:
        """The CNN's probabilities fused with the head's on a window's statistics."""
        return fuse(cnn, self.head(voice_stats), self.cnn_weight)
