"""Alerts: rules over the recent speech of each channel, published on ``{prefix}/{device}/alert``.

A rule such as *angry or fearful for more than 10 of the last 30 seconds of speech*
is evaluated per channel on the daemon's decisions.  Time is counted in **speech
seconds**: silence neither adds to nor ages the count, so a pause in a call does not
clear an alert and a long silence does not dilute one.  Each stretch of speech is
counted once:

* a ``window`` decision adds the part of its window not covered by the previous window
  of the same utterance (the first window of an utterance adds its whole span, each
  later one one hop), labelled with the window's (smoothed) label and confidence;
* an ``utterance`` decision adds the parts of the utterance no window covered (its
  tail, or all of it if it produced no window), with the utterance's label.

A stretch *matches* a rule when its label is one of the rule's ``labels`` with at least
``min_confidence``.  When the matching seconds among the last ``over_seconds`` of
speech exceed ``min_seconds`` the rule **starts** on that channel and one alert is
published; when they fall to ``clear_seconds`` (default half of ``min_seconds``, so an
alert does not flap around the threshold) it **clears** and a second alert is
published.  After ``clear_after_silence_seconds`` without speech on a channel (the call
is over) its history is forgotten and active alerts clear; a clean daemon stop clears
them too.  Alerts go through the publisher's spool like emotion events: QoS 1, their
own persistent ``seq``.

Start and clear are told apart by the payload's ``state`` (``started`` or ``cleared``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from serd.events import AlertResult, alert_event
from serd.roles import UNSPECIFIED
from serd.validate import ConfigError, require

if TYPE_CHECKING:
    from serd.decisions import Decision

_LOGGER = logging.getLogger(__name__)

AlertState = Literal["started", "cleared"]
STARTED: AlertState = "started"
CLEARED: AlertState = "cleared"



@dataclass(frozen=True)
class AlertRule:
    """One rule, evaluated separately on every channel."""

    # Names the rule in alert events (``rule``); unique among the rules.
    name: str = "sustained_distress"
    # Model labels that count towards the rule.
    labels: tuple[str, ...] = ("angry", "fearful")
    # The rule starts when more than this many seconds of the last over_seconds of speech
    # carry one of the labels (with at least min_confidence) ...
    min_seconds: float = 10.0
    over_seconds: float = 30.0
    min_confidence: float = 0.35
    # ... and clears when they fall to this many seconds or fewer; null = min_seconds / 2.
    clear_seconds: float | None = None

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(len(self.labels) > 0, "labels", "must name at least one label")
        require(all(lab.strip() for lab in self.labels), "labels", "must not be empty")
        require(self.min_seconds > 0, "min_seconds", f"must be > 0, got {self.min_seconds}")
        require(
            self.min_seconds < self.over_seconds <= 3600,
            "over_seconds",
            f"must be more than min_seconds ({self.min_seconds}) and at most 3600, "
            f"got {self.over_seconds}",
        )
        require(
            0.0 <= self.min_confidence <= 1.0,
            "min_confidence",
            f"must be within 0..1, got {self.min_confidence}",
        )
        if self.clear_seconds is not None:
            require(
                0.0 <= self.clear_seconds < self.min_seconds,
                "clear_seconds",
                f"must be >= 0 and less than min_seconds ({self.min_seconds}), "
                f"got {self.clear_seconds}",
            )

    @property
    def clear_at_seconds(self) -> float:
        """Matching seconds at or below which an active alert clears."""
        return self.min_seconds / 2 if self.clear_seconds is None else self.clear_seconds


@dataclass(frozen=True)
class AlertSettings:
    """The ``alerts:`` section of config.yaml."""

    # Evaluate the rules and publish {prefix}/{device_id}/alert events.
    enabled: bool = False
    # Rules, each evaluated separately on every channel.
    rules: tuple[AlertRule, ...] = field(default_factory=lambda: (AlertRule(),))
    # No speech on a channel for this long: its history is forgotten and its active
    # alerts clear (the call is over).  null = never.
    clear_after_silence_seconds: float | None = 120.0

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        require(not dupes, "rules", f"rule names must be unique: {', '.join(dupes)}")
        # Was accepted by --check-config and the daemon, which then never alerted.
        require(bool(self.rules) or not self.enabled, "rules",
                "alerts are enabled but no rule is given: add one (see config.yaml) or set "
                "alerts.enabled: false")
        if self.clear_after_silence_seconds is not None:
            require(
                self.clear_after_silence_seconds > 0,
                "clear_after_silence_seconds",
                "must be > 0 (or null for never)",
            )


def alert_state(payload: Mapping[str, Any]) -> AlertState:
    """Whether an alert payload announces a start or a clear (for consumers)."""
    return CLEARED if payload.get("state") == CLEARED else STARTED


@dataclass
class _Piece:
    """A stretch of speech counted once: its length and what it was judged to be."""

    seconds: float
    label: str | None
    confidence: float
    start: float  # epoch seconds
    end: float


@dataclass
class _Active:
    label: str
    start: float


@dataclass
class _Channel:
    pieces: deque[_Piece] = field(default_factory=deque)
    seconds: float = 0.0  # total of pieces
    segment: int | None = None  # utterance whose windows are being counted
    covered_from: float = 0.0  # stream seconds covered by that utterance's windows
    covered_to: float = 0.0
    last_speech: float | None = None  # epoch seconds of the end of the last speech seen
    # The same moment on the monotonic clock, when the caller gives one: silence is timed
    # on it, so a wall-clock step back cannot keep an alert open for the step's length.
    last_speech_mono: float | None = None
    active: dict[str, _Active] = field(default_factory=dict)


class AlertEngine:
    """Per-channel rule state; feed it decisions, publish what it returns.

    :meth:`observe`, :meth:`tick` and :meth:`close` return alert payloads (``seq`` None,
    ready for ``publisher.publish_event("alert", ...)``).  With ``enabled: false`` they
    always return nothing.  Not thread-safe: the daemon's loop is its only caller.
    """

    def __init__(
        self,
        settings: AlertSettings,
        *,
        device_id: str,
        model: str,
        labels: Sequence[str] | None = None,
        roles: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.model = model
        # Each channel's role (serd.roles), carried by its alerts as by its emotion events.
        self.roles = dict(roles or {})
        self.enabled = settings.enabled and bool(settings.rules)
        if self.enabled and labels is not None:
            known = set(labels)
            for i, rule in enumerate(settings.rules):
                unknown = [lab for lab in rule.labels if lab not in known]
                if unknown:
                    raise ConfigError(
                        f"alerts.rules[{i}].labels: {', '.join(map(repr, unknown))} "
                        f"{'is' if len(unknown) == 1 else 'are'} not a label of model "
                        f"{model} (its labels: {', '.join(labels)})"
                    )
        self._keep_seconds = max((r.over_seconds for r in settings.rules), default=0.0)
        self._channels: dict[str, _Channel] = {}

    # -- feeding -----------------------------------------------------------------------

    def observe(
        self, decision: Decision, start: float, end: float, now: float,
        mono: float | None = None,
    ) -> list[dict[str, Any]]:
        """Count ``decision`` (audio from epoch ``start`` to ``end``); alerts to publish.
        ``mono``: the monotonic clock at ``now``, for :meth:`tick`."""
        if not self.enabled:
            return []
        ch = self._channels.setdefault(decision.channel, _Channel())
        d = decision
        if d.type == "window":
            if d.segment != ch.segment or d.start_s < ch.covered_from:
                ch.segment, ch.covered_from, ch.covered_to = d.segment, d.start_s, d.start_s
            new_from = max(d.start_s, ch.covered_to)
            self._add(ch, new_from, d.end_s, d, end)
            ch.covered_to = max(ch.covered_to, d.end_s)
        else:
            if d.segment == ch.segment:
                self._add(ch, d.start_s, min(d.end_s, ch.covered_from), d,
                          end - (d.end_s - ch.covered_from))
                self._add(ch, max(d.start_s, ch.covered_to), d.end_s, d, end)
            else:
                self._add(ch, d.start_s, d.end_s, d, end)
            ch.segment = None
        ch.last_speech = end if ch.last_speech is None else max(ch.last_speech, end)
        if mono is not None:
            ch.last_speech_mono = mono - max(0.0, now - end)
        return self._evaluate(decision.channel, ch, now)

    def tick(self, now: float, mono: float | None = None) -> list[dict[str, Any]]:
        """Time passes: forget channels silent for ``clear_after_silence_seconds``
        (timed on ``mono``, the monotonic clock, when given and observe() had it too)."""
        limit = self.settings.clear_after_silence_seconds
        if not self.enabled or limit is None:
            return []
        out: list[dict[str, Any]] = []
        for name, ch in self._channels.items():
            if ch.last_speech is None:
                continue
            if mono is not None and ch.last_speech_mono is not None:
                silent = mono - ch.last_speech_mono
            else:
                silent = now - ch.last_speech
            if silent < limit:
                continue
            message = f"no speech on {name} for {limit:g} s"
            out.extend(self._clear_all(name, ch, now, message))
            ch.pieces.clear()
            ch.seconds = 0.0
            ch.segment = None
            ch.last_speech = ch.last_speech_mono = None
        return out

    def close(self, now: float) -> list[dict[str, Any]]:
        """Clear every active alert (clean shutdown): consumers must not keep them open."""
        if not self.enabled:
            return []
        out: list[dict[str, Any]] = []
        for name, ch in self._channels.items():
            out.extend(self._clear_all(name, ch, now, "serd stopping"))
        return out

    def active(self) -> dict[str, list[str]]:
        """``{channel: [rule, ...]}`` of the alerts active now (for health and tests)."""
        return {n: sorted(ch.active) for n, ch in self._channels.items() if ch.active}

    # -- internals ---------------------------------------------------------------------

    def _add(self, ch: _Channel, a: float, b: float, d: Decision, end_epoch_of_b: float) -> None:
        seconds = b - a
        if seconds <= 1e-6:
            return
        ch.pieces.append(
            _Piece(seconds, d.label, d.confidence, end_epoch_of_b - seconds, end_epoch_of_b)
        )
        ch.seconds += seconds
        # Keep what the longest rule looks at (and no more).
        while ch.pieces and ch.seconds - ch.pieces[0].seconds >= self._keep_seconds:
            ch.seconds -= ch.pieces.popleft().seconds

    def _evaluate(self, channel: str, ch: _Channel, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rule in self.settings.rules:
            matched, mean_conf, by_label, first, last = self._measure(ch, rule)
            act = ch.active.get(rule.name)
            if act is None and matched > rule.min_seconds:
                label = max(by_label, key=lambda k: by_label[k])
                ch.active[rule.name] = _Active(label, first)
                msg = f"{_labels_text(rule)} {matched:.1f} s of the last " \
                      f"{rule.over_seconds:g} s of speech on {channel}"
                out.append(self._payload(channel, rule.name, STARTED, label=label, start=first,
                                         end=last, confidence=mean_conf, message=msg, now=now))
                # No label or figures in the log: the journal outlives the spool's
                # retention (issue 25.4); the event itself says what happened.
                _LOGGER.debug("alert %s started on %s", rule.name, channel)
            elif act is not None and matched <= rule.clear_at_seconds:
                del ch.active[rule.name]
                msg = f"{_labels_text(rule)} {matched:.1f} s of the last " \
                      f"{rule.over_seconds:g} s of speech on {channel}"
                out.append(self._payload(channel, rule.name, CLEARED, label=act.label,
                                         start=act.start, end=last, confidence=mean_conf,
                                         message=msg, now=now))
                _LOGGER.debug("alert %s cleared on %s", rule.name, channel)
        return out

    @staticmethod
    def _measure(
        ch: _Channel, rule: AlertRule
    ) -> tuple[float, float, dict[str, float], float, float]:
        """Matching seconds in the last ``over_seconds`` of speech, their mean confidence,
        seconds per label, and the epoch span from the first matching stretch to now."""
        budget = rule.over_seconds
        matched = weighted = 0.0
        by_label: dict[str, float] = {}
        first = last = ch.pieces[-1].end if ch.pieces else 0.0
        for piece in reversed(ch.pieces):
            if budget <= 1e-9:
                break
            take = min(piece.seconds, budget)
            budget -= take
            if (piece.label in rule.labels and piece.label is not None
                    and piece.confidence >= rule.min_confidence):
                matched += take
                weighted += take * piece.confidence
                by_label[piece.label] = by_label.get(piece.label, 0.0) + take
                first = min(first, piece.end - take)
        mean = weighted / matched if matched > 0 else 0.0
        return matched, mean, by_label, first, last

    def _clear_all(
        self, channel: str, ch: _Channel, now: float, why: str
    ) -> list[dict[str, Any]]:
        out = []
        for rule_name, act in sorted(ch.active.items()):
            out.append(self._payload(channel, rule_name, CLEARED, label=act.label,
                                     start=act.start, end=now, confidence=0.0, message=why,
                                     now=now))
            _LOGGER.debug("alert %s cleared on %s", rule_name, channel)
        ch.active.clear()
        return out

    def _payload(
        self,
        channel: str,
        rule: str,
        state: AlertState,
        *,
        label: str,
        start: float,
        end: float,
        confidence: float,
        message: str,
        now: float,
    ) -> dict[str, Any]:
        result = AlertResult(
            channel=channel,
            rule=rule,
            label=label,
            start_epoch_seconds=start,
            end_epoch_seconds=max(end, start),
            confidence=min(1.0, max(0.0, confidence)),
            model=self.model,
            message=message,
            state=state,
            role=self.roles.get(channel, UNSPECIFIED),
        )
        return alert_event(self.device_id, result, now_epoch_seconds=now)


def _labels_text(rule: AlertRule) -> str:
    return " or ".join(rule.labels)
