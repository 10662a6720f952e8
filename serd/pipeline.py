"""One channel's processing path: gate -> features -> windows -> classifier -> decisions.

With a voice branch on the card (``serd.voice``), the classifier stage also runs each
window's audio through it and fuses the two opinions.

The daemon runs one :class:`Pipeline` per analysed channel; ``serd --once`` runs the very
same class on a file's blocks, so both give the same windows and labels on the same audio.
:class:`ChannelSet` holds the pipelines of a multi-channel line: only the channels whose
role is analysed get one (:mod:`serd.roles`), and an agent channel only feeds the bleed
muting (:mod:`serd.crosstalk`) that keeps the agent's voice out of the others' windows.
Time is counted in samples at the model rate since the stream began, and reported in
seconds (``start_s``/``end_s``); the daemon turns those into wall-clock timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from serd.crosstalk import Crosstalk, CrosstalkSettings
from serd.decisions import Decider, Decision, DecisionSettings, Verdict
from serd.gate import VadSettings
from serd.model import Classifier, ModelError
from serd.roles import Channel
from serd.speechcheck import SpeechCheckError
from serd.windows import SegmentEnd, SegmentStart, Window, Windower


@dataclass
class StageTimes:
    """Seconds spent per stage (perf_counter), for the bench and the health topic."""

    gate: float = 0.0
    features: float = 0.0
    inference: float = 0.0
    decisions: float = 0.0

    def total(self) -> float:
        return self.gate + self.features + self.inference + self.decisions


class Pipeline:
    """``__call__(audio_at_model_rate) -> [Decision, ...]``; ``flush()`` at end of stream."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        vad: VadSettings | None = None,
        decisions: DecisionSettings | None = None,
        channel: str = "main",
    ) -> None:
        self.classifier = classifier
        self.channel = channel
        card = classifier.card
        self.sample_rate = card.features.sample_rate
        # A voice branch reads each window's audio as well as its MFCCs.
        # With vad.confirm: silero the gate loads the speech check's weights as it is
        # built: a missing or damaged file stops serd as it starts, in one line (exit 65;
        # --check-config too), not at the first word.
        try:
            self.windower = Windower(card.features, card.windows, vad,
                                     keep_audio=classifier.needs_audio)
        except SpeechCheckError as exc:
            raise ModelError(str(exc)) from None
        self.decider = Decider(card.labels, decisions, card.calibration.temperature)
        # The model, fused with its voice branch (whose LSTM state runs along this
        # channel's speech segments) when the card has one.
        self.model = classifier.stream()
        self._times = StageTimes()
        self.windows_classified = 0

    def reset(self) -> None:
        self.windower.reset()
        self.decider.reset()
        self.model.reset()

    @property
    def in_speech(self) -> bool:
        return self.windower.in_speech

    @property
    def times(self) -> StageTimes:
        w = self.windower
        return StageTimes(
            gate=w.seconds_total - w.seconds_features,
            features=w.seconds_features,
            inference=self._times.inference,
            decisions=self._times.decisions,
        )

    def __call__(self, audio: npt.ArrayLike) -> list[Decision]:
        return self._handle(self.windower(audio))

    def flush(self) -> list[Decision]:
        """End of stream: close an open utterance."""
        return self._handle(self.windower.flush())

    def _handle(self, items: list[Window | SegmentStart | SegmentEnd]) -> list[Decision]:
        out: list[Decision] = []
        for item in items:
            if isinstance(item, Window):
                t0 = time.perf_counter()
                probs = self.model(item)
                t1 = time.perf_counter()
                v = self.decider(probs)
                self._times.inference += t1 - t0
                self._times.decisions += time.perf_counter() - t1
                self.windows_classified += 1
                out.append(self._decision("window", item.segment, item.start_sample,
                                          item.end_sample, v, probs))
            elif isinstance(item, SegmentStart):
                self.decider.reset()
            else:
                t0 = time.perf_counter()
                final = self.decider.end()
                self._times.decisions += time.perf_counter() - t0
                if final is not None:
                    out.append(self._decision("utterance", item.segment, item.start_sample,
                                              item.end_sample, final, None, item.windows))
        return out

    def _decision(
        self,
        kind: Literal["window", "utterance"],
        segment: int,
        start: int,
        end: int,
        v: Verdict,
        probs: npt.NDArray[np.float32] | None,
        windows: int = 1,
    ) -> Decision:
        sr = float(self.sample_rate)
        return Decision(
            type=kind,
            channel=self.channel,
            segment=segment,
            start_s=round(start / sr, 3),
            end_s=round(end / sr, 3),
            label=v.label,
            confidence=v.confidence,
            probs=v.probs,
            raw_probs=tuple(round(float(p), 4) for p in probs) if probs is not None else (),
            windows=windows,
        )


class ChannelSet:
    """``__call__(block)`` for a ``(frames, channels)`` block -> the analysed channels'
    decisions; ``flush()`` at end of stream, ``reset()`` after a gap in the audio.

    Channels whose role is not analysed get no pipeline: their audio is never classified.
    When an agent channel is among them (and ``crosstalk.enabled``), its levels drive the
    muting of every analysed channel while the agent speaks.
    """

    def __init__(
        self,
        classifier: Classifier,
        channels: Sequence[Channel],
        *,
        vad: VadSettings | None = None,
        decisions: DecisionSettings | None = None,
        crosstalk: CrosstalkSettings | None = None,
    ) -> None:
        self.analysed = [c for c in channels if c.analysed]
        self._agents = [c.index for c in channels if c.mutes_others]
        settings = crosstalk or CrosstalkSettings()
        rate = classifier.card.features.sample_rate
        # One muting stage per analysed channel: double talk is judged on its own level.
        self.mutes = [Crosstalk(settings, rate) if self._agents and settings.enabled else None
                      for _ in self.analysed]
        self.pipelines = [Pipeline(classifier, vad=vad, decisions=decisions, channel=c.name)
                          for c in self.analysed]
        self.width = max((c.index for c in channels), default=0) + 1
        """Channels a block must have (the highest channel index used, plus one)."""

    def __call__(self, block: npt.NDArray[np.float32]) -> list[Decision]:
        data = block if block.ndim == 2 else block[:, None]
        # Gathered once per block (a copy), not once per muted channel.
        agents = data[:, self._agents] if self._agents else None
        out: list[Decision] = []
        for c, pipe, mute in zip(self.analysed, self.pipelines, self.mutes, strict=True):
            own = data[:, c.index]
            if mute is not None and agents is not None:
                # The agent's speech replaced before the pipeline sees this channel.
                own = mute(agents, own)
            out.extend(pipe(own))
        return out

    def flush(self) -> list[Decision]:
        out: list[Decision] = []
        for pipe, mute in zip(self.pipelines, self.mutes, strict=True):
            if mute is not None:
                out.extend(pipe(mute.flush()))  # the audio muting still holds
            out.extend(pipe.flush())
        return out

    def reset(self) -> None:
        for pipe, mute in zip(self.pipelines, self.mutes, strict=True):
            pipe.reset()
            if mute is not None:
                mute.reset()

    @property
    def muted_seconds(self) -> float:
        """Seconds of analysed audio replaced while the agent spoke, all channels."""
        return sum(m.muted_seconds for m in self.mutes if m is not None)
