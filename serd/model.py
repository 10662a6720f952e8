"""Model runtime: an int8 TFLite classifier and the card that travels with it.

The interpreter comes from LiteRT (``ai-edge-litert``), else ``tflite_runtime``, else
``tensorflow.lite`` -- never TensorFlow when one of the first two is installed, so a device
needs no TensorFlow at all.

The card (``<model>.card.json`` beside ``<model>.tflite``) records what the model expects:
labels, the front-end parameters, the window and hop, the normalisation, the file's
SHA-256, training data and metrics.  :func:`load_classifier` refuses a model whose card
does not match the front-end this serd computes, including a *fingerprint*: features of
a fixed synthetic signal recorded at training time and recomputed at load, so a change in
the front-end code that keeps the parameters but changes the numbers is caught too.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.features import FeatureParams, WindowParams, mfcc
from serd.normalise import Normalisation, normalise_windows
from serd.quiet import native_stderr_quiet
from serd.validate import require
from serd.voice import (
    DEFAULT_LSTM,
    DEFAULT_TRUNK,
    VOICE_VERSION,
    VoiceBranch,
    VoiceCard,
    VoiceError,
    VoiceHead,
    VoiceParams,
    VoiceTrunk,
    voice_fingerprint,
)
from serd.windows import Window

_LOGGER = logging.getLogger(__name__)

CARD_FORMAT = 1
FRONTEND_VERSION = 2
"""Bump whenever the front-end's arithmetic changes; cards record the version they used."""

# Package data beside the trunk (serd/models; see serd.voice.DEFAULT_TRUNK).
DEFAULT_MODEL = DEFAULT_TRUNK.with_name("serd-emotion-6.tflite")


class ModelError(Exception):
    """The model or its card cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class ModelSettings:
    """Which model to run and how."""

    path: str | None = None
    """A ``.tflite`` file; its card is ``<stem>.card.json`` beside it.  None = shipped model."""
    num_threads: int = 1
    """Interpreter threads; 1 leaves the other cores to the rest of the device."""
    voice: bool = True
    """Fuse the card's voice branch, if it has one; False runs the CNN alone (for devices
    too slow for the branch's LSTM)."""
    adapt: bool = True
    """Let each line's voice reference follow the line's own speech (a model whose card
    has a ``voice.reference``: :class:`serd.voice.LineReference`); False keeps every line
    at the model's prior reference, as a line that has heard nothing yet."""

    def __post_init__(self) -> None:
        require(1 <= self.num_threads <= 16, "num_threads", "must be in 1..16")

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else DEFAULT_MODEL


def fingerprint_signal(sample_rate: int) -> npt.NDArray[np.float32]:
    """0.5 s of a deterministic chirp plus harmonics: input for the front-end fingerprint."""
    t = np.arange(int(0.5 * sample_rate), dtype=np.float64) / sample_rate
    f0 = 120.0 + 200.0 * t
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = 0.3 * np.sin(phase) + 0.1 * np.sin(3 * phase) + 0.05 * np.sin(7.3 * phase)
    return x.astype(np.float32)


def frontend_fingerprint(params: FeatureParams) -> list[float]:
    """Per-coefficient mean of the MFCCs of :func:`fingerprint_signal` (rounded)."""
    feats = mfcc(fingerprint_signal(params.sample_rate), params)
    return [round(float(v), 4) for v in feats.mean(axis=0)]


@dataclass(frozen=True)
class Calibration:
    """The card's ``calibration``: a temperature for the probabilities the device judges
    (:func:`serd.decisions.tempered`), fitted by ``serd-train`` on what the model said about
    corpora it had not been trained on (the ``cross_corpus`` folds), where it is
    over-confident, rather than on its own corpora, where it is not."""

    temperature: float = 1.0
    fitted_on: str = ""
    """What the temperature was fitted on (a training record)."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.temperature <= 20:
            raise ValueError(f"calibration temperature {self.temperature} is not in 0.05..20")

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        if not isinstance(d, dict):
            raise TypeError("calibration: expected a JSON object")
        return cls(float(d["temperature"]), str(d.get("fitted_on", "")))


@dataclass(frozen=True)
class ModelCard:
    """Metadata that travels with a model file."""

    name: str
    labels: tuple[str, ...]
    features: FeatureParams
    windows: WindowParams
    normalisation: Normalisation
    sha256: str = ""
    input_dtype: str = "int8"
    frontend_version: int = FRONTEND_VERSION
    fingerprint: tuple[float, ...] = ()
    created: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    voice: VoiceCard | None = None
    """The voice branch (``serd.voice``) whose opinion is fused with the CNN's: its
    version, parameters, trunk digest and fingerprint, head file and digest, and the CNN's
    log weight.  None: the CNN alone."""
    calibration: Calibration = field(default_factory=Calibration)
    """The temperature the device applies to what it judges (1: none)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_format": CARD_FORMAT,
            "name": self.name,
            "description": self.description,
            "created": self.created,
            "labels": list(self.labels),
            "sample_rate": self.features.sample_rate,
            "window_seconds": self.windows.window_seconds,
            "hop_seconds": self.windows.hop_seconds,
            "frontend_version": self.frontend_version,
            "features": self.features.to_dict(),
            "windows": self.windows.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "fingerprint": list(self.fingerprint),
            "model_file": {"sha256": self.sha256, "input_dtype": self.input_dtype},
            "training": self.training,
            "metrics": self.metrics,
            **({"voice": self.voice.to_dict()} if self.voice else {}),
            **({"calibration": self.calibration.to_dict()}
               if self.calibration != Calibration() else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("card_format") != CARD_FORMAT:
            raise ValueError(f"unsupported card_format {data.get('card_format')!r}")
        return cls(
            name=str(data["name"]),
            labels=tuple(str(x) for x in data["labels"]),
            features=FeatureParams(**data["features"]),
            windows=WindowParams(**data["windows"]),
            normalisation=Normalisation.from_dict(data["normalisation"]),
            sha256=str(data.get("model_file", {}).get("sha256", "")),
            input_dtype=str(data.get("model_file", {}).get("input_dtype", "int8")),
            frontend_version=int(data.get("frontend_version", 0)),
            fingerprint=tuple(float(v) for v in data.get("fingerprint", ())),
            created=str(data.get("created", "")),
            description=str(data.get("description", "")),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            voice=_voice_section(data.get("voice")),
            calibration=Calibration.from_dict(data["calibration"])
            if "calibration" in data else Calibration(),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(
                f"model card {path} is missing: every model needs its card beside it "
                "(train with serd-train, which writes both)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"model card {path} is not readable JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model card {path} is invalid: {exc}") from None


def _voice_section(data: Any) -> VoiceCard | None:
    if not data:
        return None
    try:
        return VoiceCard.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the card's voice section is invalid: {exc}") from None


def card_path_for(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".card.json")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_card(card: ModelCard, frontend: FeatureParams | None = None) -> None:
    """Raise :class:`ModelError` unless ``card`` matches the front-end serd computes."""
    ours = frontend or FeatureParams()
    if card.frontend_version != FRONTEND_VERSION:
        raise ModelError(
            f"model {card.name} was made with front-end version {card.frontend_version}, "
            f"this serd computes version {FRONTEND_VERSION}: retrain it with this serd"
        )
    if card.features != ours:
        diffs = [
            f"{k}={v!r} (serd computes {getattr(ours, k)!r})"
            for k, v in card.features.to_dict().items()
            if getattr(ours, k) != v
        ]
        raise ModelError(
            f"model {card.name} expects different features: {', '.join(diffs)}; "
            "retrain it with this serd (serd-train) or use a model made for this version"
        )
    if len(card.normalisation.scale) != ours.n_features:
        raise ModelError(f"model {card.name}: normalisation has the wrong number of coefficients")
    if card.fingerprint:
        now = np.asarray(frontend_fingerprint(ours))
        then = np.asarray(card.fingerprint)
        if now.shape != then.shape or not np.allclose(now, then, atol=2e-3, rtol=1e-3):
            raise ModelError(
                f"model {card.name}: this serd's front-end computes different numbers than "
                "the one it was trained with (fingerprint mismatch): retrain it"
            )


def _interpreter_factory() -> tuple[str, Callable[..., Any]]:
    """The best installed TFLite interpreter: LiteRT, tflite_runtime, then tensorflow.lite."""
    for module, label in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return label, mod.Interpreter
    try:
        tf = importlib.import_module("tensorflow")
    except ImportError:
        raise ModelError(
            "no TFLite runtime is installed: pip install ai-edge-litert "
            "(or tflite-runtime on older systems)"
        ) from None
    return "tensorflow.lite", tf.lite.Interpreter


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int
    dtype: type

    def quantize(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        if self.dtype == np.float32:
            return x.astype(np.float32, copy=False)
        info = np.iinfo(self.dtype)
        q = np.rint(x / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        if self.dtype == np.float32:
            return q.astype(np.float32, copy=False)
        return ((q.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


def _quant(detail: dict[str, Any]) -> QuantParams:
    scale, zero = detail.get("quantization", (0.0, 0))
    return QuantParams(float(scale) or 1.0, int(zero), detail["dtype"])


class Classifier:
    """The model a card describes: the int8 CNN and, if the card has one, the voice branch
    fused with it.  The one place where the two opinions meet: the daemon's pipeline
    classifies through :meth:`stream` (one per channel), and training's evaluation fuses
    through :meth:`fused`, so both compute the same numbers.

    ``__call__(raw_window) -> probabilities`` is the CNN alone: it takes a raw MFCC window
    (frames, n_features), applies the card's normalisation, quantises with the input
    tensor's scale and zero point, invokes, dequantises the output.  ``voice`` is the
    card's voice branch (:mod:`serd.voice`), or None (the CNN alone).
    """

    def __init__(self, model_path: Path, card: ModelCard, num_threads: int = 1,
                 voice: VoiceBranch | None = None) -> None:
        self.voice = voice
        self.path = model_path
        self.card = card
        self.labels = card.labels
        self.name = card.name
        self.sha256 = card.sha256
        self.runtime, factory = _interpreter_factory()
        try:
            # serd -q: LiteRT's C++ "Created ... XNNPACK delegate" line goes to fd 2 here.
            with native_stderr_quiet():
                self._interp = factory(model_path=str(model_path), num_threads=num_threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {model_path} cannot be loaded: {exc}") from None
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in_index = inp["index"]
        self._out_index = out["index"]
        self.input_quant = _quant(inp)
        self.output_quant = _quant(out)
        dtype = np.dtype(inp["dtype"]).name
        if dtype != card.input_dtype:
            raise ModelError(
                f"model {model_path} takes {dtype} input, but its card says {card.input_dtype}: "
                "serd runs full-integer int8 models (export with serd-train, which quantises)"
            )
        win, _ = card.windows.frames(card.features)
        expected = (1, win, card.features.n_features)
        if tuple(inp["shape"]) != expected:
            raise ModelError(
                f"model {model_path} takes input {tuple(inp['shape'])}, but its card "
                f"describes {expected}: card and model do not belong together"
            )
        if tuple(out["shape"]) != (1, len(card.labels)):
            raise ModelError(
                f"model {model_path} has {out['shape'][-1]} outputs, its card names "
                f"{len(card.labels)} labels: card and model do not belong together"
            )
        self.input_shape = expected
        self._buf = np.zeros(expected, dtype=inp["dtype"])

    @property
    def needs_audio(self) -> bool:
        """Whether windows must carry their audio (``Windower(keep_audio=True)``): the
        voice branch reads it."""
        return self.voice is not None

    def stream(self) -> ClassifierStream:
        """A stage for one channel's windows, in stream order (the voice branch's state
        runs along each speech segment)."""
        return ClassifierStream(self)

    def fused(self, cnn: npt.NDArray[np.float32],
              voice_stats: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        """The model's probabilities from the CNN's (one window or a batch) and the voice
        branch's window statistics (:class:`serd.voice.VoiceStream`); the CNN's alone
        without a branch."""
        if self.voice is None or voice_stats is None:
            return cnn
        return self.voice.fused(cnn, voice_stats)

    def __call__(self, window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The int8 CNN's probabilities of one raw MFCC window, without the voice branch
        (:meth:`stream` fuses it)."""
        x = normalise_windows(window, self.card.normalisation)
        self._buf[0] = self.input_quant.quantize(x)
        self._interp.set_tensor(self._in_index, self._buf)
        self._interp.invoke()
        probs = self.output_quant.dequantize(self._interp.get_tensor(self._out_index)[0])
        total = float(probs.sum())
        # int8 softmax outputs are multiples of 1/256 and may not sum to exactly 1.
        return probs / total if total > 0 else np.full_like(probs, 1.0 / len(probs))


class ClassifierStream:
    """``__call__(window) -> probabilities``: one channel's windows through the model, the
    CNN fused with the voice branch when the card has one; ``reset()`` between streams."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        branch = classifier.voice
        self.voice = branch.stream() if branch is not None else None
        # The line's reference outlives streams and utterances: it is the line's.
        self.reference = branch.line_reference() if branch is not None else None

    def reset(self) -> None:
        """A new stream (the voice LSTM's state); the line's reference is kept."""
        if self.voice is not None:
            self.voice.reset()

    def __call__(self, window: Window) -> npt.NDArray[np.float32]:
        probs = self.classifier(window.features)
        if self.voice is None:
            return probs
        stats = self.voice(window)
        if self.reference is not None:
            stats = self.reference(stats)
        return self.classifier.fused(probs, stats)


def load_classifier(
    settings: ModelSettings | None = None, frontend: FeatureParams | None = None
) -> Classifier:
    """Load and check a model and its card; :class:`ModelError` with one line if unusable."""
    settings = settings or ModelSettings()
    path = settings.resolved_path()
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist: set model.path in the config "
            "to a .tflite made by serd-train, or reinstall serd to get the shipped model"
        )
    card = ModelCard.load(card_path_for(path))
    check_card(card, frontend)
    if card.sha256:
        actual = sha256_of(path)
        if actual != card.sha256:
            raise ModelError(
                f"model file {path} does not match its card (SHA-256 {actual[:12]}... vs "
                f"{card.sha256[:12]}...): the file is corrupt or the card belongs to another model"
            )
    clf = Classifier(path, card, settings.num_threads)
    if card.voice and settings.voice:
        # After the CNN's checks, so that a card that does not fit its model (labels,
        # shapes) is named as such, not by the head that follows the card.
        clf.voice = load_voice_branch(path, card, adapt=settings.adapt)
    _LOGGER.info(
        "loaded model %s (%s, %d labels, %s) with %s%s",
        card.name, path.name, len(card.labels), card.sha256[:12], clf.runtime,
        " and its voice branch" if clf.voice else "",
    )
    return clf


def voice_head_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".voice.npz")


def load_voice_branch(model_path: Path, card: ModelCard, adapt: bool = True) -> VoiceBranch:
    """The voice branch a card describes: the trunk (beside the model, else serd's own)
    and the head (``<model>.voice.npz``), both checked against the card's digests, and the
    trunk against the card's fingerprint.  ``adapt``: lines adapt their reference
    (:attr:`ModelSettings.adapt`)."""
    v = card.voice
    if v is None:
        raise ModelError(f"model {card.name} has no voice branch")
    version, params, weight = v.version, v.params, v.cnn_weight
    if version != VOICE_VERSION or params != VoiceParams():
        raise ModelError(
            f"model {card.name} was made with voice branch version {version} "
            f"({params}); this serd computes version {VOICE_VERSION} ({VoiceParams()}): "
            "retrain it with this serd"
        )
    if not 0.0 <= weight <= 1.0:
        raise ModelError(f"model {card.name}: voice cnn_weight {weight} is not in 0..1")
    beside = model_path.with_name(DEFAULT_TRUNK.name)
    trunk_path = beside if beside.is_file() else DEFAULT_TRUNK
    lstm_path = None
    if v.lstm_file and Path(v.lstm_file).name != v.lstm_file:
        raise ModelError(f"model {card.name}: voice lstm_file {v.lstm_file!r} is not a file "
                         "name: the card is damaged")
    if v.lstm_file:
        # Named by the card; beside the model first, as the trunk.
        lstm_path = model_path.with_name(v.lstm_file)
        if not lstm_path.is_file():
            lstm_path = DEFAULT_LSTM.with_name(v.lstm_file)
    try:
        trunk = VoiceTrunk(trunk_path, params, lstm=lstm_path,
                           interpreter=_interpreter_factory()[1])
        if trunk.lite is not None and trunk.lite.sha256 != v.lstm_sha256:
            raise ModelError(
                f"voice LSTM {lstm_path} is not the one model {card.name} was trained with "
                f"(SHA-256 {trunk.lite.sha256[:12]}... vs {v.lstm_sha256[:12]}...): put its "
                f"LSTM beside the model as {v.lstm_file}"
            )
        if trunk.sha256 != v.trunk_sha256:
            raise ModelError(
                f"voice trunk {trunk_path} is not the one model {card.name} was trained with "
                f"(SHA-256 {trunk.sha256[:12]}... vs {v.trunk_sha256[:12]}...): put its trunk "
                f"beside the model as {DEFAULT_TRUNK.name}"
            )
        if v.fingerprint and not np.allclose(
                voice_fingerprint(trunk, fingerprint_signal(params.sample_rate)),
                v.fingerprint, atol=2e-3, rtol=1e-3):
            raise ModelError(
                f"model {card.name}: this serd's voice branch computes different numbers "
                "than the one it was trained with (fingerprint mismatch): retrain it"
            )
        head_path = voice_head_path(model_path)
        if head_path.is_file() and sha256_of(head_path) != v.head_sha256:
            raise ModelError(
                f"voice head {head_path} does not match the card of model {card.name}: "
                "the file is corrupt or belongs to another model"
            )
        head = VoiceHead.load(head_path, len(card.labels), params.n_outputs)
        return VoiceBranch(trunk, head, weight, v.reference, adapt=adapt)
    except VoiceError as exc:
        raise ModelError(str(exc)) from None
