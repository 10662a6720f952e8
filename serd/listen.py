"""``serd listen``: watch every device on a broker from a terminal.

Subscribes to ``{prefix}/+/emotion``, ``/alert``, ``/status`` and ``/state`` and shows one
row per device and channel: availability (from the retained status), the current emotion and
its confidence, and the last alert.  Emotion and alert events are not retained: the retained
``state`` (serd.state) gives a listener started mid-call each channel's last verdict and the
alerts in progress; events, being fresher, win over it.  On a terminal the table is
redrawn in place; piped, it is printed again whenever it changed (at most once a second);
with ``--json`` every message is written as one JSON line (the payload with its ``topic``
added) for scripts.

Connection settings come from the ``mqtt:`` section of ``--config`` (the same TLS and
credentials as the daemon); ``--host``, ``--port`` and ``--prefix`` override it.
Duplicate events (same ``seq`` re-sent after a device reconnects) are dropped.

Every payload is hostile until checked: over the size bound it is not parsed
(:func:`serd.mqttclient.read_json_object`), a field of the wrong type drops the message
(counted), control characters are escaped in everything printed (the table and
``--json``), and the board keeps a bounded number of devices and rows (stale ones age
out); a redraw formats only what fits on the screen, outside the lock that paho's thread
needs.  While the broker cannot be reached, one line says so (retries stay quiet) and one
more says when it is connected again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from serd.alerts import CLEARED, alert_state
from serd.events import (
    ALERT_SUFFIX,
    EMOTION_SUFFIX,
    EMOTION_TYPES,
    STATUS_STATES,
    STATUS_SUFFIX,
    parse_iso_utc,
)
from serd.state import STATE_SUFFIX

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger("serd.listen")

EXIT_OK = 0
EXIT_USAGE = 2
_SUFFIXES = (EMOTION_SUFFIX, ALERT_SUFFIX, STATUS_SUFFIX, STATE_SUFFIX)
_REDRAW_SECONDS = 0.5
_PIPE_REPRINT_SECONDS = 1.0


_MAX_DEVICES = 1000
"""Devices the board keeps; beyond it the longest-silent device that is not online makes
room, else the newcomer is refused (counted): a flood of fake device ids costs bounded
memory and redraw time."""
_MAX_CHANNELS = 32
"""Channels kept per device (more are refused, counted)."""
_MAX_ROWS = 4000
"""Device-and-channel rows kept in all (more are refused, counted): bounds a redraw."""
_STALE_SECONDS = 3600.0
"""A device not online and silent this long is forgotten (replays, retired devices)."""
_TEXT_CHARS = 48
"""Longest text shown in a cell (device, channel, label, rule, reason); longer is cut."""
_AVAILABILITY = STATUS_STATES
_PRESENT = ("online", "degraded")
"""Availabilities of a device that is there (never aged out or evicted)."""
_KINDS = EMOTION_TYPES
_SWEEP_SECONDS = 10.0


@dataclass(frozen=True)
class AlertView:
    """The checked fields of an alert payload the table shows."""

    rule: str
    label: str
    active: bool
    start: str  # local clock time, or "?"
    end: str
    started: float = 0.0  # the alert's start (device clock, epoch s); 0 when unknown


@dataclass(frozen=True)
class Row:
    """What the table shows for one device and channel (replaced, never changed in place,
    so a redraw's snapshot is a list of references)."""

    device: str
    channel: str
    label: str | None = None
    confidence: float | None = None
    kind: str = ""
    role: str | None = None  # whose voice the channel carries (customer, unspecified, ...)
    updated: float = 0.0  # time.time() when the last emotion event arrived
    alert: AlertView | None = None


@dataclass
class Device:
    availability: str = "unknown"
    reason: str = ""
    last_seq: dict[str, int] = field(default_factory=dict)
    # Streams whose next event may restart at seq 1 (the device just came online).
    fresh: set[str] = field(default_factory=set)
    rows: dict[str, Row] = field(default_factory=dict)
    heard: float = 0.0  # time.monotonic() of its last message


class InvalidPayloadError(ValueError):
    """A payload whose fields do not have the types and ranges the schema gives them."""


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidPayloadError(f"{key}: not a non-empty string")
    return value[:_TEXT_CHARS]


def _optional_text(payload: dict[str, Any], key: str) -> str | None:
    return None if payload.get(key) is None else _text(payload, key)


def _number(value: object) -> float | None:
    """A finite number within 0..1, else None (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def _seq(payload: dict[str, Any]) -> int | None:
    seq = payload.get("seq")
    if seq is None:
        return None
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidPayloadError("seq: not a non-negative integer")
    return seq


class Board:
    """Latest state of every device and channel, fed with MQTT messages.

    Every field of a payload is type-checked before it is kept (a payload that fails is
    dropped and counted in ``invalid``); what is kept is small and bounded: at most
    ``max_devices`` devices of ``_MAX_CHANNELS`` channels, text cut to ``_TEXT_CHARS``.
    """

    def __init__(self, prefix: str, *, max_devices: int = _MAX_DEVICES,
                 stale_seconds: float = _STALE_SECONDS) -> None:
        self.prefix = prefix.rstrip("/")
        self.max_devices = max_devices
        self.stale_seconds = stale_seconds
        self.devices: dict[str, Device] = {}
        self.messages = 0
        self.duplicates = 0
        self.invalid = 0  # payloads dropped for a wrong type or value
        self.too_big = 0  # payloads over the size bound (counted by the listener)
        self.refused = 0  # devices or channels refused because the board was full
        self.forgotten = 0  # stale devices aged out
        self.row_count = 0
        self.version = 0  # bumped on every change (for redraws)
        self.lock = threading.Lock()

    @property
    def rows(self) -> dict[tuple[str, str], Row]:
        """Every row, keyed by (device, channel)."""
        with self.lock:
            return {(d, c): r for d, dev in self.devices.items() for c, r in dev.rows.items()}

    def split(self, topic: str) -> tuple[str, str] | None:
        """``(device, suffix)`` of one of our topics, else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or parts[1] not in _SUFFIXES or not parts[0]:
            return None
        return parts[0], parts[1]

    def feed(self, topic: str, payload: dict[str, Any], now: float | None = None) -> bool:
        """Update from one message; False for a duplicate, something not ours or invalid."""
        where = self.split(topic)
        if where is None:
            return False
        device_id, suffix = where
        now = time.time() if now is None else now
        try:
            update = _checked(suffix, payload, now)
        except InvalidPayloadError as exc:
            _LOGGER.debug("invalid %s payload on %s: %s", suffix, topic, exc)
            with self.lock:
                self.invalid += 1
                self.version += 1  # the summary line counts it
            return False
        with self.lock:
            dev = self._device(device_id)
            if dev is None:
                return False
            self.messages += 1
            dev.heard = time.monotonic()
            if isinstance(update, _Status):
                if update.state in _PRESENT and dev.availability not in _PRESENT:
                    dev.fresh = set(_SUFFIXES)  # a wiped state dir restarts seq at 1
                dev.availability = update.state
                dev.reason = update.reason
                self.version += 1
                return True
            if isinstance(update, _State):
                return self._apply_state(device_id, dev, update, now)
            if update.seq is not None:
                # A seq already seen: re-sent after a reconnect (docs/events.md).
                last = dev.last_seq.get(suffix, 0)
                restarted = suffix in dev.fresh and update.seq == 1
                dev.fresh.discard(suffix)
                if update.seq <= last and not restarted and last - update.seq < 1000:
                    self.duplicates += 1
                    return False
                dev.last_seq[suffix] = update.seq
            row = self._row(device_id, dev, update.channel)
            if row is None:
                self.version += 1
                return False
            if isinstance(update, _Emotion):
                row = dataclasses.replace(row, label=update.label, confidence=update.confidence,
                                          kind=update.kind, updated=now,
                                          role=update.role or row.role)
            else:
                row = dataclasses.replace(row, alert=update.alert)
            dev.rows[update.channel] = row
            self.version += 1
            return True

    def _row(self, device_id: str, dev: Device, channel: str) -> Row | None:
        """The channel's row (created if there is room); call with the lock held."""
        row = dev.rows.get(channel)
        if row is None:
            if len(dev.rows) >= _MAX_CHANNELS or self.row_count >= _MAX_ROWS:
                self.refused += 1
                return None
            row = Row(device_id, channel)
            self.row_count += 1
        return row

    def _apply_state(self, device_id: str, dev: Device, st: _State, now: float) -> bool:
        """The retained present of a device; call with the lock held.  It only fills in
        what live events have not said more recently."""
        for ch in st.channels:
            row = self._row(device_id, dev, ch.channel)
            if row is None:
                continue
            # row.updated is when this listener heard the channel's last event; a verdict
            # whose audio ended earlier than that is older news.
            if ch.end is not None and ch.end > row.updated:
                row = dataclasses.replace(row, label=ch.label, confidence=ch.confidence,
                                          kind=ch.kind, updated=min(ch.end, now),
                                          role=ch.role or row.role)
            dev.rows[ch.channel] = row
        listed = set()
        for channel, view in st.alerts:
            listed.add((channel, view.rule))
            row = self._row(device_id, dev, channel)
            if row is None:
                continue
            held = row.alert
            if held is None or not (held.active and held.rule == view.rule):
                row = dataclasses.replace(row, alert=view)
            dev.rows[channel] = row
        # An alert held open that this state no longer lists cleared (unless it started
        # after the state was taken).
        for channel, row in list(dev.rows.items()):
            a = row.alert
            if a is not None and a.active and (channel, a.rule) not in listed \
                    and a.started <= st.ts:
                dev.rows[channel] = dataclasses.replace(
                    row, alert=dataclasses.replace(a, active=False, end=_clock_at(st.ts)))
        self.version += 1
        return True

    def _device(self, device_id: str) -> Device | None:
        """The device (created if there is room); call with the lock held."""
        dev = self.devices.get(device_id)
        if dev is not None:
            return dev
        if len(self.devices) >= self.max_devices:
            idle = [(d.heard, k) for k, d in self.devices.items()
                    if d.availability not in _PRESENT]
            if not idle:
                self.refused += 1
                self.version += 1
                return None
            self.row_count -= len(self.devices.pop(min(idle)[1]).rows)
            self.forgotten += 1
        dev = self.devices[device_id] = Device(heard=time.monotonic())
        return dev

    def forget(self, topic: str) -> bool:
        """Drop the device whose status ``topic`` was deleted (an empty retained payload,
        as ``serd forget`` publishes); True if it was on the board."""
        where = self.split(topic)
        if where is None or where[1] != STATUS_SUFFIX:
            return False
        with self.lock:
            dev = self.devices.pop(where[0], None)
            if dev is None:
                return False
            self.row_count -= len(dev.rows)
            self.version += 1
        return True

    def sweep(self, now_monotonic: float | None = None) -> int:
        """Forget devices that are not online and were silent for ``stale_seconds``."""
        now_monotonic = time.monotonic() if now_monotonic is None else now_monotonic
        with self.lock:
            stale = [k for k, d in self.devices.items()
                     if d.availability not in _PRESENT
                     and now_monotonic - d.heard >= self.stale_seconds]
            for k in stale:
                self.row_count -= len(self.devices.pop(k).rows)
            if stale:
                self.forgotten += len(stale)
                self.version += 1
        return len(stale)

    def table(self, *, color: bool = False, now: float | None = None,
              max_rows: int | None = None) -> str:
        """The board as an aligned text table (at most ``max_rows`` device rows).

        Only a snapshot is taken under the lock (paho's thread needs it for every
        message); sorting and formatting happen outside it.
        """
        now = time.time() if now is None else now
        with self.lock:
            snap = [(k, d.availability, d.reason, list(d.rows.values()))
                    for k, d in self.devices.items()]
            counts = (self.messages, self.invalid + self.too_big, self.refused)
        snap.sort(key=lambda s: s[0])
        lines: list[list[str]] = []
        styles: list[str] = []
        hidden = 0
        online = degraded = 0
        for device_id, availability, reason, rows in snap:
            online += availability == "online"
            degraded += availability == "degraded"
            avail = availability
            if availability in ("offline", "degraded") and reason:
                avail = f"{availability} ({reason.replace('_', ' ')})"
            if max_rows is not None and len(lines) >= max_rows:
                hidden += max(1, len(rows))  # off screen: counted, not formatted
                continue
            shown: list[Row | None] = [*sorted(rows, key=lambda r: r.channel)] or [None]
            for row in shown:
                if max_rows is not None and len(lines) >= max_rows:
                    hidden += 1
                    continue
                emotion = conf = age = alert = ""
                style = {"offline": "offline", "degraded": "degraded"}.get(availability, "")
                if row is not None:
                    if row.updated:
                        emotion = row.label or "(unsure)"
                        conf = f"{row.confidence:.2f}" if row.confidence is not None else ""
                        age = _age(now - row.updated)
                    if row.alert is not None:
                        alert = _alert_text(row.alert)
                        if row.alert.active and availability != "offline":
                            style = "alert"
                lines.append([clean(device_id), _channel_cell(row) if row else "-",
                              clean(avail, _TEXT_CHARS + 20), clean(emotion), conf, age,
                              clean(alert, 3 * _TEXT_CHARS)])
                styles.append(style)
        messages, dropped, refused = counts
        summary = f"{len(snap)} devices, {online} online"
        if degraded:
            summary += f", {degraded} degraded"
        summary += f"; {messages} messages"
        if dropped:
            summary += f", {dropped} invalid dropped"
        if refused:
            summary += f", {refused} refused (board full)"
        header = ["DEVICE", "CHANNEL", "STATUS", "EMOTION", "CONF", "UPDATED", "LAST ALERT"]
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
        out = [_fmt(header, widths)]
        for cells, style in zip(lines, styles, strict=True):
            text = _fmt(cells, widths)
            if color and style in _STYLES:
                text = f"{_STYLES[style]}{text}\x1b[0m"
            out.append(text)
        if hidden:
            out.append(f"... {hidden} more rows")
        if not lines:
            out.append(f"(waiting for devices on {clean(self.prefix, 200)}/+/...)")
        out.append("")
        out.append(summary)
        return "\n".join(out)


_STYLES = {"alert": "\x1b[1;31m", "offline": "\x1b[2m", "degraded": "\x1b[33m"}


@dataclass(frozen=True)
class _Status:
    state: str
    reason: str


def _channel_cell(row: Row) -> str:
    """The channel, and the role it was declared with when its name does not say so
    already (``right:customer``); no role, or ``unspecified``, shows the name alone.  One
    word, so the table still splits on white space."""
    if row.role and row.role not in (row.channel, "unspecified"):
        return f"{clean(row.channel)}:{clean(row.role)}"
    return clean(row.channel)


@dataclass(frozen=True)
class _Emotion:
    channel: str
    seq: int | None
    label: str | None
    confidence: float | None
    kind: str
    role: str | None = None


@dataclass(frozen=True)
class _Alert:
    channel: str
    seq: int | None
    alert: AlertView


@dataclass(frozen=True)
class _StateChannel:
    channel: str
    label: str | None
    confidence: float | None
    kind: str
    end: float | None  # epoch seconds (device clock) of the verdict's audio end
    role: str | None = None


@dataclass(frozen=True)
class _State:
    ts: float
    channels: tuple[_StateChannel, ...]
    alerts: tuple[tuple[str, AlertView], ...]


def _epoch(value: object) -> float | None:
    """A UTC timestamp as epoch seconds, else None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return parse_iso_utc(value)
    except (ValueError, OverflowError, OSError):
        return None


def _list(p: dict[str, Any], key: str, limit: int) -> list[dict[str, Any]]:
    value = p.get(key)
    if not isinstance(value, list) or len(value) > limit or \
            not all(isinstance(x, dict) for x in value):
        raise InvalidPayloadError(f"{key}: not a list of at most {limit} objects")
    return value


def _checked_state(p: dict[str, Any]) -> _State:
    ts = _epoch(p.get("ts"))
    if ts is None:
        raise InvalidPayloadError("ts: not a UTC timestamp")
    channels = []
    for c in _list(p, "channels", _MAX_CHANNELS):
        kind = c.get("kind")
        channels.append(_StateChannel(_text(c, "channel"), _optional_text(c, "label"),
                                      _number(c.get("confidence")),
                                      kind if kind in _KINDS else "", _epoch(c.get("end")),
                                      _optional_text(c, "role")))
    alerts = []
    for a in _list(p, "alerts", _MAX_CHANNELS * 8):
        since = _epoch(a.get("since"))
        alerts.append((_text(a, "channel"), AlertView(
            _text(a, "rule"), _optional_text(a, "label") or "?", True,
            "?" if since is None else _clock_at(since), "", since or 0.0)))
    return _State(ts, tuple(channels), tuple(alerts))


def _checked(suffix: str, p: dict[str, Any],
             now: float) -> _Status | _Emotion | _Alert | _State:
    """The fields of a payload the board uses, type-checked (else :class:`InvalidPayloadError`)."""
    if suffix == STATE_SUFFIX:
        return _checked_state(p)
    if suffix == STATUS_SUFFIX:
        state = p.get("state")
        reason = p.get("reason")
        return _Status(state if state in _AVAILABILITY else "unknown",
                       reason[:_TEXT_CHARS] if isinstance(reason, str) else "")
    seq = _seq(p)
    channel = _text(p, "channel")
    if suffix == EMOTION_SUFFIX:
        kind = p.get("type")
        return _Emotion(channel, seq, _optional_text(p, "label"),
                        _number(p.get("confidence")), kind if kind in _KINDS else "",
                        _optional_text(p, "role"))
    active = alert_state(p) != CLEARED
    start = _epoch(p.get("start"))
    return _Alert(channel, seq, AlertView(_text(p, "rule"), _text(p, "label"), active,
                                          "?" if start is None else _clock_at(start),
                                          _clock(p.get("end")), start or 0.0))


# Control characters (C0, DEL, C1) and the bidirectional overrides that reorder what a
# terminal shows: anything a payload could use to move the cursor, erase rows, set the
# window title (OSC 0) or write the clipboard (OSC 52); and lone surrogates (valid in JSON
# text, "\ud800"), which cannot be written to a UTF-8 terminal at all and would stop us.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                      "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: str, limit: int = _TEXT_CHARS) -> str:
    """``text`` safe for a terminal: control characters as visible escapes, cut to
    ``limit`` characters (with an ellipsis)."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def json_line(payload: dict[str, Any]) -> str:
    """One JSON line with every control character escaped (``json.dumps`` leaves DEL,
    C1 and the bidirectional overrides raw when ``ensure_ascii`` is off)."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _fmt(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _age(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def _clock(text: object) -> str:
    epoch = _epoch(text)
    return "?" if epoch is None else _clock_at(epoch)


def _clock_at(epoch: float) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(epoch))
    except (ValueError, OverflowError, OSError):
        return "?"


def _alert_text(a: AlertView) -> str:
    what = f"{a.rule} {a.label}"
    if a.active:
        return f"ACTIVE {what} since {a.start}"
    return f"{what} {a.start}-{a.end}"


# -- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serd listen",
        description="Show every device and channel on an MQTT broker live: availability, "
        "current emotion, confidence and last alert.",
    )
    p.add_argument("--config", metavar="FILE",
                   help="serd config whose mqtt: section (host, TLS, credentials) is used; "
                   "default $SERD_CONFIG if set")
    p.add_argument("--host", help="broker host (default mqtt.host, else localhost)")
    p.add_argument("--port", type=int, help="broker port (default mqtt.port)")
    p.add_argument("--prefix", help="topic prefix (default mqtt.topic_prefix)")
    p.add_argument("--json", action="store_true",
                   help="print every message as one JSON line (payload plus topic)")
    p.add_argument("--count", type=int, metavar="N",
                   help="exit after N messages (with --json: N lines)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def settings_from(args: argparse.Namespace,
                  mqtt_settings: MqttSettings | None = None) -> MqttSettings:
    """The ``mqtt:`` settings from ``--config`` (or ``mqtt_settings``, already loaded from
    it), with the flags applied."""
    if mqtt_settings is None:
        from serd.config import load  # noqa: PLC0415

        mqtt_settings = load(args.config).mqtt  # no --config: $SERD_CONFIG or the defaults
    changes: dict[str, Any] = {}
    if args.host:
        changes["host"] = args.host
    elif mqtt_settings.host is None:
        changes["host"] = "localhost"
    if args.port is not None:
        changes["port"] = args.port
    if args.prefix:
        changes["topic_prefix"] = args.prefix.rstrip("/")
    # A listener must never take over the daemon's session on the same broker.
    changes["client_id"] = f"serd-listen-{uuid.uuid4().hex[:10]}"
    return dataclasses.replace(mqtt_settings, **changes)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from serd.config import EXIT_CONFIG  # noqa: PLC0415
    from serd.validate import ConfigError  # noqa: PLC0415

    out = out or sys.stdout
    try:
        settings = settings_from(args)
        listener = Listener(settings, as_json=args.json, count=args.count, out=out)
        return listener.run()
    except (ConfigError, ValueError) as exc:
        print(f"serd listen: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


class Listener:
    """The ``serd listen`` loop: one paho client, a :class:`Board`, a renderer."""

    def __init__(
        self, settings: MqttSettings, *, as_json: bool, count: int | None, out: TextIO
    ) -> None:
        if settings.host is None:
            raise ValueError("no broker host")
        self.settings = settings
        self.host: str = settings.host
        self.board = Board(settings.topic_prefix)
        self.as_json = as_json
        self.count = count
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.stop = threading.Event()
        self._seen = 0
        self._out_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._last_error = ""
        self._complained = False  # an error line was printed: say when connected again
        self._connected = False
        self._drawn = -1

    def run(self) -> int:
        from serd.mqttclient import connect_async, create_client  # noqa: PLC0415

        client = create_client(self.settings, self.settings.client_id or "serd-listen",
                               logger=_LOGGER)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        connect_async(client, self.settings, self.host)
        client.loop_start()
        try:
            self._render_loop()
        finally:
            # paho 2.2's network thread may log a spurious "not connected" error while it
            # stops: nothing worth telling at this point.
            client.disable_logger()
            client.disconnect()
            client.loop_stop()
            if self.tty and not self.as_json:
                self._write("\x1b[?25h\x1b[?1049l")  # cursor back, main screen back
                self._write(self.board.table() + "\n")
        return EXIT_OK

    def _render_loop(self) -> None:
        if self.as_json:
            self.stop.wait()
            return
        last_print = last_sweep = 0.0
        if self.tty:
            self._write("\x1b[?1049h\x1b[?25l")  # alternate screen, no cursor (like top)
        while not self.stop.wait(_REDRAW_SECONDS):
            if time.monotonic() - last_sweep >= _SWEEP_SECONDS:
                last_sweep = time.monotonic()
                self.board.sweep()
            if self.tty:
                # Redraw in place (ages tick even without messages); only what fits.
                height = shutil.get_terminal_size().lines
                text = self._title() + "\n\n" + self.board.table(
                    color=True, max_rows=max(1, height - 7))
                self._write("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J")
            elif self.board.version != self._drawn and time.monotonic() - last_print >= \
                    _PIPE_REPRINT_SECONDS:
                last_print = time.monotonic()
                self._print_table()
        if not self.tty and self.board.version != self._drawn:
            self._print_table()  # the last state before exiting (--count, SIGTERM)

    def _print_table(self) -> None:
        self._drawn = self.board.version
        self._write(self.board.table() + "\n\n")

    def _title(self) -> str:
        scheme = "mqtts" if self.settings.tls else "mqtt"
        where = f"{scheme}://{self.host}:{self.settings.port}/{self.settings.topic_prefix}/+"
        status = self._last_error or ("connected" if self._connected else "connecting")
        return (f"serd listen  {clean(where, 200)}  [{clean(status, 200)}]  "
                f"{time.strftime('%H:%M:%S')}  (Ctrl-C quits)")

    def _write(self, text: str) -> None:
        with self._out_lock:
            try:
                try:
                    self.out.write(text)
                except UnicodeEncodeError:  # a terminal that is not UTF-8: show, never stop
                    enc = getattr(self.out, "encoding", None) or "ascii"
                    self.out.write(text.encode(enc, "backslashreplace").decode(enc))
                self.out.flush()
            except (BrokenPipeError, ValueError):  # closed pipe or stream
                self.stop.set()

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self._error(f"broker refused the connection: {rc}; retrying")
            return
        self._last_error = ""
        self._connected = True
        if self._complained:
            self._complained = False
            print(f"serd listen: connected to {self.host}:{self.settings.port}",
                  file=sys.stderr, flush=True)
        prefix = self.settings.topic_prefix
        client.subscribe([(f"{prefix}/+/{s}", 1) for s in _SUFFIXES])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        from serd.mqttclient import describe_error  # noqa: PLC0415

        self._error(f"cannot connect to {self.host}:{self.settings.port}: "
                    f"{describe_error(sys.exc_info()[1])}; retrying")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        was, self._connected = self._connected, False
        if was and not self.stop.is_set():
            self._error(f"lost the connection ({rc}); reconnecting")

    def _error(self, message: str) -> None:
        # One line per distinct problem: retries (with paho's backoff) stay quiet.
        if message != self._last_error:
            print(f"serd listen: {message}", file=sys.stderr, flush=True)
            self._complained = True
        self._last_error = message

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.stop.is_set():
            return
        from serd.mqttclient import read_json_object  # noqa: PLC0415

        if not msg.payload:
            # An empty retained status deletes it: `serd forget` retired the device.
            self.board.forget(msg.topic)
            return
        payload = read_json_object(bytes(msg.payload))
        if payload.value is None:
            if payload.problem == "too_big":
                with self.board.lock:
                    self.board.too_big += 1
                    self.board.version += 1
            _LOGGER.debug("dropped payload on %s: %s", msg.topic, payload.problem)
            return
        if not self.board.feed(msg.topic, payload.value):
            return
        with self._count_lock:
            # paho may deliver a burst (retained messages) before stop takes effect: never
            # print more than --count lines.
            if self.count is not None and self._seen >= self.count:
                return
            self._seen += 1
            if self.as_json:
                self._write(json_line({"topic": msg.topic, **payload.value}) + "\n")
            if self.count is not None and self._seen >= self.count:
                self.stop.set()
