"""Training configuration: ``train/config.yaml`` deep-merged with a user file and --set,
validated into one frozen dataclass tree (:class:`TrainConfig`).

``train/config.yaml`` holds every key with its default (and its comments are the reference);
``serd-train --config FILE`` merges a user file over it (only the keys that differ), then
each ``--set a.b=value`` replaces one key (the value parsed as YAML, so lists and mappings
work: ``--set model.filters=[48,64,96,128]``).  The merged mapping is then validated: an
unknown key or a bad value is a :class:`TrainConfigError` (a
:class:`~train.corpora.CorpusError`) whose message is one line naming the key and what is
allowed, as for the daemon's own configuration (:mod:`serd.config`), by the same validator
(:func:`serd.validate.build`); ``serd-train`` prints it and exits with status 2.

A protocol's (and the final model's) ``training:`` is a partial ``training`` section: it is
merged over the top-level ``training`` and the result validated, so
:attr:`ProtocolConfig.training` is the complete section that protocol trains with.

Numbers: a float key accepts an integer and keeps it as written (``float`` and ``int``
compare equal).  The augmentation and VAD values go into the feature cache's keys as JSON,
where ``1`` and ``1.0`` differ, so converting them would silently invalidate caches that
were extracted with an integer in the configuration.  This is ``as_written=True`` of
:func:`serd.validate.build`, which also refuses null for a section (the daemon reads it as
all of the section's defaults; here the defaults are ``train/config.yaml``'s, not the
dataclass's).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from serd.features import FeatureParams, WindowParams
from serd.gate import VadSettings
from serd.normalise import channel_indices
from serd.validate import ConfigError, build, deep_merge, read_yaml, require
from serd.voice import ReferenceParams
from train.augment import AugmentParams
from train.corpora import CANONICAL, CorpusError
from train.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"

T = TypeVar("T")


class TrainConfigError(CorpusError):
    """A key or value of the training configuration is wrong; the message is one line that
    names the key and what is allowed."""


# -- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaxonomyConfig:
    """``taxonomies.<name>``: the labels a model predicts (see :mod:`train.taxonomy`)."""

    labels: tuple[str, ...]
    """The model's outputs, in this order: canonical emotion names."""
    train_map: dict[str, str] = field(default_factory=dict)
    """Emotions outside ``labels`` that are trained as one of the labels (``{calm: neutral}``);
    every other emotion is dropped.  Evaluation only uses files whose own label is a label."""

    def __post_init__(self) -> None:
        require(len(self.labels) >= 2, "labels", "needs at least 2 emotions")
        dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
        require(not dup, "labels", f"{dup} appear more than once")
        unknown = [x for x in self.labels if x not in CANONICAL]
        require(not unknown, "labels",
                f"unknown emotions {unknown}; known: {', '.join(CANONICAL)}")
        unknown = [x for x in self.train_map if x not in CANONICAL]
        require(not unknown, "train_map",
                f"unknown emotions {unknown}; known: {', '.join(CANONICAL)}")
        own = [x for x in self.train_map if x in self.labels]
        require(not own, "train_map", f"{own} are labels already (they train as themselves)")
        bad = sorted({v for v in self.train_map.values() if v not in self.labels})
        require(not bad, "train_map",
                f"targets {bad} are not labels; use one of {', '.join(self.labels)}")

    def taxonomy(self, name: str) -> Taxonomy:
        return Taxonomy(name, tuple(self.labels), dict(self.train_map))


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training`` section: optimiser, augmentation in the batch, early stopping.

    Field order is the order of ``train/config.yaml``: it is the order of the ``training``
    mapping in ``cv-*.json`` (written with :func:`dataclasses.asdict`)."""

    epochs: int
    """Most epochs (one epoch: one rendering, clean or augmented, of every training file)."""
    patience: int
    """Stop after this many epochs without a better selection score."""
    batch_size: int
    """Windows per batch."""
    learning_rate: float
    """Peak learning rate of the cosine schedule (AdamW)."""
    weight_decay: float
    """AdamW's decoupled weight decay."""
    label_smoothing: float
    """Cross-entropy label smoothing, 0..1."""
    mixup_alpha: float
    """Beta(alpha, alpha) of mixup between windows; 0 = no mixup."""
    time_masks: int
    """SpecAugment time masks per window."""
    time_mask_frames: int
    """Widest time mask, in feature frames (10 ms each)."""
    coef_masks: int
    """SpecAugment masks over feature channels per window."""
    coef_mask_width: int
    """Widest channel mask, in channels."""
    early_stop_fraction: float
    """Share of the training speakers held out for early stopping, between 0 and 1."""
    class_weighting: bool
    """Weight the loss by inverse class frequency."""
    select: Literal["smooth_bacc", "bacc", "loss"]
    """What picks the epoch: balanced accuracy on the early-stop speakers smoothed over
    ``smooth_epochs``, plain balanced accuracy, or the balanced log loss."""
    smooth_epochs: int
    """Epochs averaged by ``select: smooth_bacc``."""
    min_epochs: int
    """Epochs before this are never picked (and do not count towards ``patience``)."""
    representative_windows: int
    """Normalised training windows that calibrate the int8 conversion."""
    max_files_per_corpus: int = 0
    """Train the CNN on at most this many files of each corpus (a seeded random subset of
    its training files; early stopping and tests keep every file); 0: every file.  Bounds
    the time and memory of a run as corpora are added.  The voice head has its own cap,
    :attr:`VoiceConfig.max_files_per_corpus`."""
    corpus_balance: bool = False
    """With ``class_weighting``: weight each (corpus, class) cell instead of each class, so
    that every class weighs the same in the loss and, within a class, every corpus that
    has it weighs the same (a large corpus no longer sets the decision boundaries)."""

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.patience >= 1, "patience", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0 (0: no mixup)")
        for key in ("time_masks", "time_mask_frames", "coef_masks", "coef_mask_width",
                    "min_epochs"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(0 < self.early_stop_fraction < 1, "early_stop_fraction",
                "must be between 0 and 1 (a share of the training speakers)")
        require(self.smooth_epochs >= 1, "smooth_epochs", "must be >= 1")
        require(self.representative_windows >= 1, "representative_windows", "must be >= 1")
        require(self.max_files_per_corpus >= 0, "max_files_per_corpus",
                "must be >= 0 (0: every file)")


@dataclass(frozen=True)
class ProtocolConfig:
    """``protocols.<name>``: a speaker-disjoint cross-validation protocol."""

    corpora: tuple[str, ...] | None
    """The tested corpora: their speakers make the folds.  null (``split: corpus`` only):
    every corpus found under ``corpora_roots``, however many roots are given."""
    taxonomy: str
    """A name under ``taxonomies``."""
    training: TrainingConfig
    """The top-level ``training`` with this protocol's ``training:`` merged over it (in the
    file a partial section, only the keys that differ; empty or absent: none)."""
    folds: int | None = None
    """Number of speaker folds (``split: speakers``, at least 2)."""
    split: Literal["speakers", "corpus"] = "speakers"
    """``speakers``: k folds of speakers; ``corpus``: leave one corpus out (a fold per
    corpus: train on the others, test every speaker of that one)."""
    extra_train_corpora: tuple[str, ...] = ()
    """Corpora only ever trained on: never tested nor used for early stopping."""

    def __post_init__(self) -> None:
        require(bool(self.corpora) or (self.corpora is None and self.split == "corpus"),
                "corpora", "needs at least one corpus (null, every corpus found: only with "
                "split: corpus)")
        if self.split == "speakers":
            require(self.folds is not None and self.folds >= 2, "folds",
                    "must be an integer >= 2 with split: speakers")
        else:
            require(self.folds is None, "folds",
                    "is only for split: speakers (split: corpus has one fold per corpus)")
            require(self.corpora is None or len(self.corpora) >= 2, "corpora",
                    "split: corpus (leave one corpus out) needs at least 2 corpora")
        both = sorted(set(self.corpora or ()) & set(self.extra_train_corpora))
        require(not both, "extra_train_corpora", f"{both} are tested corpora already")

    @property
    def all_corpora(self) -> list[str] | None:
        """Every corpus the protocol reads: the tested ones, then the training-only extras
        (None: every corpus found)."""
        if self.corpora is None:
            return None
        return list(self.corpora) + list(self.extra_train_corpora)


@dataclass(frozen=True)
class FinalConfig:
    """``final``: the shipped model (``serd-train fit`` / ``all``)."""

    name: str
    """Writes ``<out>/<name>.tflite`` and ``<name>.card.json``."""
    taxonomy: str
    """A name under ``taxonomies``."""
    corpora: tuple[str, ...] | None
    """Corpora trained on; null: every corpus found under ``corpora_roots``."""
    cv_protocol: str | None
    """The CV protocol whose recipe this model follows (a name under ``protocols``, or null);
    documentation only, not read: the card gets the metrics of every saved ``cv-*.json``."""
    training: TrainingConfig
    """The top-level ``training`` with ``final.training`` merged over it (as a protocol's)."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                "name", "must be a file name (no '/')")
        if self.corpora is not None:
            require(bool(self.corpora), "corpora",
                    "needs at least one corpus (null: every corpus found)")


@dataclass(frozen=True)
class WindowsConfig:
    """``windows``: the length of the classified window (the card's, which the daemon
    follows) and how training windows are cut (evaluation uses the daemon's hop and VAD)."""

    window_seconds: float
    """Length of the windows the model classifies, seconds: its input, recorded in the card,
    which the daemon follows.  A longer window gives the model more context per verdict and
    delays the first verdict of an utterance."""
    train_hop_seconds: float
    """Hop between training windows, seconds (denser than the daemon's 0.5 s)."""
    train_vad: dict[str, Any] | None
    """VAD for training windows only: keys of the daemon's ``vad`` section
    (:class:`serd.gate.VadSettings`, e.g. ``threshold_db``, ``min_speech_seconds``); keys not
    given keep the daemon's defaults; null: the daemon's VAD.  Kept as given (validated),
    since the card records exactly these keys."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.window_seconds <= 10.0:
            # 0.5 s is the shortest segment the daemon classifies, and less is too little
            # speech for an emotion; 10 s is far beyond an utterance.
            raise ValueError("window_seconds: must be between 0.5 and 10 seconds")
        try:
            self.train_windows()
        except ValueError:
            raise ValueError(f"train_hop_seconds: must be > 0 and <= window_seconds "
                             f"({self.window_seconds:g} s)") from None
        self.train_vad_settings()

    def windows(self) -> WindowParams:
        """The daemon's windows for this model: evaluation and the card (hop: serd's default)."""
        return WindowParams(window_seconds=float(self.window_seconds))

    def train_windows(self) -> WindowParams:
        """Training windows: the same length, the denser training hop.  (float(): a YAML
        integer such as ``3`` must give the same cache key as ``3.0``.)"""
        return WindowParams(window_seconds=float(self.window_seconds),
                            hop_seconds=float(self.train_hop_seconds))

    def train_vad_settings(self) -> VadSettings:
        """The training VAD (values exactly as configured: they enter the cache keys)."""
        return _build(VadSettings, self.train_vad or {}, "train_vad")


_CENTRED_HINT = "'all' or a list of channel names such as [c0, log_f0]"


@dataclass(frozen=True)
class NormalisationConfig:
    """``normalisation``: what the card's normalisation does to a window (serd/normalise.py)."""

    window_centred: Literal["all"] | tuple[str, ...] = field(
        metadata={"expected": _CENTRED_HINT})
    """Channels that lose their mean over each window (``c0``..``c39``, ``voicing``,
    ``log_f0``); the others lose their training mean.  ``all``: every channel."""

    def __post_init__(self) -> None:
        self.centred_channels(FeatureParams())

    def centred_channels(self, features: FeatureParams) -> tuple[int, ...] | None:
        """``window_centred`` as channel indices of ``features`` (``None``: every channel)."""
        if self.window_centred == "all":
            return None
        try:
            return channel_indices(list(self.window_centred), features)
        except ValueError as exc:
            raise ValueError(f"window_centred: {exc}") from None


@dataclass(frozen=True)
class AugmentConfig:
    """``augment``: waveform augmentation of the training files (see :mod:`train.augment`)."""

    copies: int
    """Augmented copies per file, precomputed and cached (besides the clean rendering)."""
    params: AugmentParams
    """Probabilities and ranges of one augmented copy."""

    def __post_init__(self) -> None:
        require(self.copies >= 0, "copies", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the CNN (see :mod:`train.model`).  ``filters``, ``kernels`` and ``pool``
    have one entry per convolution layer."""

    members: int
    """Independent CNNs whose probabilities are averaged, in one int8 file."""
    filters: tuple[int, ...]
    """Output channels of each convolution layer."""
    kernels: tuple[int, ...]
    """Kernel size of each convolution layer, in feature frames (10 ms each, before pooling)."""
    pool: tuple[int, ...]
    """Max-pooling factor over time after each layer (1: none)."""
    pooling: Literal["mean_std", "mean_max"]
    """Pooling over time: mean and standard deviation (statistics pooling) or mean and max."""
    dropout: float
    """Dropout rate before the softmax layer, 0..1."""

    def __post_init__(self) -> None:
        require(self.members >= 1, "members", "must be >= 1")
        require(bool(self.filters), "filters", "needs at least one layer")
        for key in ("kernels", "pool"):
            n = len(getattr(self, key))
            require(n == len(self.filters), key,
                    f"has {n} entries but filters has {len(self.filters)}; filters, kernels "
                    "and pool need one entry per convolution layer")
        for key in ("filters", "kernels", "pool"):
            require(all(v >= 1 for v in getattr(self, key)), key, "every entry must be >= 1")
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class VoiceConfig:
    """``voice``: the voice branch (:mod:`serd.voice`), a logistic regression over the
    pretrained trunk's window statistics, trained per fold beside the CNN and fused with it."""

    enabled: bool
    """Train the branch and fuse it (false: the CNN alone, as up to serd 0.x's model 1)."""
    cnn_weight: float
    """The CNN's log weight in the fusion, 0..1 (the branch gets the rest)."""
    c: float
    """Inverse L2 strength of the regression (scikit-learn's ``C``)."""
    telephone: bool
    """Fit on the telephone renderings of the training windows as well as the clean ones."""
    line_reference: bool = False
    """Fit the head on statistics relative to their domain (corpus and rendering) and let
    each device line adapt its reference (:class:`serd.voice.LineReference`)."""
    warm_utterances: int = 200
    """Evaluation with a reference: each test domain's line has heard this many of its
    utterances (a seeded, mostly neutral stream) before it is scored; 0: the prior only."""
    prior_windows: float = 100.0
    """:attr:`serd.voice.ReferenceParams.prior_windows`."""
    memory_windows: int = 2000
    """:attr:`serd.voice.ReferenceParams.memory_windows`."""
    neutral_share: float = 0.6
    """:attr:`serd.voice.ReferenceParams.neutral_share`."""
    augment_copies: int = 0
    """Augmented copies of each training file (:mod:`train.augment`, the CNN's recipe:
    speed, gain, shift, reverb, noise, telephone) whose window statistics the head is
    also fitted on, each copy its own domain; 0: the clean (and telephone) renderings
    only.  Evaluation never sees them."""
    max_files_per_corpus: int = 0
    """The head's own cap on training files per corpus (a seeded subset; 0: every file).
    The training section's cap bounds the CNN's time; the regression is cheap, and across
    corpora it is what travels, so it is not bound by that cap."""

    def __post_init__(self) -> None:
        require(0 <= self.cnn_weight <= 1, "cnn_weight", "must be in [0, 1]")
        require(self.c > 0, "c", "must be > 0")
        require(self.warm_utterances >= 0, "warm_utterances", "must be >= 0")
        require(self.prior_windows >= 0, "prior_windows", "must be >= 0")
        require(self.memory_windows >= 1, "memory_windows", "must be >= 1")
        require(0 <= self.neutral_share <= 1, "neutral_share", "must be in [0, 1]")
        require(self.augment_copies >= 0, "augment_copies", "must be >= 0 (0: none)")
        require(self.max_files_per_corpus >= 0, "max_files_per_corpus",
                "must be >= 0 (0: every file)")

    def reference(self) -> ReferenceParams | None:
        """The branch's reference parameters (None: absolute statistics)."""
        if not self.line_reference:
            return None
        return ReferenceParams(prior_windows=self.prior_windows,
                               memory_windows=self.memory_windows,
                               neutral_share=self.neutral_share)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``serd-train`` reads from ``train/config.yaml`` (plus ``--config``, ``--set``
    and its options).  Plain data: it pickles for the CV fold worker processes."""

    corpora_roots: tuple[str, ...]
    """Folders searched for corpora; relative paths are taken from the repository root."""
    cache_dir: str | None
    """Feature cache; null: ``$SERD_CACHE``, else ``~/.cache/serd/features``."""
    seed: int
    """Seeds folds, augmentation and training (fold k trains with seed + k)."""
    jobs: int
    """Worker processes for feature extraction; TensorFlow threads."""
    parallel_folds: int
    """CV folds trained side by side, each in its own process with jobs / parallel_folds
    TensorFlow threads."""
    taxonomies: dict[str, TaxonomyConfig]
    protocols: dict[str, ProtocolConfig]
    """CV protocols by name (``serd-train cv --protocol NAME``), in the order ``all`` runs them."""
    final: FinalConfig
    windows: WindowsConfig
    normalisation: NormalisationConfig
    augment: AugmentConfig
    model: ModelConfig
    training: TrainingConfig
    """The training recipe; protocols and ``final`` may override parts of it."""
    voice: VoiceConfig
    """The voice branch fused with the CNN."""

    def __post_init__(self) -> None:
        require(bool(self.corpora_roots), "corpora_roots", "needs at least one folder")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.jobs >= 1, "jobs", "must be >= 1")
        require(self.parallel_folds >= 1, "parallel_folds", "must be >= 1")
        names = ", ".join(self.taxonomies) or "(none)"
        for name, p in self.protocols.items():
            require(p.taxonomy in self.taxonomies, f"protocols.{name}.taxonomy",
                    f"{p.taxonomy!r} is not under taxonomies; use one of {names}")
        require(self.final.taxonomy in self.taxonomies, "final.taxonomy",
                f"{self.final.taxonomy!r} is not under taxonomies; use one of {names}")
        # final.cv_protocol is not checked against protocols: it is documentation, and
        # `--set 'protocols={mine: ...}'` (docs/training.md) replaces the protocols it names.


# -- validation -------------------------------------------------------------------------


def _build(cls: type[T], data: Any, path: str) -> T:
    """:func:`serd.validate.build`, keeping values as written (see the module docstring)."""
    return build(cls, data, path, as_written=True)


@contextmanager
def _train_errors() -> Iterator[None]:
    """A :class:`serd.validate.ConfigError` (from the validator or the YAML reader that
    serd-train shares with the daemon) as a :class:`TrainConfigError`, same message."""
    try:
        yield
    except ConfigError as exc:
        raise TrainConfigError(str(exc)) from None


def parse(data: Any) -> TrainConfig:
    """Validate a merged configuration mapping (``train/config.yaml`` + file + ``--set``)."""
    if not isinstance(data, Mapping):
        raise TrainConfigError("the configuration must be a mapping of keys to values "
                               f"(like train/config.yaml), not {type(data).__name__}")
    data = dict(data)
    with _train_errors():
        if "training" in data:
            # Validated on its own first, so that its errors name ``training.*``, not the
            # first protocol that inherits them.
            _build(TrainingConfig, data["training"], "training")
            base = data["training"]
            protocols = data.get("protocols")
            if isinstance(protocols, Mapping):
                data["protocols"] = {name: _with_training(p, base, f"protocols.{name}")
                                     for name, p in protocols.items()}
            if "final" in data:
                data["final"] = _with_training(data["final"], base, "final")
        return _build(TrainConfig, data, "")


def _with_training(section: Any, base: Mapping[str, Any], path: str) -> Any:
    """A protocol's (or ``final``'s) mapping with its partial ``training`` merged over
    ``base``; anything else is returned for :func:`_build` to refuse."""
    if not isinstance(section, Mapping):
        return section
    over = section.get("training")
    if over is None:
        over = {}
    if not isinstance(over, Mapping):
        raise TrainConfigError(f"{path}.training: expected a mapping of training keys to "
                               f"values (only those that differ), got {over!r}")
    return {**section, "training": deep_merge(base, over)}


# -- files and --set ----------------------------------------------------------------------


def set_path(cfg: dict[str, Any], dotted: str, value: str) -> None:
    """``--set training.epochs=30``: the value is parsed as YAML and replaces the key (a
    mapping too: ``--set protocols={mine: {...}}`` leaves only ``mine``)."""
    keys = dotted.split(".")
    if not all(keys):
        raise TrainConfigError(f"--set {dotted}={value}: the key must be dotted names such "
                               "as training.epochs")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "syntax error"
        raise TrainConfigError(f"--set {dotted}: the value {value!r} is not valid YAML: "
                               f"{problem}") from None
    node = cfg
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise TrainConfigError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is a value "
                                   f"({node[k]!r}), not a section with keys")
        node = node[k]
    node[keys[-1]] = parsed


def load_raw(path: str | Path | None = None, sets: Sequence[str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merged, not yet validated mapping: defaults, ``path``, ``sets``, ``overrides``
    (top-level keys from ``serd-train``'s options: ``--corpora``, ``--cache``...)."""
    with _train_errors():
        cfg: dict[str, Any] = dict(read_yaml(DEFAULT_CONFIG))
    if path:
        p = Path(path).expanduser()
        with _train_errors():
            user = read_yaml(p)
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise TrainConfigError(f"{p}: the file must be a mapping of keys to values (like "
                                   f"train/config.yaml), not {type(user).__name__}")
        cfg = deep_merge(cfg, user)
    for s in sets or []:
        if "=" not in s:
            raise TrainConfigError(f"--set wants key=value, got {s!r}")
        k, v = s.split("=", 1)
        set_path(cfg, k.strip(), v)
    cfg.update(copy.deepcopy(dict(overrides or {})))
    return cfg


def load_config(path: str | Path | None = None, sets: Sequence[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """``train/config.yaml``, merged with ``path`` and ``sets`` (see :func:`load_raw`), as a
    validated :class:`TrainConfig`; a bad key or value is a :class:`TrainConfigError`."""
    return parse(load_raw(path, sets, overrides))


def resolve(path: str | Path) -> Path:
    """A config path: ``~`` expanded, relative paths taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO / p).resolve()
