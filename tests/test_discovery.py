"""Home Assistant MQTT discovery: config payloads, their templates (rendered with Jinja2 as
Home Assistant does), and announcing on a real broker (retained, again on HA's birth)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from serd.discovery import UNSURE, Discovery, DiscoverySettings, configs, object_id
from serd.publisher import MqttSettings
from serd.validate import ConfigError

LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust")


def make_configs(**kw: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {"topic_prefix": "serd", "device_id": "pi-desk.7",
                            "channels": ("agent", "customer"), "labels": LABELS,
                            "model": "crema-cnn-v1"}
    args.update(kw)
    return configs(DiscoverySettings(enabled=True), **args)


def emotion(channel: str, type_: str = "utterance", label: str | None = "angry") -> str:
    return json.dumps({
        "schema": 1, "type": type_, "device_id": "pi-desk.7", "channel": channel, "seq": 9,
        "ts": "2024-05-01T12:00:02.000Z", "start": "2024-05-01T12:00:00.000Z",
        "end": "2024-05-01T12:00:01.750Z", "label": label, "confidence": 0.81,
        "probs": {"angry": 0.81, "neutral": 0.19}, "model": "crema-cnn-v1"})


def test_each_channel_is_an_event_and_a_sensor_bound_to_status() -> None:
    cfgs = make_configs()
    node = "serd_pi-desk_7"  # '.' is not allowed in discovery ids
    assert sorted(cfgs) == sorted([
        f"homeassistant/event/{node}/agent_emotion_event/config",
        f"homeassistant/sensor/{node}/agent_emotion/config",
        f"homeassistant/event/{node}/customer_emotion_event/config",
        f"homeassistant/sensor/{node}/customer_emotion/config",
    ])
    ids = [c["unique_id"] for c in cfgs.values()]
    assert len(set(ids)) == 4
    for c in cfgs.values():
        json.dumps(c)  # publishable
        assert c["state_topic"] == "serd/pi-desk.7/emotion"
        assert c["availability"] == [{
            "topic": "serd/pi-desk.7/status", "value_template": "{{ value_json.state }}",
            "payload_available": "online", "payload_not_available": "offline"}]
        assert c["device"]["identifiers"] == [node]
        assert c["device"]["model"] == "crema-cnn-v1"
        assert c["qos"] == 1
    event = cfgs[f"homeassistant/event/{node}/agent_emotion_event/config"]
    assert event["event_types"] == list(LABELS)
    assert event["name"] == "agent emotion event"


def test_prefixes_and_odd_channel_names() -> None:
    cfgs = configs(DiscoverySettings(enabled=True, prefix="ha/disc"), topic_prefix="acme/site1",
                   device_id="d1", channels=("left mic/1",), labels=LABELS, model="m")
    assert all(t.startswith("ha/disc/") and "/serd_d1/left_mic_1_" in t for t in cfgs)
    assert all(c["state_topic"] == "acme/site1/d1/emotion" for c in cfgs.values())
    assert object_id("a.b c/d") == "a_b_c_d"


@pytest.mark.parametrize("prefix", ["", "/ha", "ha/#", "ha//x", "$SYS"])
def test_bad_discovery_prefix(prefix: str) -> None:
    from serd.config import parse  # noqa: PLC0415

    with pytest.raises(ConfigError, match=r"discovery\.prefix"):
        parse({"discovery": {"prefix": prefix}})


class _This:
    def __init__(self, state: str, attributes: dict[str, Any]) -> None:
        self.state = state
        self.attributes = attributes


def render(template: str, payload: str, this: _This | None = None) -> str:
    """Render like Home Assistant's MQTT value templates: ``value``, ``value_json``, ``this``."""
    sandbox = pytest.importorskip("jinja2.sandbox",
                                  reason="pip install jinja2 to check the templates")
    env = sandbox.ImmutableSandboxedEnvironment()
    return env.from_string(template).render(
        value=payload, value_json=json.loads(payload),
        this=this or _This("unknown", {}),
    )


def test_event_template_fires_only_for_its_channel_utterances_with_a_label() -> None:
    cfgs = make_configs()
    t = next(c for c in cfgs.values() if c["unique_id"].endswith("agent_emotion_event"))
    ev = json.loads(render(t["value_template"], emotion("agent")))
    assert ev == {"event_type": "angry", "confidence": 0.81, "start": "2024-05-01T12:00:00.000Z",
                  "end": "2024-05-01T12:00:01.750Z", "seq": 9}
    assert ev["event_type"] in t["event_types"]
    # Empty output is ignored by Home Assistant's MQTT event entity.
    assert render(t["value_template"], emotion("customer")).strip() == ""
    assert render(t["value_template"], emotion("agent", "window")).strip() == ""
    assert render(t["value_template"], emotion("agent", label=None)).strip() == ""


def test_sensor_template_shows_its_channel_and_keeps_state_for_others() -> None:
    cfgs = make_configs()
    s = next(c for c in cfgs.values() if c["unique_id"].endswith("customer_emotion"))
    assert render(s["value_template"], emotion("customer", "window", "sad")) == "sad"
    assert render(s["value_template"], emotion("customer", "window", None)) == UNSURE
    keep = _This("happy", {"confidence": 0.5})
    assert render(s["value_template"], emotion("agent", "window", "angry"), keep) == "happy"
    attrs = json.loads(render(s["json_attributes_template"], emotion("customer")))
    assert attrs["confidence"] == 0.81
    assert attrs["probs"] == {"angry": 0.81, "neutral": 0.19}
    assert json.loads(render(s["json_attributes_template"], emotion("agent"), keep)) == {
        "confidence": 0.5}


def test_needs_a_broker() -> None:
    with pytest.raises(ConfigError, match=r"discovery\.enabled: needs mqtt\.host"):
        Discovery(DiscoverySettings(enabled=True), MqttSettings(), device_id="d",
                  channels=("main",), labels=LABELS, model="m")


# -- real broker ---------------------------------------------------------------------------


def _settings(broker: Any) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, reconnect_min_seconds=0.1,
                        reconnect_max_seconds=0.5)


def _configs_in(msgs: list[Any]) -> list[Any]:
    return [m for m in msgs if m.topic.startswith("homeassistant/") and
            m.topic.endswith("/config")]


@pytest.mark.broker
def test_announces_retained_and_again_on_home_assistant_birth(
    mosquitto: Any, subscriber: Any
) -> None:
    disc = Discovery(DiscoverySettings(enabled=True), _settings(mosquitto), device_id="desk-3",
                     channels=("agent", "customer"), labels=LABELS, model="m")
    sub = subscriber(mosquitto, "homeassistant/#", persistent=False)
    disc.start()
    try:
        msgs = sub.wait_for(lambda ms: len(_configs_in(ms)) >= 4)
        assert {m.topic for m in _configs_in(msgs)} == set(disc.configs)
        for m in _configs_in(msgs):
            assert m.json() == disc.configs[m.topic]
        # Home Assistant (re)starts: it publishes its birth message; we announce again.
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        sub.wait_for(lambda ms: len(_configs_in(ms)) >= 8)
        assert disc.announcements >= 2
        client.publish("homeassistant/status", "offline", qos=1).wait_for_publish(5)
        time.sleep(0.3)
        assert len(_configs_in(sub.snapshot())) == 8  # offline is not a reason to announce
        client.disconnect()
        client.loop_stop()
    finally:
        disc.stop()
    # Retained: Home Assistant finds them whenever it connects.
    late = subscriber(mosquitto, "homeassistant/#", persistent=False)
    late.wait_for(lambda ms: len(_configs_in(ms)) == 4 and all(m.retain for m in ms))


@pytest.mark.broker
def test_daemon_announces_when_enabled(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, data_dir: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "discovery": {"enabled": True},
    }))
    r = subprocess.run(
        [sys.executable, "-m", "serd.cli", "--config", str(cfg), "--once", "--publish",
         "--speed", "0", "--device-id", "desk-9", str(data_dir / "1001_IEO_NEU_XX.flac")],
        capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    sub = subscriber(mosquitto, "homeassistant/#", persistent=False)
    msgs = sub.wait_for(lambda ms: len(_configs_in(ms)) >= 2)
    topics = {m.topic for m in _configs_in(msgs)}
    assert topics == {"homeassistant/event/serd_desk-9/main_emotion_event/config",
                      "homeassistant/sensor/serd_desk-9/main_emotion/config"}
    event = next(m.json() for m in msgs if "/event/" in m.topic)
    assert set(event["event_types"]) == set(LABELS)
