"""Home Assistant MQTT discovery: each channel of the device as an event and a sensor.

With ``discovery.enabled`` the daemon announces, for every analysed channel:

* an ``event`` entity, *{channel} emotion event*: fires once per utterance with the
  utterance's label as ``event_type`` (``event_types`` = the model's labels) and its
  confidence, start and end as event attributes;
* a ``sensor`` entity, *{channel} emotion*: the current emotion (label of the latest
  window or utterance on the channel; ``unsure`` when below the threshold), with
  ``confidence`` and ``probs`` as attributes.

Both read the device's ordinary ``{prefix}/{device_id}/emotion`` topic (templates pick
out their channel) and take their availability from the retained
``{prefix}/{device_id}/status`` (online/offline, including the Last Will), so nothing is
published twice.  The configs are published retained on
``{discovery.prefix}/{component}/serd_{device}/{channel}_{entity}/config`` at every
(re)connect and again whenever Home Assistant announces itself with ``online`` on its
birth topic (``{discovery.prefix}/status``).  Discovery uses its own small MQTT
connection with the ``mqtt:`` settings (same TLS and credentials); it never touches the
event spool.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serd import __version__
from serd.events import EMOTION_SUFFIX, STATUS_SUFFIX, topic, validate_device_id
from serd.validate import ConfigError, require

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger(__name__)

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DISCOVERY_QOS = 1
UNSURE = "unsure"
"""Sensor state when the latest decision claims no label (below the threshold)."""


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
    """``text`` as a discovery node/object id (``[A-Za-z0-9_-]``)."""
    return _ID_UNSAFE.sub("_", text) or "_"


def configs(
    settings: DiscoverySettings,
    *,
    topic_prefix: str,
    device_id: str,
    channels: Sequence[str],
    labels: Sequence[str],
    model: str,
) -> dict[str, dict[str, Any]]:
    """``{config topic: config payload}`` for every channel's event and sensor."""
    validate_device_id(device_id)
    node = f"serd_{object_id(device_id)}"
    device = {
        "identifiers": [node],
        "name": f"serd {device_id}",
        "manufacturer": "serd",
        "model": model,
        "sw_version": __version__,
    }
    origin = {"name": "serd", "sw_version": __version__}
    state_topic = topic(topic_prefix, device_id, EMOTION_SUFFIX)
    availability = [
        {
            "topic": topic(topic_prefix, device_id, STATUS_SUFFIX),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    out: dict[str, dict[str, Any]] = {}
    for channel in channels:
        # JSON string literals are valid Jinja string literals: safe for any name.
        chan = json.dumps(channel)
        cid = object_id(channel)
        common = {
            "device": device,
            "origin": origin,
            "availability": availability,
            "state_topic": state_topic,
            "qos": _DISCOVERY_QOS,
        }
        out[f"{settings.prefix}/event/{node}/{cid}_emotion_event/config"] = {
            "name": f"{channel} emotion event",
            "unique_id": f"{node}_{cid}_emotion_event",
            "event_types": list(labels),
            "icon": "mdi:account-voice",
            # Empty output = not for this entity: Home Assistant ignores it quietly.
            "value_template": (
                f"{{% if value_json.channel == {chan} and value_json.type == 'utterance'"
                " and value_json.label %}"
                "{{ {'event_type': value_json.label, 'confidence': value_json.confidence,"
                " 'start': value_json.start, 'end': value_json.end,"
                " 'seq': value_json.seq} | tojson }}"
                "{% endif %}"
            ),
            **common,
        }
        out[f"{settings.prefix}/sensor/{node}/{cid}_emotion/config"] = {
            "name": f"{channel} emotion",
            "unique_id": f"{node}_{cid}_emotion",
            "icon": "mdi:emoticon-outline",
            # Messages for other channels keep the current state (`this`).
            "value_template": (
                f"{{% if value_json.channel == {chan} %}}"
                f"{{{{ value_json.label if value_json.label else '{UNSURE}' }}}}"
                "{% else %}{{ this.state }}{% endif %}"
            ),
            "json_attributes_topic": state_topic,
            "json_attributes_template": (
                f"{{% if value_json.channel == {chan} %}}"
                "{{ {'confidence': value_json.confidence, 'type': value_json.type,"
                " 'probs': value_json.probs, 'end': value_json.end} | tojson }}"
                "{% else %}{{ this.attributes | tojson }}{% endif %}"
            ),
            **common,
        }
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
        )
        self.birth_topic = f"{settings.prefix}/status"
        self.announcements = 0
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
        client, self._client = self._client, None
        if client is None:
            return
        client.disable_logger()  # paho 2.2 may log a spurious error while its thread stops
        client.disconnect()
        client.loop_stop()

    def announce(self) -> None:
        """Publish every config (retained, QoS 1)."""
        client = self._client
        if client is None:
            return
        with self._lock:
            for config_topic, payload in self.configs.items():
                client.publish(
                    config_topic,
                    json.dumps(payload, separators=(",", ":")),
                    qos=_DISCOVERY_QOS,
                    retain=True,
                )
            self.announcements += 1
        _LOGGER.debug("announced %d discovery configs", len(self.configs))

    # paho callbacks (network thread)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            _LOGGER.warning("discovery: broker refused the connection: %s", reason_code)
            return
        client.subscribe(self.birth_topic, qos=1)
        self.announce()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.birth_topic and bytes(msg.payload).strip() == b"online":
            _LOGGER.info("Home Assistant came online: announcing again")
            self.announce()
