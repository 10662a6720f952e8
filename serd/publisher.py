"""Publishing events: MQTT (durable, in order, at least once) or JSON lines on stdout.

:class:`MqttPublisher` writes every ``emotion``/``alert`` event to the on-disk
:class:`~serd.spool.Spool` first (which assigns its persistent ``seq``) and a sender
thread publishes the spool in order with QoS 1, deleting a row only after the broker's
PUBACK.  After every (re)connect the sender starts again from the oldest unacked row,
so an outage, a broker restart or a ``kill -9`` of the daemon can cause duplicates
(same ``seq``, byte-identical payload) but never gaps, except for events dropped because
the spool was full or older than ``spool_max_age_seconds``, which are counted.

Delivery is only ever counted when it happened.  An event the broker refuses (an MQTT 5
PUBACK reason code >= 0x80, e.g. 0x87 Not authorized by an ACL) stays in the spool,
is logged once per episode, counted (``rejected``, ``refused_kept``) and retried after
every reconnect and every ``_REFUSED_RETRY_SECONDS``.  MQTT 3.1.1 has no reason code in
PUBACK: Mosquitto (2.0.11 checked) acknowledges a publish its ACL denies exactly like a
delivered one.  Under 3.1.1 the publisher therefore subscribes to its own event topics
and deletes a row only when the broker echoes the event back; a PUBACK without the echo
within ``_ECHO_TIMEOUT_SECONDS`` is treated as a refusal.  Where the broker refuses
that subscription, PUBACKs are trusted, with one warning.

A session taken over by another client with the same client id (MQTT 5 DISCONNECT
reason 0x8E; under 3.1.1, the broker closing the connection right after accepting it
several times in a row) is logged as exactly that, once, and counted in health
(``session_taken_over``).  ``status`` is retained (``online`` on connect,
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
from serd.spool import SPOOL_FILENAME, Spool, SpoolEntry

_LOGGER = logging.getLogger(__name__)

EventKind = Literal["emotion", "alert"]
_EVENT_KINDS: tuple[str, ...] = (EMOTION_SUFFIX, ALERT_SUFFIX)
_EVENT_QOS = 1
# Repeat an unchanged connection error at ERROR level at most this often; in between
# it goes to DEBUG, so a broker that is down for a day does not flood the journal.
_REPEAT_ERROR_SECONDS = 300.0
_SENDER_POLL_SECONDS = 0.5
_SENDER_ERROR_BACKOFF_SECONDS = 1.0
# Refused events are offered again this often (and after each reconnect): an ACL fixed
# on the broker lets them through without a restart.
_REFUSED_RETRY_SECONDS = 60.0
# MQTT 3.1.1: a PUBACKed event not echoed back within this long was refused.
_ECHO_TIMEOUT_SECONDS = 10.0
_SESSION_TAKEN_OVER = 0x8E
# MQTT 3.1.1: this many connections in a row closed by the broker within
# _SHORT_CONNECTION_SECONDS of being accepted mean another client takes the session.
_SHORT_CONNECTION_SECONDS = 3.0
_SHORT_CONNECTIONS_TAKEOVER = 3
_EXPIRE_EVERY_SECONDS = 60.0
# Reconnects within this long of a session takeover are logged at DEBUG only.
_TAKEOVER_QUIET_SECONDS = 60.0


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
    # Refusals by the broker since start (MQTT 5 PUBACK failure, or under 3.1.1 no echo);
    # a refused event stays in the spool and is retried, so one event can count again.
    rejected: int
    # Successful connections since start (1 + reconnects).
    connects: int
    # Events in the spool that the broker refused at their last try.
    refused_kept: int = 0
    # Times another client took this client id's session (a twin device_id).
    session_taken_over: int = 0
    # Undelivered events dropped for age (mqtt.spool_max_age_seconds); persisted.
    expired: int = 0
    # Damaged spool files moved aside and replaced (serd.spool); persisted.
    spool_recovered: int = 0


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
        self._refused_kept = 0
        self._refusal_logged = False
        self._taken_over = 0
        self._takeover_logged = False
        self._last_takeover = 0.0  # monotonic
        self._connected_at = 0.0  # monotonic
        self._short_connections = 0
        # MQTT 3.1.1 delivery check (see the module docstring): "off" trusts PUBACKs.
        self._echo_state: Literal["off", "pending", "on"] = "off"
        self._echoes: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
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
        if settings.spool_max_age_seconds is not None:
            self._spool.expire(settings.spool_max_age_seconds)
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
                refused_kept=self._refused_kept,
                session_taken_over=self._taken_over,
                expired=spool.expired if spool else 0,
                spool_recovered=spool.recovered if spool else 0,
            )

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Flush for up to ``timeout_seconds`` while connected, publish retained
        ``offline`` and disconnect cleanly.  Undelivered events stay in the spool for
        the next start.  Idempotent.  The closing line counts what the broker
        acknowledged (under 3.1.1: echoed), never what was merely sent."""
        if not self._started or self._closing:
            return
        client, spool = self._client, self._spool
        assert client is not None
        assert spool is not None
        deadline = time.monotonic() + timeout_seconds
        # Waiting only makes sense while connected: during an outage give up at once.
        # depth 0 means every event has its PUBACK (rows are deleted only then).
        while spool.depth() > self._refused_kept and self._connected:
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
            sent, refused = self._sent, self._refused_kept
        if left:
            _LOGGER.info(
                "closed: %d events acknowledged by the broker; %d undelivered kept in the "
                "spool%s", sent, left,
                f" ({refused} of them refused by the broker)" if refused else "",
            )
        else:
            _LOGGER.info("closed: %d events acknowledged by the broker; none left", sent)

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
        if settings.protocol == "3.1.1":
            client.on_subscribe = self._on_subscribe
            for suffix in _EVENT_KINDS:
                client.message_callback_add(self.topic(suffix), self._on_echo)
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
            if self._settings.protocol == "3.1.1":
                # Echo check first: its SUBACK decides whether PUBACKs are trusted.
                self._echo_state = "pending"
                client.subscribe([(self.topic(k), _EVENT_QOS) for k in _EVENT_KINDS])
            with self._lock:
                self._connected = True
                self._epoch += 1
                self._connects += 1
            self._connected_at = time.monotonic()
            self._last_error = ""
            # While a twin keeps taking the session over (logged once), each reconnect
            # would be another INFO line, one every second or two for ever.
            quiet = (self._takeover_logged and
                     time.monotonic() - self._last_takeover < _TAKEOVER_QUIET_SECONDS)
            (_LOGGER.debug if quiet else _LOGGER.info)(
                "connected to MQTT broker %s:%d", self._host, self._settings.port)
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
        if was_connected and self._taken_over_now(reason_code):
            return
        if was_connected:
            _LOGGER.warning(
                "lost connection to MQTT broker %s:%d (%s); reconnecting",
                self._host,
                self._settings.port,
                reason_code,
            )

    def _taken_over_now(self, reason_code: ReasonCode) -> bool:
        """Whether this disconnect is another client taking our session; logs it once."""
        if reason_code.value == _SESSION_TAKEN_OVER:
            taken = True
        else:
            # MQTT 3.1.1 has no reason: the broker just closes the socket, right after
            # accepting us, each time the twin connects.
            lasted = time.monotonic() - self._connected_at
            self._short_connections = (
                self._short_connections + 1 if lasted < _SHORT_CONNECTION_SECONDS else 0
            )
            taken = self._short_connections >= _SHORT_CONNECTIONS_TAKEOVER
        if not taken:
            return False
        self._last_takeover = time.monotonic()
        with self._lock:
            self._taken_over += 1
        client_id = self._settings.client_id or f"serd-{self._device_id}"
        if self._takeover_logged:
            _LOGGER.debug("session taken over again (%d times)", self._taken_over)
        else:
            self._takeover_logged = True
            _LOGGER.error(
                "MQTT session taken over: another client connected to %s:%d with client id "
                "%r, so the broker closed ours (%s). Two devices (or two serd) use device_id "
                "%r: give each its own device_id (null = host name + machine-id suffix); "
                "reconnecting, and counting this in health (session_taken_over)",
                self._host, self._settings.port, client_id, reason_code, self._device_id,
            )
        return True

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            if self._echo_state != "off":
                _LOGGER.warning(
                    "the broker refused serd's subscription to its own topics %s: under "
                    "MQTT 3.1.1 a refused publish cannot be told from a delivered one, so "
                    "PUBACKs are trusted (allow read on them, or use mqtt.protocol \"5\")",
                    self.topic("+"),
                )
            self._echo_state = "off"
        else:
            self._echo_state = "on"
        self._wake.set()

    def _on_echo(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Anyone allowed to publish here could send anything: only an exact copy of a
        # spooled payload confirms a row (compared in the sender thread).
        if len(msg.payload) <= 65536:
            self._echoes.put((msg.topic, bytes(msg.payload).decode("utf-8", "replace")))
            self._wake.set()

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
        track = _Tracking()  # this thread only
        epoch_seen = 0
        last_flush_attempt = 0.0
        last_expire = time.monotonic()
        spool, client = self._spool, self._client
        assert spool is not None
        assert client is not None
        max_age = self._settings.spool_max_age_seconds
        while not self._stop_sender.is_set():
            self._wake.wait(_SENDER_POLL_SECONDS)
            self._wake.clear()
            if self._stop_sender.is_set():
                break
            try:
                now = time.monotonic()
                self._drain_acks(spool, track, now)
                if spool.stats().held_in_memory and now - last_flush_attempt >= 1.0:
                    last_flush_attempt = now
                    spool.flush_held()
                if now - last_expire >= _EXPIRE_EVERY_SECONDS:
                    last_expire = now
                    # Also truncates the WAL, which holds delivered events' text.
                    if max_age is not None:
                        spool.expire(max_age)
                    else:
                        spool.scrub()
                with self._lock:
                    connected, epoch = self._connected, self._epoch
                if not connected:
                    continue
                if epoch != epoch_seen or now >= track.retry_at:
                    # New connection: whatever was in flight may be lost; resend from the
                    # oldest unacked row.  paho may also resend its own copies: duplicates
                    # (same seq) are allowed, gaps are not.  Refused rows get another try
                    # here too.
                    if epoch != epoch_seen:
                        epoch_seen = epoch
                        track.new_connection()
                    track.retry_refused(now)
                    self._set_refused(len(track.refused))
                room = self._settings.inflight_max_messages - len(track.busy)
                if room > 0:
                    self._send_batch(client, spool, track, room)
            except Exception:
                _LOGGER.exception(
                    "MQTT sender error; retrying in %.0f s", _SENDER_ERROR_BACKOFF_SECONDS
                )
                self._stop_sender.wait(_SENDER_ERROR_BACKOFF_SECONDS)

    def _send_batch(self, client: mqtt.Client, spool: Spool, track: _Tracking, room: int) -> None:
        for entry in spool.peek(room + len(track.busy) + len(track.refused),
                                after_id=track.cursor):
            if room <= 0:
                break
            track.cursor = entry.id
            if entry.id in track.busy or entry.id in track.refused:
                continue
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
                track.cursor = entry.id - 1
                break
            # NO_CONN: paho keeps it queued; the next connect resends from the spool too.
            track.sent(info.mid, entry, self.topic(entry.stream))
            room -= 1

    def _drain_acks(self, spool: Spool, track: _Tracking, now: float) -> None:
        delivered: list[int] = []
        refusals: list[tuple[SpoolEntry, str]] = []
        echo = self._echo_state
        while True:
            try:
                mid, failed, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            entry = track.inflight.pop(mid, None)
            if entry is None or entry.id not in track.busy:
                continue  # status/health message, a mid from before, or already echoed
            if failed:
                track.refuse(entry)
                refusals.append((entry, reason))
            elif echo == "off":
                track.done(entry)
                delivered.append(entry.id)
            else:
                track.acked_at[entry.id] = now
        while True:
            try:
                key = self._echoes.get_nowait()
            except queue.Empty:
                break
            got = track.echo_wait.get(key)
            if got is not None:
                track.done(got)
                delivered.append(got.id)
        if echo == "off" and track.acked_at:
            # The subscription was refused after all: trust the PUBACKs already in.
            for entry in list(track.echo_wait.values()):
                if entry.id in track.acked_at:
                    track.done(entry)
                    delivered.append(entry.id)
        elif echo == "on":
            for entry in list(track.echo_wait.values()):
                acked = track.acked_at.get(entry.id)
                if acked is not None and now - acked >= _ECHO_TIMEOUT_SECONDS:
                    track.refuse(entry)
                    # Mosquitto grants a subscription its ACL denies and then delivers
                    # nothing: a write-only ACL looks exactly like a refused publish.
                    refusals.append((entry, "acknowledged but never delivered back to serd "
                                            "(MQTT 3.1.1 cannot say why: either the broker's "
                                            "ACL refused the publish, or it does not let this "
                                            f"client read {self.topic('#')}, which serd "
                                            "needs under 3.1.1 to confirm delivery; allow "
                                            "read there or use mqtt.protocol \"5\")"))
        if delivered:
            spool.ack(delivered)
            with self._lock:
                self._sent += len(delivered)
            self._refusal_logged = False
        if refusals:
            with self._lock:
                self._rejected += len(refusals)
            entry, reason = refusals[0]
            if not self._refusal_logged:
                self._refusal_logged = True
                _LOGGER.error(
                    "MQTT broker refused an event (%s seq %d on %s): %s; kept in the spool "
                    "(with any others it refuses) and retried every %.0f s; check the "
                    "broker's ACL for this client", entry.stream, entry.seq,
                    self.topic(entry.stream),
                    reason, _REFUSED_RETRY_SECONDS,
                )
            else:
                _LOGGER.debug("broker refused %d more events", len(refusals))
        if refusals or delivered:
            self._set_refused(len(track.refused))

    def _set_refused(self, count: int) -> None:
        with self._lock:
            self._refused_kept = count

    def _require_running(self) -> Spool:
        if self._spool is None or not self._started:
            raise RuntimeError("publisher not started")
        if self._closing or self._stop_sender.is_set():
            raise RuntimeError("publisher is closed")
        return self._spool


@dataclass
class _Tracking:
    """The sender thread's view of rows handed to paho (one connection epoch)."""

    cursor: int = 0  # last spool row id looked at in this epoch
    inflight: dict[int, SpoolEntry] = dataclasses.field(default_factory=dict)  # by paho mid
    busy: set[int] = dataclasses.field(default_factory=set)  # row ids sent, not settled
    refused: set[int] = dataclasses.field(default_factory=set)  # row ids the broker refused
    # MQTT 3.1.1 echo check: (topic, payload) -> entry, and when its PUBACK came.
    echo_wait: dict[tuple[str, str], SpoolEntry] = dataclasses.field(default_factory=dict)
    acked_at: dict[int, float] = dataclasses.field(default_factory=dict)
    keys: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
    retry_at: float = 0.0  # monotonic

    def new_connection(self) -> None:
        self.inflight.clear()
        self.busy.clear()
        self.echo_wait.clear()
        self.acked_at.clear()
        self.keys.clear()

    def retry_refused(self, now: float) -> None:
        self.refused.clear()
        self.cursor = 0
        self.retry_at = now + _REFUSED_RETRY_SECONDS

    def sent(self, mid: int, entry: SpoolEntry, full_topic: str) -> None:
        self.inflight[mid] = entry
        self.busy.add(entry.id)
        key = (full_topic, entry.payload_json)
        self.echo_wait[key] = entry
        self.keys[entry.id] = key

    def done(self, entry: SpoolEntry) -> None:
        self.busy.discard(entry.id)
        self.acked_at.pop(entry.id, None)
        key = self.keys.pop(entry.id, None)
        if key is not None:
            self.echo_wait.pop(key, None)

    def refuse(self, entry: SpoolEntry) -> None:
        self.done(entry)
        self.refused.add(entry.id)


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
                expired=spool.expired if spool else 0,
                spool_recovered=spool.recovered if spool else 0,
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
