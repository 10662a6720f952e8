"""Publishing events: MQTT (durable, in order, at least once) or JSON lines on stdout.

:class:`MqttPublisher` writes every ``emotion``/``alert`` event to the on-disk
:class:`~serd.spool.Spool` first (which assigns its persistent ``seq``) and a sender
thread publishes the spool in order with QoS 1, deleting a row only after the broker's
PUBACK.  After every (re)connect the sender starts again from the oldest unacked row,
so an outage, a broker restart or a ``kill -9`` of the daemon can cause duplicates
(same ``seq``, byte-identical payload) but never gaps, except for events dropped because
the spool was full, which are counted.  ``status`` is retained (``online`` on connect,
``offline`` as Last Will and on clean shutdown); ``health`` is best effort (QoS 0, not
spooled, skipped while disconnected).  :class:`StdoutPublisher` is the no-broker sink:
same interface, JSON lines on stdout, still persistent ``seq`` numbers.

Topics and payloads are documented in docs/events.md.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from serd import __version__
from serd.events import (
    ALERT_SUFFIX,
    EMOTION_SUFFIX,
    HEALTH_SUFFIX,
    STATUS_SUFFIX,
    health_event,
    status_event,
    to_json,
    topic,
    validate_device_id,
)
from serd.mqttclient import connect_async, create_client, describe_error
from serd.mqttsettings import MqttSettings
from serd.spool import SPOOL_FILENAME, Spool

_LOGGER = logging.getLogger(__name__)

EventKind = Literal["emotion", "alert"]
_EVENT_KINDS: tuple[str, ...] = (EMOTION_SUFFIX, ALERT_SUFFIX)
_EVENT_QOS = 1
# Repeat an unchanged connection error at ERROR level at most this often; in between
# it goes to DEBUG, so a broker that is down for a day does not flood the journal.
_REPEAT_ERROR_SECONDS = 300.0
_SENDER_POLL_SECONDS = 0.5
_SENDER_ERROR_BACKOFF_SECONDS = 1.0


@dataclass(frozen=True)
class PublisherStats:
    """Counters for the health payload (``publisher`` object)."""

    # True while connected to the broker (always True for stdout).
    connected: bool
    # Events on disk awaiting delivery.
    spool_depth: int
    # Events dropped because the spool (or its disk-full memory hold) was full; persisted.
    dropped: int
    # Events held in memory without a seq because the disk is full.
    held_in_memory: int
    # Events delivered since start (PUBACKs; a re-sent event can count twice).
    sent: int
    # Events refused by the broker (MQTT 5 PUBACK failure) or unwritable; discarded.
    rejected: int
    # Successful connections since start (1 + reconnects).
    connects: int


class EventPublisher(Protocol):
    """What the daemon needs from a publisher; both publishers here satisfy it."""

    def start(self) -> None:
        """Open the spool and start delivering; call once before publishing."""

    def publish_event(self, kind: EventKind, payload: Mapping[str, Any]) -> int | None:
        """Spool an ``emotion``/``alert`` payload; its ``seq``, or None if held (disk full)."""

    def publish_health(self, fields: Mapping[str, Any]) -> None:
        """Best-effort health report built from the daemon's ``fields``."""

    def publish_retained(self, suffix: str, payload: Mapping[str, Any]) -> None:
        """Retained QoS 1 ``payload`` on ``suffix`` (``status``, ``state``): sent now if
        connected and again after every reconnect (the latest one per suffix)."""

    def stats(self) -> PublisherStats:
        """Current counters."""

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Deliver what can be delivered within the timeout, announce offline, stop."""


def make_publisher(settings: MqttSettings, device_id: str, state_dir: Path | str) -> EventPublisher:
    """:class:`MqttPublisher` if ``settings.host`` is set, else :class:`StdoutPublisher`."""
    if settings.host is None:
        return StdoutPublisher(device_id, state_dir, spool_max_events=settings.spool_max_events)
    return MqttPublisher(settings, device_id, state_dir)


class MqttPublisher:
    """Durable, ordered, at-least-once MQTT publisher; see the module docstring."""

    def __init__(self, settings: MqttSettings, device_id: str, state_dir: Path | str) -> None:
        if settings.host is None:
            raise ValueError("MqttPublisher needs mqtt.host; use StdoutPublisher without one")
        self._settings = settings
        self._host: str = settings.host
        self._device_id = validate_device_id(device_id)
        self._spool_path = Path(state_dir) / SPOOL_FILENAME
        self._spool: Spool | None = None
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None
        # on_publish runs in paho's network thread holding paho's message lock, so it
        # only queues the mid; the sender thread maps mids to rows and acks in batches.
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop_sender = threading.Event()
        self._lock = threading.Lock()
        self._connected = False
        # Bumped on every successful connect; the sender then restarts from the oldest row.
        self._epoch = 0
        self._connects = 0
        self._sent = 0
        self._rejected = 0
        self._closing = False
        self._started = False
        self._last_error = ""
        self._last_error_time = 0.0
        self._answered = False  # a CONNACK (success or refusal) came for this attempt
        # Latest retained payload per suffix (serd.state): re-sent on every connect, so a
        # broker restarted without persistence learns the present again.
        self._retained: dict[str, str] = {}

    # -- public API ------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        """The device id used in topics and payloads."""
        return self._device_id

    def topic(self, suffix: str) -> str:
        """Full topic for ``suffix`` (``emotion``, ``alert``, ``status``, ``health``)."""
        return topic(self._settings.topic_prefix, self._device_id, suffix)

    def start(self) -> None:
        """Open the spool, configure the client and start connecting in the background.

        A broker that is down is not an error (the client keeps retrying); unreadable
        password/TLS files are, and raise :class:`~serd.validate.ConfigError`.
        """
        if self._started:
            raise RuntimeError("publisher already started")
        settings = self._settings
        client = self._make_client()
        self._spool = Spool(self._spool_path, max_events=settings.spool_max_events)
        self._client = client
        self._started = True
        depth = self._spool.depth()
        if depth:
            _LOGGER.info("spool holds %d undelivered events; they go first", depth)
        self._sender = threading.Thread(
            target=self._run_sender, name="serd-mqtt-sender", daemon=True
        )
        self._sender.start()
        # The spool, not a broker session, is what makes delivery durable, so a clean
        # start every time: nothing for the broker to keep for a publisher.
        connect_async(client, settings, self._host, clean=True)
        client.loop_start()
        _LOGGER.info(
            "publishing to mqtt%s://%s:%d/%s",
            "s" if settings.tls else "",
            self._host,
            settings.port,
            self.topic("#"),
        )

    def publish_event(self, kind: EventKind, payload: Mapping[str, Any]) -> int | None:
        """Spool ``payload`` on topic ``kind`` and return its ``seq``.

        Returns as soon as the event is on disk (one fsync); delivery is asynchronous.
        None means the disk is full and the event is held in memory without a seq (see
        Spool.put).  Raises RuntimeError before start() and once close() has begun:
        stop the producers first.
        """
        if kind not in _EVENT_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(_EVENT_KINDS)}")
        spool = self._require_running()
        seq = spool.put(kind, payload, _EVENT_QOS)
        self._wake.set()
        return seq

    def publish_health(self, fields: Mapping[str, Any]) -> None:
        """Publish a health report (QoS 0, not retained); dropped while disconnected.

        ``fields`` come from the daemon; a ``publisher`` object with :meth:`stats` is
        added unless ``fields`` already has one.
        """
        client = self._client
        if client is None or not self._connected or self._closing:
            # paho would queue it and send it late after a reconnect: stale, so drop it.
            _LOGGER.debug("not connected: health report dropped")
            return
        merged = dict(fields)
        merged.setdefault("publisher", dataclasses.asdict(self.stats()))
        client.publish(
            self.topic(HEALTH_SUFFIX),
            to_json(health_event(self._device_id, merged)),
            qos=0,
            retain=False,
        )

    def publish_retained(self, suffix: str, payload: Mapping[str, Any]) -> None:
        """Publish ``payload`` retained (QoS 1) on ``suffix`` now if connected, and again
        after every reconnect; a ``status`` given here replaces the ``online`` of connect."""
        text = to_json(payload)
        with self._lock:
            self._retained[suffix] = text
            connected = self._connected
        client = self._client
        if client is not None and connected and not self._closing:
            client.publish(self.topic(suffix), text, qos=1, retain=True)

    def stats(self) -> PublisherStats:
        """Current counters (cheap; safe from any thread)."""
        spool = self._spool.stats() if self._spool is not None else None
        with self._lock:
            return PublisherStats(
                connected=self._connected,
                spool_depth=spool.depth if spool else 0,
                dropped=spool.dropped if spool else 0,
                held_in_memory=spool.held_in_memory if spool else 0,
                sent=self._sent,
                rejected=self._rejected,
                connects=self._connects,
            )

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Flush for up to ``timeout_seconds`` while connected, publish retained
        ``offline`` and disconnect cleanly.  Undelivered events stay in the spool for
        the next start.  Idempotent."""
        if not self._started or self._closing:
            return
        client, spool = self._client, self._spool
        assert client is not None
        assert spool is not None
        deadline = time.monotonic() + timeout_seconds
        # Waiting only makes sense while connected: during an outage give up at once.
        # depth 0 means every event has its PUBACK (rows are deleted only then).
        while spool.depth() and self._connected:
            if time.monotonic() >= deadline:
                break
            self._wake.set()
            time.sleep(0.02)
        self._stop_sender.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout=max(1.0, deadline - time.monotonic()))
        if self._connected:
            offline = status_event(self._device_id, "offline", "shutdown", version=__version__)
            info = client.publish(self.topic(STATUS_SUFFIX), to_json(offline), qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                _LOGGER.warning("could not publish offline status: %s", exc)
        self._closing = True
        client.disconnect()
        client.loop_stop()
        left = spool.depth()
        spool.close()
        with self._lock:
            self._connected = False
        if left:
            _LOGGER.info("closed with %d undelivered events kept in the spool", left)
        else:
            _LOGGER.info("closed; all events delivered")

    # -- client setup ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        settings = self._settings
        # Protocol, TLS, credentials, backoff and timeouts are shared with the other
        # clients (serd listen, discovery): serd.mqttclient.
        client = create_client(
            settings, settings.client_id or f"serd-{self._device_id}", logger=_LOGGER
        )
        client.max_inflight_messages_set(settings.inflight_max_messages)
        will = status_event(
            self._device_id, "offline", "connection_lost", version=__version__, with_ts=False
        )
        client.will_set(self.topic(STATUS_SUFFIX), to_json(will), qos=1, retain=True)
        # paho logs some failures itself, at ERROR, once per attempt ("failed to receive
        # on socket"): let each distinct one through once per _REPEAT_ERROR_SECONDS.
        paho_logger = _LOGGER.getChild("paho")
        if _PAHO_REPEATS not in paho_logger.filters:
            paho_logger.addFilter(_PAHO_REPEATS)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- paho callbacks (network thread; must not raise or block) --------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._answered = True
        try:
            if reason_code.is_failure:
                self._report_error(
                    f"MQTT broker {self._host}:{self._settings.port} refused the "
                    f"connection: {reason_code}; retrying"
                )
                return
            with self._lock:
                self._connected = True
                self._epoch += 1
                self._connects += 1
            self._last_error = ""
            _LOGGER.info("connected to MQTT broker %s:%d", self._host, self._settings.port)
            online = status_event(self._device_id, "online", "connected", version=__version__)
            with self._lock:
                retained = {STATUS_SUFFIX: to_json(online), **self._retained}
            for suffix, text in retained.items():
                client.publish(self.topic(suffix), text, qos=1, retain=True)
            self._wake.set()
        except Exception:
            _LOGGER.exception("error in MQTT on_connect")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block, so the exception
        # that made the attempt fail is still the one being handled.
        exc = sys.exc_info()[1]
        self._report_error(
            f"cannot connect to MQTT broker {self._host}:{self._settings.port}: "
            f"{describe_error(exc)}; retrying"
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
        answered, self._answered = self._answered, False
        if self._closing:
            return
        if not was_connected and not answered:
            # TCP (and TLS) worked but the broker never answered CONNECT: a TLS port
            # without mqtt.tls, something that is not an MQTT broker, or a dead path.
            self._report_error(
                f"connection to MQTT broker {self._host}:{self._settings.port} ended before "
                f"the broker accepted it ({reason_code}); check mqtt.port and mqtt.tls; "
                "retrying"
            )
        if was_connected:
            _LOGGER.warning(
                "lost connection to MQTT broker %s:%d (%s); reconnecting",
                self._host,
                self._settings.port,
                reason_code,
            )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acks.put((mid, reason_code.is_failure, str(reason_code)))
        self._wake.set()

    def _report_error(self, message: str) -> None:
        """One line per distinct problem; repeats go to DEBUG, or ERROR every 5 min."""
        now = time.monotonic()
        if message != self._last_error or now - self._last_error_time >= _REPEAT_ERROR_SECONDS:
            self._last_error = message
            self._last_error_time = now
            _LOGGER.error("%s", message)
        else:
            _LOGGER.debug("%s", message)

    # -- sender thread ---------------------------------------------------------------

    def _run_sender(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> spool row id; this thread only
        cursor = 0  # last spool row id handed to paho in this connection epoch
        epoch_seen = 0
        last_flush_attempt = 0.0
        spool, client = self._spool, self._client
        assert spool is not None
        assert client is not None
        while not self._stop_sender.is_set():
            self._wake.wait(_SENDER_POLL_SECONDS)
            self._wake.clear()
            if self._stop_sender.is_set():
                break
            try:
                self._drain_acks(spool, inflight)
                now = time.monotonic()
                if spool.stats().held_in_memory and now - last_flush_attempt >= 1.0:
                    last_flush_attempt = now
                    spool.flush_held()
                with self._lock:
                    connected, epoch = self._connected, self._epoch
                if not connected:
                    continue
                if epoch != epoch_seen:
                    # New connection: whatever was in flight may be lost; resend from the
                    # oldest unacked row.  paho may also resend its own copies: duplicates
                    # (same seq) are allowed, gaps are not.
                    epoch_seen = epoch
                    inflight.clear()
                    cursor = 0
                room = self._settings.inflight_max_messages - len(inflight)
                if room > 0:
                    cursor = self._send_batch(client, spool, inflight, cursor, room)
            except Exception:
                _LOGGER.exception(
                    "MQTT sender error; retrying in %.0f s", _SENDER_ERROR_BACKOFF_SECONDS
                )
                self._stop_sender.wait(_SENDER_ERROR_BACKOFF_SECONDS)

    def _send_batch(
        self,
        client: mqtt.Client,
        spool: Spool,
        inflight: dict[int, int],
        cursor: int,
        room: int,
    ) -> int:
        for entry in spool.peek(room, after_id=cursor):
            info = client.publish(
                self.topic(entry.stream), entry.payload_json, qos=entry.qos, retain=False
            )
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                _LOGGER.warning(
                    "publish of %s seq %d failed: %s",
                    entry.stream,
                    entry.seq,
                    mqtt.error_string(info.rc),
                )
                break
            # NO_CONN: paho keeps it queued; the next connect resends from the spool too.
            inflight[info.mid] = entry.id
            cursor = entry.id
        return cursor

    def _drain_acks(self, spool: Spool, inflight: dict[int, int]) -> None:
        delivered: list[int] = []
        sent = rejected = 0
        while True:
            try:
                mid, failed, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            row = inflight.pop(mid, None)
            if row is None:
                continue  # status/health message, or a mid from a previous connection
            delivered.append(row)
            if failed:
                # A refusal (e.g. not authorized) is final: retrying would block the
                # queue forever, so the event is discarded and counted.
                rejected += 1
                self._report_error(f"MQTT broker refused an event: {reason}; discarded")
            else:
                sent += 1
        if delivered:
            spool.ack(delivered)
            with self._lock:
                self._sent += sent
                self._rejected += rejected

    def _require_running(self) -> Spool:
        if self._spool is None or not self._started:
            raise RuntimeError("publisher not started")
        if self._closing or self._stop_sender.is_set():
            raise RuntimeError("publisher is closed")
        return self._spool


class StdoutPublisher:
    """No-broker sink: one JSON object per line on stdout.

    Events still go through the spool, so ``seq`` numbers are persistent exactly as with
    MQTT, and events left by an earlier MQTT run are printed at start.  Status lines
    (``online``/``offline``) and health reports are printed too.
    """

    def __init__(
        self,
        device_id: str,
        state_dir: Path | str,
        *,
        stream: TextIO | None = None,
        spool_max_events: int = 100_000,
    ) -> None:
        self._device_id = validate_device_id(device_id)
        self._spool_path = Path(state_dir) / SPOOL_FILENAME
        self._spool_max_events = spool_max_events
        self._stream = stream if stream is not None else sys.stdout
        self._spool: Spool | None = None
        self._lock = threading.Lock()
        self._sent = 0
        self._rejected = 0
        self._broken = False
        self._closed = False

    def start(self) -> None:
        """Open the spool, print ``online`` and any events left in the spool."""
        if self._spool is not None:
            raise RuntimeError("publisher already started")
        self._spool = Spool(self._spool_path, max_events=self._spool_max_events)
        self._write(status_event(self._device_id, "online", "connected", version=__version__))
        with self._lock:
            self._drain_locked(self._spool)

    def publish_event(self, kind: EventKind, payload: Mapping[str, Any]) -> int | None:
        """Spool, print and ack ``payload``; its ``seq`` (None if held: disk full)."""
        if kind not in _EVENT_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(_EVENT_KINDS)}")
        if self._spool is None or self._closed:
            raise RuntimeError("publisher not started" if self._spool is None else "closed")
        with self._lock:
            seq = self._spool.put(kind, payload, _EVENT_QOS)
            self._drain_locked(self._spool)
        return seq

    def publish_retained(self, suffix: str, payload: Mapping[str, Any]) -> None:
        """Print a ``status`` line; other retained payloads (``state``) only sum up the
        events already printed, so they are not."""
        if suffix == STATUS_SUFFIX:
            self._write(payload)

    def publish_health(self, fields: Mapping[str, Any]) -> None:
        """Print a health line (with a ``publisher`` object unless given)."""
        merged = dict(fields)
        merged.setdefault("publisher", dataclasses.asdict(self.stats()))
        self._write(health_event(self._device_id, merged))

    def stats(self) -> PublisherStats:
        """Current counters; ``connected`` is True while stdout is writable."""
        spool = self._spool.stats() if self._spool is not None else None
        with self._lock:
            return PublisherStats(
                connected=not self._broken,
                spool_depth=spool.depth if spool else 0,
                dropped=spool.dropped if spool else 0,
                held_in_memory=spool.held_in_memory if spool else 0,
                sent=self._sent,
                rejected=self._rejected,
                connects=1 if self._spool is not None else 0,
            )

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Print ``offline`` and close the spool.  Idempotent."""
        if self._spool is None or self._closed:
            return
        self._closed = True
        self._write(status_event(self._device_id, "offline", "shutdown", version=__version__))
        with self._lock:
            self._spool.close()

    def _drain_locked(self, spool: Spool) -> None:
        if spool.stats().held_in_memory:
            spool.flush_held()
        while True:
            entries = spool.peek(100)
            if not entries:
                return
            for entry in entries:
                if self._write_line(entry.payload_json):
                    self._sent += 1
                else:
                    self._rejected += 1
            spool.ack([e.id for e in entries])

    def _write(self, payload: Mapping[str, Any]) -> None:
        with self._lock:
            self._write_line(to_json(payload))

    def _write_line(self, line: str) -> bool:
        if self._broken:
            return False
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: closed file
            self._broken = True
            _LOGGER.error("cannot write events to stdout (%s); discarding them from now on", exc)
            return False
        return True


class _RepeatFilter(logging.Filter):
    """Drops a warning/error identical to one let through less than
    ``_REPEAT_ERROR_SECONDS`` ago (paho repeats its own once per reconnect attempt)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message, now = record.getMessage(), time.monotonic()
        with self._lock:
            last = self._seen.get(message)
            if last is not None and now - last < _REPEAT_ERROR_SECONDS:
                return False
            if len(self._seen) >= 256:
                self._seen.clear()
            self._seen[message] = now
        return True


_PAHO_REPEATS = _RepeatFilter()
