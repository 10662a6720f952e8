"""Home Assistant MQTT discovery: each channel of the device, its alerts and its health.

With ``discovery.enabled`` the daemon announces, on one Home Assistant device per serd
device (*serd {device_id}*):

* per channel, an ``event`` entity, *{channel} emotion event*: fires once per utterance
  with the utterance's label as ``event_type`` (``event_types`` = the model's labels) and
  its confidence, start and end as event attributes;
* per channel, an enum ``sensor``, *{channel} emotion* (``device_class: enum``,
  ``options`` = the model's labels and ``unsure``): the verdict of the channel's latest
  utterance, with that utterance's ``confidence``, ``start`` and ``end`` as attributes.
  Windows (every half second) never touch it, so state and attributes change once per
  utterance, not once per window (each change is a recorder row in Home Assistant);
* per channel and alert rule, a ``binary_sensor``, *{channel} {rule}* (``device_class:
  problem``): on while that rule is active on that channel, read from the retained
  ``{prefix}/{device_id}/state`` (serd.state), so it is right after a Home Assistant
  restart too;
* diagnostic entities (``entity_category: diagnostic``): *problem* (on while the status
  is ``degraded``, with the reason as attribute), *input device* (from health's
  ``input_open``), *spool backlog* and *dropped events* (from health's ``publisher``).

Everything reads the device's ordinary topics (templates pick out their channel), and
takes its availability from the retained ``{prefix}/{device_id}/status``: available while
``online`` or ``degraded`` (a degraded device is still there; its *problem* sensor says
what is wrong), unavailable when ``offline`` (including the Last Will).  Nothing is
published twice.

Entity ids are injective: a channel, rule or device name that is not already a safe id
(``[A-Za-z0-9-]+``) becomes its slug plus a short hash of the name, so ``a b`` and
``a_b`` never share an entity.

The configs are published retained on
``{discovery.prefix}/{component}/{node}/{object}/config`` at every (re)connect and when
Home Assistant announces itself with ``online`` on its birth topic
(``{discovery.prefix}/status``), at most once per :data:`REANNOUNCE_MIN_SECONDS` (a flood
of birth messages is coalesced into one announce).  :func:`forget_payloads` gives the
empty retained configs that remove a device's entities (``serd forget``).  Discovery uses
its own small MQTT connection with the ``mqtt:`` settings (same TLS and credentials); it
never touches the event spool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serd import __version__
from serd.events import EMOTION_SUFFIX, HEALTH_SUFFIX, STATUS_SUFFIX, topic, validate_device_id
from serd.state import STATE_SUFFIX
from serd.validate import ConfigError, require

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger(__name__)

_ID_SAFE = re.compile(r"[A-Za-z0-9-]+\Z")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")
_ID_HASH_CHARS = 10
_DISCOVERY_QOS = 1
UNSURE = "unsure"
"""Sensor state when the latest utterance claims no label (below the threshold)."""
REANNOUNCE_MIN_SECONDS = 30.0
"""At most one announce per this many seconds; birth messages in between are coalesced."""
_BIRTH_MAX_BYTES = 64
"""Home Assistant's birth payload is ``online``: anything longer is not one (not parsed)."""


@dataclass(frozen=True)
class DiscoverySettings:
    """The ``discovery:`` section of config.yaml."""

    # Announce every channel to Home Assistant (MQTT discovery); needs mqtt.host.
    enabled: bool = False
    # Home Assistant's discovery prefix; its birth topic is {prefix}/status.
    prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        require(
            bool(self.prefix)
            and not self.prefix.startswith(("/", "$"))
            and not any(c in self.prefix for c in "+#\0")
            and "" not in self.prefix.split("/"),
            "prefix",
            f"{self.prefix!r} must be one or more topic levels without + # or empty levels",
        )


def object_id(text: str) -> str:
    """``text`` as a discovery node/object id, injectively.

    A name that is already a safe id (``[A-Za-z0-9-]+``) is kept as it is; any other
    becomes its slug (unsafe runs replaced by ``_``, possibly empty) plus ``_`` and a short
    hash of the name, so two names never share an id (``a b`` and ``a_b`` used to): a
    rewritten id always holds a ``_``, which a kept one never does.
    """
    if _ID_SAFE.match(text):
        return text
    slug = _ID_UNSAFE.sub("_", text).strip("_")[:40]
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH_CHARS]
    return f"{slug}_{digest}"


def node_id(device_id: str) -> str:
    """The discovery node id of a device (its entities' common id prefix)."""
    return f"serd_{object_id(device_id)}"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: where its config goes and what it says."""

    component: str  # "event", "sensor", "binary_sensor"
    object_id: str
    config: dict[str, Any]


def _keys(channels: Sequence[str], rules: Sequence[str]) -> list[tuple[str, str]]:
    """``(component, object id)`` of every entity, in announce order."""
    out: list[tuple[str, str]] = []
    for channel in channels:
        cid = object_id(channel)
        out += [("event", f"{cid}_emotion_event"), ("sensor", f"{cid}_emotion")]
        out += [("binary_sensor", f"{cid}_alert_{object_id(rule)}") for rule in rules]
    out += [("binary_sensor", "device_problem"), ("binary_sensor", "device_input"),
            ("sensor", "device_spool_backlog"), ("sensor", "device_dropped_events")]
    return out


def config_topic(prefix: str, device_id: str, component: str, object_name: str) -> str:
    """Where one entity's discovery config is published (retained)."""
    return f"{prefix}/{component}/{node_id(device_id)}/{object_name}/config"


def config_filter(prefix: str, device_id: str) -> str:
    """A topic filter matching every discovery config of ``device_id`` (to find retained
    ones whose channels are no longer known)."""
    return f"{prefix}/+/{node_id(device_id)}/+/config"


def forget_payloads(
    prefix: str, device_id: str, channels: Sequence[str], rules: Sequence[str] = ()
) -> dict[str, bytes]:
    """``{config topic: b""}`` for every entity of ``device_id``: published retained, the
    empty payloads remove the entities from Home Assistant and the configs from the
    broker.  ``prefix`` is ``discovery.prefix``; pass every channel and rule the device
    ever announced (or collect the retained topics under :func:`config_filter`)."""
    validate_device_id(device_id)
    return {config_topic(prefix, device_id, c, o): b"" for c, o in _keys(channels, rules)}


def configs(
    settings: DiscoverySettings,
    *,
    topic_prefix: str,
    device_id: str,
    channels: Sequence[str],
    labels: Sequence[str],
    model: str,
    rules: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """``{config topic: config payload}`` for every entity of the device."""
    return {config_topic(settings.prefix, device_id, e.component, e.object_id): e.config
            for e in entities(topic_prefix=topic_prefix, device_id=device_id,
                              channels=channels, labels=labels, model=model, rules=rules)}


def entities(
    *,
    topic_prefix: str,
    device_id: str,
    channels: Sequence[str],
    labels: Sequence[str],
    model: str,
    rules: Sequence[str] = (),
) -> list[Entity]:
    """Every entity of the device (see the module docstring)."""
    validate_device_id(device_id)
    node = node_id(device_id)
    device = {
        "identifiers": [node],
        "name": f"serd {device_id}",
        "manufacturer": "serd",
        "model": model,
        "sw_version": __version__,
    }
    status_topic = topic(topic_prefix, device_id, STATUS_SUFFIX)
    common = {
        "device": device,
        "origin": {"name": "serd", "sw_version": __version__},
        # Degraded is still there (its problem sensor says why); anything else is not.
        "availability": [{
            "topic": status_topic,
            "value_template": "{{ 'online' if value_json.state in ['online', 'degraded']"
                              " else 'offline' }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "qos": _DISCOVERY_QOS,
    }
    emotion_topic = topic(topic_prefix, device_id, EMOTION_SUFFIX)
    state_topic = topic(topic_prefix, device_id, STATE_SUFFIX)
    health_topic = topic(topic_prefix, device_id, HEALTH_SUFFIX)
    options = [*labels, UNSURE] if UNSURE not in labels else list(labels)
    keys = iter(_keys(channels, rules))
    out: list[Entity] = []

    def add(config: dict[str, Any]) -> None:
        component, name = next(keys)
        out.append(Entity(component, name, {**config, "unique_id": f"{node}_{name}", **common}))

    for channel in channels:
        # JSON string literals are valid Jinja string literals: safe for any name.
        chan = json.dumps(channel)
        mine = f"value_json.channel == {chan} and value_json.type == 'utterance'"
        add({
            "name": f"{channel} emotion event",
            "event_types": list(labels),
            "icon": "mdi:account-voice",
            "state_topic": emotion_topic,
            # Empty output = not for this entity: Home Assistant ignores it quietly.
            "value_template": (
                f"{{% if {mine} and value_json.label %}}"
                "{{ {'event_type': value_json.label, 'confidence': value_json.confidence,"
                " 'start': value_json.start, 'end': value_json.end,"
                " 'seq': value_json.seq} | tojson }}"
                "{% endif %}"
            ),
        })
        add({
            "name": f"{channel} emotion",
            "icon": "mdi:emoticon-outline",
            "device_class": "enum",
            "options": options,
            "state_topic": emotion_topic,
            # Only utterances change it; other messages keep the current state (`this`).
            # Before the first utterance that is "unknown", not an option: "None" keeps
            # it unknown (Home Assistant would log any non-option, once per message).
            "value_template": (
                f"{{% if {mine} %}}"
                f"{{{{ value_json.label if value_json.label in {json.dumps(options)}"
                f" else '{UNSURE}' }}}}"
                f"{{% elif this.state in {json.dumps(options)} %}}{{{{ this.state }}}}"
                "{% else %}None{% endif %}"
            ),
            "json_attributes_topic": emotion_topic,
            "json_attributes_template": (
                f"{{% if {mine} %}}"
                "{{ {'confidence': value_json.confidence, 'start': value_json.start,"
                " 'end': value_json.end} | tojson }}"
                "{% else %}{{ this.attributes | tojson }}{% endif %}"
            ),
        })
        for rule in rules:
            add({
                "name": f"{channel} {rule}",
                "device_class": "problem",
                "icon": "mdi:alert-octagon-outline",
                "state_topic": state_topic,
                "value_template": (
                    "{{ 'ON' if value_json.alerts | selectattr('channel', 'eq', "
                    f"{chan}) | selectattr('rule', 'eq', {json.dumps(rule)}) | list "
                    "else 'OFF' }}"
                ),
            })
    diagnostic = {"entity_category": "diagnostic"}
    add({
        "name": "problem",
        "device_class": "problem",
        "state_topic": status_topic,
        "value_template": "{{ 'ON' if value_json.state == 'degraded' else 'OFF' }}",
        "json_attributes_topic": status_topic,
        "json_attributes_template": (
            "{{ {'reason': value_json.reason if value_json.reason is string else ''}"
            " | tojson }}"
        ),
        **diagnostic,
    })
    add({
        "name": "input device",
        "device_class": "connectivity",
        "icon": "mdi:microphone",
        "state_topic": health_topic,
        "value_template": "{{ 'ON' if value_json.input_open is sameas true else 'OFF' }}",
        **diagnostic,
    })
    for name, field, state_class, icon in (
            ("spool backlog", "spool_depth", "measurement", "mdi:tray-full"),
            ("dropped events", "dropped", "total_increasing", "mdi:delete-alert-outline")):
        add({
            "name": name,
            "state_class": state_class,
            "unit_of_measurement": "events",
            "icon": icon,
            "state_topic": health_topic,
            # Empty output (no figure in this payload) is ignored by a numeric sensor.
            "value_template": (
                f"{{% if value_json.publisher.{field} is number"
                f" and value_json.publisher.{field} is not boolean %}}"
                f"{{{{ value_json.publisher.{field} }}}}"
                "{% endif %}"
            ),
            **diagnostic,
        })
    return out


class Discovery:
    """Own MQTT connection that keeps the discovery configs announced; see the module."""

    def __init__(
        self,
        settings: DiscoverySettings,
        mqtt_settings: MqttSettings,
        *,
        device_id: str,
        channels: Sequence[str],
        labels: Sequence[str],
        model: str,
        rules: Sequence[str] = (),
        reannounce_min_seconds: float = REANNOUNCE_MIN_SECONDS,
    ) -> None:
        if mqtt_settings.host is None:
            raise ConfigError("discovery.enabled: needs mqtt.host (a broker to announce on)")
        self.settings = settings
        self.mqtt_settings = mqtt_settings
        self.host: str = mqtt_settings.host
        self.device_id = device_id
        self.configs = configs(
            settings,
            topic_prefix=mqtt_settings.topic_prefix,
            device_id=device_id,
            channels=channels,
            labels=labels,
            model=model,
            rules=rules,
        )
        # Serialised once: an announce is then only publish calls.
        self._payloads = {t: json.dumps(c, separators=(",", ":"))
                          for t, c in self.configs.items()}
        self.birth_topic = f"{settings.prefix}/status"
        self.reannounce_min_seconds = reannounce_min_seconds
        self.announcements = 0
        self.births = 0  # birth messages received ("online")
        self.ignored = 0  # messages on the birth topic that were not a birth
        self._pending = 0  # announce requests since the last announce
        self._warned = False
        self._last_announce = -float("inf")  # time.monotonic()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        """Connect in the background; announce on every connect and HA birth."""
        from serd.mqttclient import connect_async, create_client  # noqa: PLC0415

        base = self.mqtt_settings.client_id or f"serd-{self.device_id}"
        client = create_client(self.mqtt_settings, f"{base}-discovery", logger=_LOGGER)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        connect_async(client, self.mqtt_settings, self.host)
        client.loop_start()
        _LOGGER.info(
            "Home Assistant discovery: %d entities under %s/", len(self.configs),
            self.settings.prefix,
        )

    def stop(self) -> None:
        """Disconnect (the retained configs stay; availability follows the status topic)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        client, self._client = self._client, None
        if client is None:
            return
        client.disable_logger()  # paho 2.2 may log a spurious error while its thread stops
        client.disconnect()
        client.loop_stop()

    def request_announce(self, why: str) -> None:
        """Announce now, or once :data:`REANNOUNCE_MIN_SECONDS` after the last announce
        (requests in between are coalesced into that one)."""
        with self._lock:
            self._pending += 1
            if self._timer is not None:
                return  # one is already scheduled
            wait = self._last_announce + self.reannounce_min_seconds - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._deferred, args=(why,))
                self._timer.daemon = True
                self._timer.start()
                return
        self.announce(why)

    def _deferred(self, why: str) -> None:
        with self._lock:
            self._timer = None
        self.announce(why)

    def announce(self, why: str = "requested") -> None:
        """Publish every config (retained, QoS 1)."""
        client = self._client
        if client is None:
            return
        with self._lock:
            coalesced, self._pending = self._pending, 0
            self._last_announce = time.monotonic()
            for config_topic_, payload in self._payloads.items():
                client.publish(config_topic_, payload, qos=_DISCOVERY_QOS, retain=True)
            self.announcements += 1
        if coalesced > 1:
            _LOGGER.info("%s: announced %d discovery configs (%d requests coalesced)",
                         why, len(self._payloads), coalesced)
        else:
            _LOGGER.info("%s: announced %d discovery configs", why, len(self._payloads))

    # paho callbacks (network thread)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("discovery: broker refused the connection: %s", reason_code)
            return
        client.subscribe(self.birth_topic, qos=1)
        self.request_announce("connected")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg.topic, bytes(msg.payload))

    def handle(self, topic_: str, payload: bytes) -> None:
        """One message from the broker: a Home Assistant birth asks for an announce.

        The payload is hostile until checked: only a short ``online`` counts, anything
        else (``offline``, garbage, megabytes) is counted and otherwise ignored."""
        if topic_ != self.birth_topic:
            return
        if len(payload) > _BIRTH_MAX_BYTES or payload.strip() != b"online":
            with self._lock:
                self.ignored += 1
            if payload.strip() != b"offline":  # offline is Home Assistant's own Last Will
                # Once at WARNING (someone is writing garbage on the birth topic), then quiet.
                first, self._warned = not self._warned, True
                _LOGGER.log(logging.WARNING if first else logging.DEBUG,
                            "ignored a %d-byte message on %s that is not a birth message "
                            "(%d so far)", len(payload), self.birth_topic, self.ignored)
            return
        with self._lock:
            self.births += 1
        self.request_announce("Home Assistant came online")
