"""``serd listen``: watch every device on a broker from a terminal.

Subscribes to ``{prefix}/+/emotion``, ``/alert`` and ``/status`` and shows one row per
device and channel: availability (from the retained status), the current emotion and its
confidence, and the last alert.  On a terminal the table is redrawn in place; piped, it
is printed again whenever it changed (at most once a second); with ``--json`` every
message is written as one JSON line (the payload with its ``topic`` added) for scripts.

Connection settings come from the ``mqtt:`` section of ``--config`` (the same TLS and
credentials as the daemon); ``--host``, ``--port`` and ``--prefix`` override it.
Duplicate events (same ``seq`` re-sent after a device reconnects) are dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from serd.alerts import CLEARED, alert_state
from serd.events import ALERT_SUFFIX, EMOTION_SUFFIX, STATUS_SUFFIX, parse_iso_utc

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger("serd.listen")

EXIT_OK = 0
EXIT_USAGE = 2
_SUFFIXES = (EMOTION_SUFFIX, ALERT_SUFFIX, STATUS_SUFFIX)
_REDRAW_SECONDS = 0.5
_PIPE_REPRINT_SECONDS = 1.0


@dataclass
class Row:
    """What the table shows for one device and channel."""

    device: str
    channel: str
    label: str | None = None
    confidence: float | None = None
    kind: str = ""
    updated: float = 0.0  # time.time() when the last emotion event arrived
    alert: dict[str, Any] | None = None


@dataclass
class Device:
    availability: str = "unknown"
    reason: str = ""
    last_seq: dict[str, int] = field(default_factory=dict)
    # Streams whose next event may restart at seq 1 (the device just came online).
    fresh: set[str] = field(default_factory=set)


class Board:
    """Latest state of every device and channel, fed with MQTT messages."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.devices: dict[str, Device] = {}
        self.rows: dict[tuple[str, str], Row] = {}
        self.messages = 0
        self.duplicates = 0
        self.version = 0  # bumped on every change (for redraws)
        self.lock = threading.Lock()

    def split(self, topic: str) -> tuple[str, str] | None:
        """``(device, suffix)`` of one of our topics, else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 2 or parts[1] not in _SUFFIXES:
            return None
        return parts[0], parts[1]

    def feed(self, topic: str, payload: dict[str, Any], now: float | None = None) -> bool:
        """Update from one message; False for a duplicate or something not ours."""
        where = self.split(topic)
        if where is None:
            return False
        device_id, suffix = where
        now = time.time() if now is None else now
        with self.lock:
            self.messages += 1
            dev = self.devices.setdefault(device_id, Device())
            if suffix == STATUS_SUFFIX:
                state = payload.get("state")
                if state == "online" and dev.availability != "online":
                    dev.fresh = set(_SUFFIXES)  # a wiped state dir restarts seq at 1
                dev.availability = state if state in ("online", "offline") else "unknown"
                dev.reason = str(payload.get("reason") or "")
                self.version += 1
                return True
            seq = payload.get("seq")
            if isinstance(seq, int):
                # A seq already seen: re-sent after a reconnect (docs/events.md).
                last = dev.last_seq.get(suffix, 0)
                restarted = suffix in dev.fresh and seq == 1
                dev.fresh.discard(suffix)
                if seq <= last and not restarted and last - seq < 1000:
                    self.duplicates += 1
                    return False
                dev.last_seq[suffix] = seq
            channel = payload.get("channel")
            if not isinstance(channel, str):
                return False
            row = self.rows.setdefault((device_id, channel), Row(device_id, channel))
            if suffix == EMOTION_SUFFIX:
                row.label = payload.get("label")
                conf = payload.get("confidence")
                row.confidence = float(conf) if isinstance(conf, (int, float)) else None
                row.kind = str(payload.get("type") or "")
                row.updated = now
            else:
                row.alert = dict(payload)
            self.version += 1
            return True

    def table(self, *, color: bool = False, now: float | None = None) -> str:
        """The board as an aligned text table."""
        now = time.time() if now is None else now
        with self.lock:
            keys = sorted(set(self.rows) | {(d, "") for d in self.devices
                                            if not any(k[0] == d for k in self.rows)})
            lines: list[list[str]] = []
            styles: list[str] = []
            for device_id, channel in keys:
                dev = self.devices.get(device_id, Device())
                row = self.rows.get((device_id, channel))
                avail = dev.availability
                if avail == "offline" and dev.reason:
                    avail = f"offline ({dev.reason.replace('_', ' ')})"
                emotion = conf = age = alert = ""
                style = ""
                if row is not None:
                    if row.updated:
                        emotion = row.label or "(unsure)"
                        conf = f"{row.confidence:.2f}" if row.confidence is not None else ""
                        age = _age(now - row.updated)
                    if row.alert is not None:
                        alert, active = _alert_text(row.alert)
                        style = "alert" if active else ""
                if dev.availability == "offline":
                    style = "offline"
                lines.append([device_id, channel or "-", avail, emotion, conf, age, alert])
                styles.append(style)
            summary = (f"{len(self.devices)} devices, "
                       f"{sum(d.availability == 'online' for d in self.devices.values())} "
                       f"online; {self.messages} messages")
        header = ["DEVICE", "CHANNEL", "STATUS", "EMOTION", "CONF", "UPDATED", "LAST ALERT"]
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
        out = [_fmt(header, widths)]
        for cells, style in zip(lines, styles, strict=True):
            text = _fmt(cells, widths)
            if color and style == "alert":
                text = f"\x1b[1;31m{text}\x1b[0m"
            elif color and style == "offline":
                text = f"\x1b[2m{text}\x1b[0m"
            out.append(text)
        if not lines:
            out.append(f"(waiting for devices on {self.prefix}/+/...)")
        out.append("")
        out.append(summary)
        return "\n".join(out)


def _fmt(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _age(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    return f"{s // 3600}h ago"


def _clock(text: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(parse_iso_utc(str(text))))
    except ValueError:
        return "?"


def _alert_text(p: dict[str, Any]) -> tuple[str, bool]:
    active = alert_state(p) != CLEARED
    what = f"{p.get('rule', '?')} {p.get('label', '?')}"
    if active:
        return f"ACTIVE {what} since {_clock(p.get('start'))}", True
    return f"{what} {_clock(p.get('start'))}-{_clock(p.get('end'))}", False


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


def settings_from(args: argparse.Namespace) -> MqttSettings:
    """The ``mqtt:`` settings from ``--config``, with the flags applied."""
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
        self._last_error = ""
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
        last_print = 0.0
        if self.tty:
            self._write("\x1b[?1049h\x1b[?25l")  # alternate screen, no cursor (like top)
        while not self.stop.wait(_REDRAW_SECONDS):
            if self.tty:
                # Redraw in place (ages tick even without messages).
                text = self._title() + "\n\n" + self.board.table(color=True)
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
        status = self._last_error or "connected"
        return f"serd listen  {where}  [{status}]  {time.strftime('%H:%M:%S')}  (Ctrl-C quits)"

    def _write(self, text: str) -> None:
        with self._out_lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (BrokenPipeError, ValueError):
                self.stop.set()

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self._error(f"broker refused the connection: {rc}; retrying")
            return
        self._last_error = ""
        self._connected = True
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
        if message != self._last_error:
            print(f"serd listen: {message}", file=sys.stderr, flush=True)
        self._last_error = message

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(bytes(msg.payload))
        except ValueError:
            _LOGGER.debug("not JSON on %s", msg.topic)
            return
        if not isinstance(payload, dict):
            return
        fresh = self.board.feed(msg.topic, payload)
        if self.as_json and fresh:
            self._write(json.dumps({"topic": msg.topic, **payload}, ensure_ascii=False) + "\n")
        if fresh:
            self._seen += 1
            if self.count is not None and self._seen >= self.count:
                self.stop.set()
