"""Live state for late joiners: the retained ``{prefix}/{device_id}/state`` topic and the
``degraded`` availability.

Emotion and alert events are not retained, so a consumer that connects after an alert
started (a dashboard refreshed mid-incident) would see nothing until the next event.
:class:`LiveState` keeps, per channel, the last verdict and the alerts in progress, and
hands the daemon a ``state`` payload to publish **retained** whenever that picture
changed, at most once per ``min_interval_seconds`` (a window arrives every half second per
channel; a retained QoS 1 message each time would be pointless broker and SD-card churn).
A cleared alert leaves the picture at once (subject to the same interval), and the daemon
publishes the final picture on a clean stop, without its alerts (the engine clears them).

:class:`Availability` turns what the daemon knows about its own health into the retained
``status``: ``degraded`` while the microphone is not open or the spool is backing up (the
device is connected but its events are not getting through), ``online`` again once healthy.
Both are small stages driven by the daemon's loop (not thread-safe).  Payloads are
documented in docs/events.md and ``serd/schema/state.schema.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from serd.events import SCHEMA_VERSION, iso_utc, parse_iso_utc, validate_device_id
from serd.roles import UNSPECIFIED

_LOGGER = logging.getLogger(__name__)

STATE_SUFFIX = "state"
"""Topic suffix of the retained current-state payload."""

Health = Literal["online", "degraded"]
HealthReason = Literal["connected", "input_missing", "spool_backlog"]

# Confidence is rounded in the state payload: a change in the third decimal is not news
# worth a retained message.
_CONFIDENCE_DECIMALS = 2


@dataclass(frozen=True)
class Verdict:
    """The last emotion event of one channel, as the state payload carries it."""

    label: str | None
    confidence: float
    # "window" or "utterance".
    kind: str
    # End of the audio the verdict describes, epoch seconds.
    end_epoch_seconds: float


@dataclass(frozen=True)
class OpenAlert:
    """An alert that started and has not cleared yet."""

    channel: str
    rule: str
    label: str
    since_epoch_seconds: float
    confidence: float
    message: str | None


@dataclass
class _Channel:
    role: str
    verdict: Verdict | None = None


@dataclass
class LiveState:
    """Per-channel last verdict and open alerts; :meth:`due` says when to publish.

    Feed it every emotion and alert payload the daemon publishes (:meth:`__call__`), and
    call :meth:`due` from the loop; it returns the payload to publish retained, or None.
    """

    device_id: str
    model: str
    channels: Iterable[str] = ()
    roles: Mapping[str, str] = field(default_factory=dict)
    # At most one state payload per this many seconds (monotonic).
    min_interval_seconds: float = 1.0
    _channels: dict[str, _Channel] = field(init=False, default_factory=dict)
    _alerts: dict[tuple[str, str], OpenAlert] = field(init=False, default_factory=dict)
    _published: dict[str, Any] | None = field(init=False, default=None)
    _last_publish: float | None = field(init=False, default=None)
    # Something was fed or reset since the body was last built: the loop calls due()
    # every block, and most blocks bring no event, so the body is not rebuilt for them.
    _changed: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.min_interval_seconds < 0:
            raise ValueError("min_interval_seconds: must be >= 0")
        for name in self.channels:
            self._channel(name, self.roles.get(name))

    # -- input -----------------------------------------------------------------------

    def __call__(self, payload: Mapping[str, Any]) -> None:
        """Take note of one emotion (``window``/``utterance``) or ``alert`` payload."""
        kind = payload.get("type")
        channel = payload.get("channel")
        if not isinstance(channel, str) or not channel:
            return
        self._changed = True
        role = payload.get("role")
        entry = self._channel(channel, role if isinstance(role, str) else None)
        if kind in ("window", "utterance"):
            label = payload.get("label")
            entry.verdict = Verdict(
                label=label if isinstance(label, str) else None,
                confidence=_unit(payload.get("confidence")),
                kind=str(kind),
                end_epoch_seconds=_epoch(payload.get("end")),
            )
        elif kind == "alert":
            rule = str(payload.get("rule", ""))
            key = (channel, rule)
            if payload.get("state") == "cleared":
                self._alerts.pop(key, None)
            elif key not in self._alerts:
                message = payload.get("message")
                self._alerts[key] = OpenAlert(
                    channel=channel,
                    rule=rule,
                    label=str(payload.get("label", "")),
                    since_epoch_seconds=_epoch(payload.get("start")),
                    confidence=_unit(payload.get("confidence")),
                    message=message if isinstance(message, str) else None,
                )

    def reset(self) -> None:
        """Forget verdicts and alerts (the configured channels stay, without verdicts)."""
        for entry in self._channels.values():
            entry.verdict = None
        self._alerts.clear()
        self._changed = True

    # -- output ----------------------------------------------------------------------

    @property
    def open_alerts(self) -> tuple[OpenAlert, ...]:
        return tuple(self._alerts.values())

    def payload(self, now_epoch_seconds: float) -> dict[str, Any]:
        """The ``state`` payload for the present picture."""
        return self._wrap(self._body(), now_epoch_seconds)

    def due(self, now_monotonic: float, now_epoch_seconds: float, *,
            force: bool = False) -> dict[str, Any] | None:
        """The payload to publish now if the picture changed since the last one and the
        interval has passed (``force``: ignore the interval, e.g. at start and stop)."""
        if not self._changed and not force:
            return None
        body = self._body()
        if body == self._published and not force:
            self._changed = False
            return None
        if (
            not force
            and self._last_publish is not None
            and now_monotonic - self._last_publish < self.min_interval_seconds
        ):
            return None
        self._published = body
        self._last_publish = now_monotonic
        self._changed = False
        return self._wrap(body, now_epoch_seconds)

    # -- internals -------------------------------------------------------------------

    def _channel(self, name: str, role: str | None) -> _Channel:
        entry = self._channels.get(name)
        if entry is None:
            entry = _Channel(role=role or UNSPECIFIED)
            self._channels[name] = entry
        elif role:
            entry.role = role
        return entry

    def _wrap(self, body: dict[str, Any], now_epoch_seconds: float) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "type": "state",
            "device_id": self.device_id,
            "ts": iso_utc(now_epoch_seconds),
            **body,
        }

    def _body(self) -> dict[str, Any]:
        channels = []
        for name, entry in self._channels.items():
            v = entry.verdict
            channels.append({
                "channel": name,
                "role": entry.role,
                "label": None if v is None else v.label,
                "confidence": None if v is None else round(v.confidence, _CONFIDENCE_DECIMALS),
                "kind": None if v is None else v.kind,
                "end": None if v is None else iso_utc(v.end_epoch_seconds),
            })
        alerts = [
            {
                "channel": a.channel,
                "rule": a.rule,
                "label": a.label,
                "since": iso_utc(a.since_epoch_seconds),
                "confidence": round(a.confidence, _CONFIDENCE_DECIMALS),
                "message": a.message,
            }
            for a in self._alerts.values()
        ]
        return {"model": self.model, "channels": channels, "alerts": alerts}


@dataclass(frozen=True)
class AvailabilitySettings:
    """When a connected device calls itself ``degraded`` rather than ``online``."""

    # Events waiting in the spool above which the device is degraded (they are not
    # getting through: a slow broker, or one refusing them) ...
    spool_backlog_events: int = 500
    # ... once they have stayed above it this long (the backlog of an outage drains in
    # seconds after the reconnect: that is no degradation) ...
    spool_backlog_seconds: float = 30.0
    # ... and at or below which it is healthy again (hysteresis: no flapping).
    spool_recovered_events: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.spool_recovered_events < self.spool_backlog_events:
            raise ValueError(
                "spool_recovered_events: must be >= 0 and below spool_backlog_events"
            )
        if self.spool_backlog_seconds < 0:
            raise ValueError("spool_backlog_seconds: must be >= 0")


@dataclass(frozen=True)
class AvailabilityChange:
    """What the retained ``status`` should now say."""

    state: Health
    reason: HealthReason


@dataclass
class Availability:
    """Health -> ``online``/``degraded``; :meth:`__call__` returns a change, or None."""

    settings: AvailabilitySettings = field(default_factory=AvailabilitySettings)
    _state: Health = field(init=False, default="online")
    _reason: HealthReason = field(init=False, default="connected")
    # Monotonic time since when the spool has been above spool_backlog_events (reset only
    # once it is back at spool_recovered_events or below).
    _over_since: float | None = field(init=False, default=None)

    @property
    def state(self) -> Health:
        return self._state

    @property
    def reason(self) -> HealthReason:
        return self._reason

    def __call__(self, *, input_open: bool, spool_depth: int,
                 now_monotonic: float) -> AvailabilityChange | None:
        s = self.settings
        if spool_depth <= s.spool_recovered_events:
            self._over_since = None
        elif spool_depth > s.spool_backlog_events and self._over_since is None:
            self._over_since = now_monotonic
        backlog = (self._over_since is not None
                   and now_monotonic - self._over_since >= s.spool_backlog_seconds)
        state: Health
        reason: HealthReason
        # The microphone first: a device that hears nothing is the more urgent news.
        if not input_open:
            state, reason = "degraded", "input_missing"
        elif backlog:
            state, reason = "degraded", "spool_backlog"
        else:
            state, reason = "online", "connected"
        if (state, reason) == (self._state, self._reason):
            return None
        if state == "degraded":
            _LOGGER.warning("status degraded: %s", reason.replace("_", " "))
        else:
            _LOGGER.info("status online again")
        self._state, self._reason = state, reason
        return AvailabilityChange(state, reason)

    def reset(self) -> None:
        self._state, self._reason, self._over_since = "online", "connected", None


def _unit(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return min(1.0, max(0.0, float(value)))


def _epoch(value: object) -> float:
    # Payloads here are the daemon's own, so a bad time is a bug upstream; 0 keeps the
    # state publishable rather than raising in the loop.
    if isinstance(value, str):
        try:
            return parse_iso_utc(value)
        except ValueError:
            pass
    return 0.0
