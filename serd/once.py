"""``serd --once`` as library code: one audio file through the daemon's own pipeline.

:func:`analyse_file` decodes a file in blocks (:mod:`serd.decode`) and feeds them to the
same :class:`serd.pipeline.Pipeline` the daemon runs per channel; :class:`FileResult` holds
what the command line prints about it.  The bench and the tests use these directly.

:func:`analyse_channels` follows the channel roles as the daemon does: when
``audio.channels`` names more than one channel (in config.yaml or with ``--channels``), a
multi-channel file is analysed channel by channel, one :class:`FileResult` per analysed
channel, and an agent channel is never analysed but mutes the others while it speaks
(:class:`serd.pipeline.ChannelSet`).  Otherwise a file is mixed to mono, as a single
microphone would hear it, and the result says how many channels were mixed.

:class:`SharedLine` (``serd --once --line``) judges several files as one line: every file
analysed with it feeds one voice reference per channel (:class:`serd.voice.LineReference`),
and after :meth:`SharedLine.freeze` every file is judged against what that line heard, as
the evaluation judges a corpus against a warmed reference (``train.voice.warm_reference``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from serd.roles import LAWFUL_USE_DOC, UNSPECIFIED, Channel
from serd.voice import LineReference

if TYPE_CHECKING:
    from serd.capture import AudioSettings
    from serd.config import Config
    from serd.decisions import Decision, Verdict
    from serd.decode import AudioInfo
    from serd.model import Classifier
    from serd.pipeline import ChannelSet

MIXED = Channel(0, "main", UNSPECIFIED, analysed=True, declared=False)
"""How a file is analysed when its channels are mixed although several are named."""


class FileResult:
    """Everything ``--once`` prints about one file (or one channel of it)."""

    def __init__(self, path: Path, duration_s: float, speech_s: float,
                 decisions: list[Decision], labels: tuple[str, ...], threshold: float,
                 hop_s: float, *, channel: str = "main", role: str = UNSPECIFIED,
                 split: bool = False, mixed_channels: int = 1, muted_s: float = 0.0,
                 temperature: float = 1.0) -> None:
        """``temperature``: the card's calibration, applied to the summary as the daemon's
        decisions apply it to an utterance's mean (:func:`serd.decisions.tempered`)."""
        from serd.decisions import tempered, verdict  # noqa: PLC0415

        self.path = path
        self.duration_s = duration_s
        self.speech_s = speech_s
        self.decisions = decisions
        self.labels = labels
        self.hop_s = hop_s
        self.channel = channel
        """The channel's name (``main`` for a mono or mixed file, unless configured)."""
        self.role = role
        """The channel's role (serd.roles); never agent."""
        self.split = split
        """True when this is one channel of a file analysed channel by channel."""
        self.mixed_channels = mixed_channels
        """How many of the file's channels were averaged into this one (1: none)."""
        self.muted_s = muted_s
        """Seconds of this channel muted because an agent channel was speaking
        (serd.crosstalk)."""
        windows = [d for d in decisions if d.type == "window"]
        self.summary: Verdict | None = None
        if windows:
            import numpy as np  # noqa: PLC0415

            mean = np.mean([d.raw_probs for d in windows], axis=0).astype(np.float32)
            self.summary = verdict(labels, tempered(mean, temperature), threshold)


class SharedLine:
    """The files of one ``serd --once --line`` run as one line: one voice reference per
    channel name, shared by every file analysed with it.

    A device's line learns its reference from its own speech as it goes, so its first
    calls are judged against the model's prior and its later ones against the line.  A
    file analysed alone is always a line's first call.  Two passes over the same files
    (:meth:`hear` each, then :meth:`freeze`, then :func:`analyse_channels` with this line)
    give every file the reference the line has after hearing them all, the same for each
    file whatever its place in the run.  The reference is a mean over the line's windows,
    so it stands for a line only when the files are like one: mostly neutral speech,
    several speakers; a folder of one emotion becomes that line's normal."""

    def __init__(self) -> None:
        self._hearing: dict[str, _Hearing] = {}
        self._files: set[Path] = set()
        self.references: dict[str, LineReference] = {}
        """After :meth:`freeze`: the frozen reference of each channel name."""
        self.frozen = False

    def hear(self, cfg: Config, clf: Classifier, path: Path) -> bool:
        """First pass: the line hears one file, once however often it is named (False: heard
        already).  Raises :class:`serd.decode.AudioError` as :func:`analyse_channels` does;
        a file that fails, even part-way through, leaves the line as it was."""
        from serd.decode import AudioError  # noqa: PLC0415

        if self.frozen:
            raise RuntimeError("the line is frozen: it hears no more files")
        key = Path(path).resolve()
        if key in self._files:
            return False
        saved = {name: h.checkpoint() for name, h in self._hearing.items()}
        try:
            analyse_channels(cfg, clf, path, self)
        except (AudioError, MemoryError):
            for name in list(self._hearing):
                if name in saved:
                    self._hearing[name].rollback(saved[name])
                else:
                    del self._hearing[name]
            raise
        self._files.add(key)
        return True

    def attach(self, channels: ChannelSet) -> None:
        """Give each analysed channel of ``channels`` the line's reference of its name:
        while hearing, one that only listens; once frozen, the line's frozen reference."""
        for c, pipe in zip(channels.analysed, channels.pipelines, strict=True):
            own = pipe.model.reference
            if own is None:
                continue
            if not self.frozen:
                if c.name not in self._hearing:
                    self._hearing[c.name] = _Hearing(own)
                pipe.model.reference = self._hearing[c.name]
                continue
            if c.name not in self.references:
                # A channel the line never heard (its file could not be read then): the
                # prior, as a new line's.
                own.adapt = False
                self.references[c.name] = own
            pipe.model.reference = self.references[c.name]

    def freeze(self) -> None:
        """From now on the references only judge: the files are not heard twice."""
        self.frozen = True
        self.references = {name: h.frozen() for name, h in self._hearing.items()}

    @property
    def heard(self) -> dict[str, int]:
        """Windows of speech heard per channel name (every one, beyond the reference's
        memory too)."""
        return {name: h.heard for name, h in self._hearing.items()}

    @property
    def windows(self) -> int:
        """Windows of speech the line has heard (the most of any channel)."""
        return max(self.heard.values(), default=0)


class _Hearing(LineReference):
    """A line's first pass: the plain mean of every window it hears, in float64 and with no
    memory limit, so that the order of the files does not matter (a device's reference
    forgets its oldest speech after ``memory_windows``, which would favour the last files).
    What it judges meanwhile is not used."""

    def __init__(self, own: LineReference) -> None:
        super().__init__(own.prior, own.params, adapt=True)
        self.total = np.zeros(self.prior.shape, np.float64)
        self.heard = 0

    def update(self, stats: npt.ArrayLike) -> None:
        self.total += np.asarray(stats, np.float64)
        self.heard += 1

    def checkpoint(self) -> tuple[npt.NDArray[np.float64], int]:
        return self.total.copy(), self.heard

    def rollback(self, state: tuple[npt.NDArray[np.float64], int]) -> None:
        self.total, self.heard = state[0].copy(), state[1]

    def frozen(self) -> LineReference:
        """The reference of a line that has heard all of it, judging only: its mean weighs
        against the prior as at most ``memory_windows`` windows, as on a device."""
        ref = LineReference(self.prior, self.params, adapt=True)
        if self.heard:
            ref.restore(min(self.heard, self.params.memory_windows),
                        (self.total / self.heard).astype(np.float32))
        ref.adapt = False
        return ref


def adapts(clf: Classifier) -> bool:
    """Whether ``clf``'s lines learn a reference at all: a voice branch whose head was
    trained relative to a line, with ``model.adapt`` on."""
    branch = clf.voice
    return bool(branch is not None and branch.head.reference is not None and branch.adapt)


def analyse_file(cfg: Config, clf: Classifier, path: Path) -> FileResult:
    """Run one file, mixed to mono, through the pipeline; raises
    :class:`serd.decode.AudioError`."""
    from serd.decode import probe  # noqa: PLC0415

    info = probe(path)
    return _run(cfg, clf, path, info, [_single(cfg.audio)], mix=True)[0]


def analyse_channels(cfg: Config, clf: Classifier, path: Path,
                     line: SharedLine | None = None) -> list[FileResult]:
    """One result per analysed channel when several channels are named and the file has
    several; else the file mixed to mono (one result).  Raises
    :class:`serd.decode.AudioError`, also when the file has fewer channels than named.
    ``line``: judge the file as part of that line (:class:`SharedLine`)."""
    from serd.decode import AudioError, probe  # noqa: PLC0415

    info = probe(path)
    named = cfg.audio.resolved_channels
    if len(named) < 2:
        return _run(cfg, clf, path, info, [_single(cfg.audio)], mix=True, line=line)
    if info.channels == 1:
        # A recording of one mixed line: there is no agent channel to tell voices apart.
        # It can only be analysed as 'unspecified', and only where the deployer allows
        # that role (the daemon and --publish refuse it too).
        if not MIXED.analysed or MIXED.role not in cfg.audio.analyse_roles:
            raise AudioError(
                f"has one channel, a mixed line that carries the agent's voice too; it "
                f"could only be analysed as '{MIXED.role}', which audio.analyse_roles "
                f"({', '.join(cfg.audio.analyse_roles)}) does not allow: not analysed "
                f"(use a recording with the channels apart, see {LAWFUL_USE_DOC})")
        return _run(cfg, clf, path, info, [MIXED], mix=True, line=line)
    if info.channels < len(named):
        raise AudioError(
            f"has {info.channels} channels but audio.channels names {len(named)} "
            f"({', '.join(c.name for c in named)}); name as many as the file has")
    return _run(cfg, clf, path, info, named, mix=False, line=line)


def _single(audio: AudioSettings) -> Channel:
    """The one configured channel (validation guarantees it is analysed)."""
    channels = audio.resolved_channels
    return channels[0] if len(channels) == 1 else MIXED


def _run(cfg: Config, clf: Classifier, path: Path, info: AudioInfo, channels: list[Channel],
         *, mix: bool, line: SharedLine | None = None) -> list[FileResult]:
    from serd.decode import read_blocks  # noqa: PLC0415
    from serd.pipeline import ChannelSet  # noqa: PLC0415

    rate = clf.card.features.sample_rate
    if mix:
        # The mono stream is column 0, whatever the channel's index on a device.
        channels = [Channel(0, c.name, c.role, c.analysed, c.declared) for c in channels]
    cs = ChannelSet(clf, channels, vad=cfg.vad, decisions=cfg.decisions,
                    crosstalk=cfg.audio.bleed_mute)
    if line is not None:
        line.attach(cs)
    by_channel: dict[str, list[Decision]] = {c.name: [] for c in cs.analysed}
    for block in read_blocks(info.path, rate, block_seconds=0.5, info=info, mix=mix):
        for d in cs(block if mix else block[:, : cs.width]):
            by_channel[d.channel].append(d)
    for d in cs.flush():
        by_channel[d.channel].append(d)
    out = []
    for c, pipe, mute in zip(cs.analysed, cs.pipelines, cs.mutes, strict=True):
        out.append(FileResult(
            path, pipe.windower.samples_in / rate, pipe.windower.speech_samples / rate,
            by_channel[c.name], clf.labels, cfg.decisions.threshold,
            clf.card.windows.hop_seconds, channel=c.name, role=c.role, split=not mix,
            mixed_channels=info.channels if mix else 1,
            muted_s=mute.muted_seconds if mute is not None else 0.0,
            temperature=clf.card.calibration.temperature))
    return out


def mixing_note(result: FileResult, audio: AudioSettings) -> tuple[str, str] | None:
    """``(kind, line)`` when ``result`` was mixed although its file has several channels, or
    analysed as one line although several are named; the command line says each kind once."""
    names = audio.channel_names
    if len(names) > 1 and not result.split:
        return ("one-channel", f"{result.path} has one channel: analysed as one mixed line "
                f"'{result.channel}' (role {result.role}), although audio.channels names "
                f"{', '.join(names)}; such a recording also carries the agent's voice "
                "(docs/lawful-use.md)")
    if result.mixed_channels > 1:
        return ("mixed", f"{result.path} has {result.mixed_channels} channels: mixed to one "
                f"(channel '{result.channel}', role {result.role}); name them to analyse each "
                "apart, e.g. --channels agent,customer or audio.channels in the config")
    return None
