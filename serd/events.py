"""Event payloads that serd publishes: builders, timestamps and topic names.

Every payload is a flat JSON object with ``schema`` (the payload format version, see
:data:`SCHEMA_VERSION`), ``type`` and ``device_id``; docs/events.md is the reference and
``serd/schema/*.schema.json`` are the machine-checkable contracts.

Times are passed in as **epoch seconds** (``float``, the ``time.time()`` domain, UTC by
definition) and written out as UTC ISO 8601 strings with milliseconds and a ``Z``
suffix (``2024-05-01T12:00:00.123Z``).  Epoch floats were chosen over ``datetime``
because the audio pipeline computes window bounds arithmetically (stream start plus
sample offset / rate) and a float cannot be a naive local time by mistake.

The builders do not assign ``seq``: they leave ``"seq": None`` as a placeholder so the
key keeps its place, and :meth:`serd.spool.Spool.put` fills it in when the event is
durably enqueued, which is what makes it unique and persistent across restarts.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, get_args

SCHEMA_VERSION = 1
"""Version of the payload formats; bumped only for incompatible changes."""

EmotionType = Literal["window", "utterance"]
"""``window``: one fixed analysis window; ``utterance``: one VAD-delimited utterance."""
EMOTION_TYPES: tuple[str, ...] = get_args(EmotionType)

StatusState = Literal["online", "degraded", "offline"]
"""``degraded``: connected, but no microphone or a spool backing up (serd.state)."""
STATUS_STATES: tuple[str, ...] = get_args(StatusState)

EMOTION_SUFFIX = "emotion"
ALERT_SUFFIX = "alert"
STATUS_SUFFIX = "status"
HEALTH_SUFFIX = "health"

# Topic-safe and log-safe: no MQTT wildcards or level separators, no whitespace.  The one
# device_id rule: serd.config checks the configured device_id against it too.
DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN + r"\Z")
_HEALTH_RESERVED = frozenset({"schema", "type", "device_id", "ts"})
# Probabilities and confidences are rounded: 4 decimals is finer than any model's
# calibration and keeps a window event around 300 bytes on the wire.
_PROB_DECIMALS = 4


def iso_utc(epoch_seconds: float) -> str:
    """``epoch_seconds`` as UTC ISO 8601 with milliseconds and ``Z``."""
    _require_finite(epoch_seconds, "epoch_seconds")
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_utc(text: str) -> float:
    """Inverse of :func:`iso_utc` (for consumers and tests): epoch seconds."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp ending in Z: {text!r}")
    return datetime.fromisoformat(text[:-1] + "+00:00").timestamp()


def now_iso() -> str:
    """The current time as :func:`iso_utc` writes it."""
    return iso_utc(time.time())


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable as one MQTT topic level, else ValueError.

    1 to 64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.
    """
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.match(device_id):
        raise ValueError(
            f"device_id: {device_id!r} is not usable in MQTT topics; use 1 to 64 of "
            "A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return device_id


def topic(prefix: str, device_id: str, suffix: str) -> str:
    """``{prefix}/{device_id}/{suffix}``, e.g. ``serd/pi-desk-7/emotion``."""
    return f"{prefix}/{validate_device_id(device_id)}/{suffix}"


@dataclass(frozen=True)
class EmotionResult:
    """One classification, as the pipeline hands it over."""

    # "window" for a fixed analysis window, "utterance" for a VAD-delimited utterance.
    type: EmotionType
    # Which audio channel or input the audio came from ("0", "left", "agent", ...).
    channel: str
    # Start and end of the audio described, in epoch seconds (time.time() domain).
    start_epoch_seconds: float
    end_epoch_seconds: float
    # Winning label, or None when the confidence is below the threshold: claim nothing.
    label: str | None
    # Probability of the winning class, 0..1 (reported even when label is None).
    confidence: float
    # Full distribution {label: probability}, each 0..1.
    probs: Mapping[str, float]
    # Model name (with version), e.g. "crema-cnn-int8-v3".
    model: str
    # Whose voice the channel carries (serd.roles): customer, unspecified or another
    # analysed role; never agent.
    role: str = "unspecified"

    def __post_init__(self) -> None:
        if self.type not in EMOTION_TYPES:
            raise ValueError(f"type: {self.type!r} is not 'window' or 'utterance'")
        _require_text(self.channel, "channel")
        _require_role(self.role)
        _require_text(self.model, "model")
        _require_span(self.start_epoch_seconds, self.end_epoch_seconds)
        if self.label is not None:
            _require_text(self.label, "label")
        _require_unit(self.confidence, "confidence")
        if not self.probs:
            raise ValueError("probs: must name at least one label")
        for name, p in self.probs.items():
            _require_text(name, "probs")
            _require_unit(p, f"probs[{name!r}]")


@dataclass(frozen=True)
class AlertResult:
    """A rule fired (e.g. sustained anger on one channel); published on ``alert``."""

    # Audio channel the rule fired on.
    channel: str
    # Rule name, e.g. "sustained_anger".
    rule: str
    # The emotion label the rule is about.
    label: str
    # The audio span that triggered the rule, in epoch seconds.
    start_epoch_seconds: float
    end_epoch_seconds: float
    # Rule-defined strength, 0..1 (e.g. mean confidence over the span).
    confidence: float
    # Model name, as in emotion events.
    model: str
    # Optional human-readable text for dashboards.
    message: str | None = None
    # "started" when the rule begins to hold, "cleared" when it stops holding.
    state: Literal["started", "cleared"] = "started"
    # The channel's role, as in emotion events.
    role: str = "unspecified"

    def __post_init__(self) -> None:
        _require_text(self.channel, "channel")
        _require_role(self.role)
        _require_text(self.rule, "rule")
        _require_text(self.label, "label")
        _require_text(self.model, "model")
        _require_span(self.start_epoch_seconds, self.end_epoch_seconds)
        _require_unit(self.confidence, "confidence")
        if self.state not in ("started", "cleared"):
            raise ValueError(f"state: {self.state!r} is not 'started' or 'cleared'")


def emotion_event(
    device_id: str, result: EmotionResult, *, now_epoch_seconds: float | None = None
) -> dict[str, Any]:
    """The ``emotion`` payload for ``result`` (``seq`` left as None for the spool)."""
    return {
        "schema": SCHEMA_VERSION,
        "type": result.type,
        "device_id": validate_device_id(device_id),
        "channel": result.channel,
        "role": result.role,
        "seq": None,
        "ts": _ts(now_epoch_seconds),
        "start": iso_utc(result.start_epoch_seconds),
        "end": iso_utc(result.end_epoch_seconds),
        "label": result.label,
        "confidence": round(float(result.confidence), _PROB_DECIMALS),
        "probs": {str(k): round(float(v), _PROB_DECIMALS) for k, v in result.probs.items()},
        "model": result.model,
    }


def alert_event(
    device_id: str, alert: AlertResult, *, now_epoch_seconds: float | None = None
) -> dict[str, Any]:
    """The ``alert`` payload for ``alert`` (``seq`` left as None for the spool)."""
    return {
        "schema": SCHEMA_VERSION,
        "type": "alert",
        "device_id": validate_device_id(device_id),
        "channel": alert.channel,
        "role": alert.role,
        "seq": None,
        "ts": _ts(now_epoch_seconds),
        "rule": alert.rule,
        "state": alert.state,
        "label": alert.label,
        "start": iso_utc(alert.start_epoch_seconds),
        "end": iso_utc(alert.end_epoch_seconds),
        "confidence": round(float(alert.confidence), _PROB_DECIMALS),
        "model": alert.model,
        "message": alert.message,
    }


def status_event(
    device_id: str,
    state: StatusState,
    reason: str,
    *,
    version: str,
    now_epoch_seconds: float | None = None,
    with_ts: bool = True,
) -> dict[str, Any]:
    """The retained ``status`` payload.

    ``with_ts=False`` is for the Last Will: it is registered when the connection is
    made, so any timestamp in it would be the connect time, not the time of death.
    """
    if state not in STATUS_STATES:
        raise ValueError(f"state: {state!r} is not 'online', 'degraded' or 'offline'")
    payload: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "type": "status",
        "device_id": validate_device_id(device_id),
        "state": state,
        "reason": reason,
        "version": version,
    }
    if with_ts:
        payload["ts"] = _ts(now_epoch_seconds)
    return payload


def health_event(
    device_id: str, fields: Mapping[str, Any], *, now_epoch_seconds: float | None = None
) -> dict[str, Any]:
    """The ``health`` payload: envelope keys followed by the daemon's ``fields``.

    ``fields`` must be JSON-serialisable and must not use the envelope keys
    ``schema``, ``type``, ``device_id`` or ``ts``.
    """
    clash = sorted(_HEALTH_RESERVED.intersection(fields))
    if clash:
        raise ValueError(f"health fields: {', '.join(clash)} are reserved envelope keys")
    return {
        "schema": SCHEMA_VERSION,
        "type": "health",
        "device_id": validate_device_id(device_id),
        "ts": _ts(now_epoch_seconds),
        **fields,
    }


def to_json(payload: Mapping[str, Any]) -> str:
    """Compact JSON as published; NaN/Infinity are refused (they are not JSON)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _ts(now_epoch_seconds: float | None) -> str:
    return iso_utc(time.time() if now_epoch_seconds is None else now_epoch_seconds)


def _require_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string, got {value!r}")


def _require_role(role: object) -> None:
    _require_text(role, "role")
    if role == "agent":
        # The daemon never builds a pipeline for an agent channel; this is the last guard.
        raise ValueError("role: an agent channel is never analysed (docs/lawful-use.md)")


def _require_finite(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")


def _require_unit(value: object, name: str) -> None:
    _require_finite(value, name)
    assert isinstance(value, (int, float))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be within 0..1, got {value!r}")


def _require_span(start: float, end: float) -> None:
    _require_finite(start, "start_epoch_seconds")
    _require_finite(end, "end_epoch_seconds")
    if end < start:
        raise ValueError(f"end_epoch_seconds: {end!r} is before start_epoch_seconds {start!r}")
