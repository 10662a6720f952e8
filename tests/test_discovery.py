"""Home Assistant MQTT discovery: config payloads, their templates (rendered with Jinja2 as
Home Assistant does), and announcing on a real broker (retained, again on HA's birth)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from serd.discovery import (
    UNSURE,
    Discovery,
    DiscoverySettings,
    config_filter,
    configs,
    forget_payloads,
    node_id,
    object_id,
)
from serd.publisher import MqttSettings
from serd.validate import ConfigError
from serd_testkit import wait_until

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


NODE = node_id("pi-desk.7")


def test_each_channel_is_an_event_and_a_sensor_bound_to_status() -> None:
    cfgs = make_configs()
    assert NODE.startswith("serd_pi-desk_7_")  # '.' is not allowed in discovery ids
    assert sorted(cfgs) == sorted([
        f"homeassistant/event/{NODE}/agent_emotion_event/config",
        f"homeassistant/sensor/{NODE}/agent_emotion/config",
        f"homeassistant/event/{NODE}/customer_emotion_event/config",
        f"homeassistant/sensor/{NODE}/customer_emotion/config",
        f"homeassistant/binary_sensor/{NODE}/device_problem/config",
        f"homeassistant/binary_sensor/{NODE}/device_input/config",
        f"homeassistant/sensor/{NODE}/device_spool_backlog/config",
        f"homeassistant/sensor/{NODE}/device_dropped_events/config",
    ])
    ids = [c["unique_id"] for c in cfgs.values()]
    assert len(set(ids)) == len(ids)
    for c in cfgs.values():
        json.dumps(c)  # publishable
        assert c["availability"][0]["topic"] == "serd/pi-desk.7/status"
        assert c["device"]["identifiers"] == [NODE]
        assert c["device"]["model"] == "crema-cnn-v1"
        assert c["qos"] == 1
    event = cfgs[f"homeassistant/event/{NODE}/agent_emotion_event/config"]
    assert event["event_types"] == list(LABELS)
    assert event["name"] == "agent emotion event"
    assert event["state_topic"] == "serd/pi-desk.7/emotion"
    sensor = cfgs[f"homeassistant/sensor/{NODE}/agent_emotion/config"]
    assert sensor["device_class"] == "enum"
    assert sensor["options"] == [*LABELS, UNSURE]


def test_availability_online_while_degraded() -> None:
    avail = make_configs()[f"homeassistant/sensor/{NODE}/agent_emotion/config"][
        "availability"][0]
    for state, shown in (("online", "online"), ("degraded", "online"),
                         ("offline", "offline"), ("bogus", "offline")):
        assert render(avail["value_template"], json.dumps({"state": state})) == shown


def test_ids_are_injective() -> None:
    names = ("a b", "a_b", "a.b", "a/b", "a-b", "ab", "a__b", "_", "", "é")
    ids = [object_id(n) for n in names]
    assert len(set(ids)) == len(ids)
    assert object_id("agent") == "agent"
    assert object_id("left-1") == "left-1"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    cfgs = configs(DiscoverySettings(enabled=True), topic_prefix="serd", device_id="d1",
                   channels=("a b", "a_b"), labels=LABELS, model="m",
                   rules=("x y", "x_y"))
    assert len(cfgs) == 2 * (2 + 2) + 4  # nothing overwrote anything
    assert len({c["unique_id"] for c in cfgs.values()}) == len(cfgs)
    assert {c["name"] for c in cfgs.values() if "emotion" in c["name"]} == {
        "a b emotion", "a b emotion event", "a_b emotion", "a_b emotion event"}


def test_forget_payloads_clear_every_config() -> None:
    cfgs = make_configs(rules=("sustained_distress",))
    forget = forget_payloads("homeassistant", "pi-desk.7", ("agent", "customer"),
                             ("sustained_distress",))
    assert set(forget) == set(cfgs)
    assert set(forget.values()) == {b""}
    flt = config_filter("homeassistant", "pi-desk.7")
    assert flt == f"homeassistant/+/{NODE}/+/config"
    assert all(mqtt.topic_matches_sub(flt, t) for t in cfgs)
    assert not mqtt.topic_matches_sub(flt, config_filter("homeassistant", "pi-desk_7"))


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


def _entity(cfgs: dict[str, dict[str, Any]], suffix: str) -> dict[str, Any]:
    return next(c for c in cfgs.values() if c["unique_id"].endswith(suffix))


def test_event_template_fires_only_for_its_channel_utterances_with_a_label() -> None:
    t = _entity(make_configs(), "agent_emotion_event")
    ev = json.loads(render(t["value_template"], emotion("agent")))
    assert ev == {"event_type": "angry", "confidence": 0.81, "start": "2024-05-01T12:00:00.000Z",
                  "end": "2024-05-01T12:00:01.750Z", "seq": 9}
    assert ev["event_type"] in t["event_types"]
    # Empty output is ignored by Home Assistant's MQTT event entity.
    assert render(t["value_template"], emotion("customer")).strip() == ""
    assert render(t["value_template"], emotion("agent", "window")).strip() == ""
    assert render(t["value_template"], emotion("agent", label=None)).strip() == ""


def test_enum_sensor_changes_only_on_an_utterance() -> None:
    s = _entity(make_configs(), "customer_emotion")
    assert render(s["value_template"], emotion("customer", "utterance", "sad")) == "sad"
    assert render(s["value_template"], emotion("customer", "utterance", None)) == UNSURE
    keep = _This("happy", {"confidence": 0.5, "start": "s", "end": "e"})
    # Windows (every half second) and other channels keep state and attributes.
    for other in (emotion("customer", "window", "angry"), emotion("agent", "utterance")):
        assert render(s["value_template"], other, keep) == "happy"
        assert json.loads(render(s["json_attributes_template"], other, keep)) == \
            keep.attributes
    attrs = json.loads(render(s["json_attributes_template"], emotion("customer")))
    assert attrs == {"confidence": 0.81, "start": "2024-05-01T12:00:00.000Z",
                     "end": "2024-05-01T12:00:01.750Z"}  # no probs, nothing per window
    # Before the first utterance (state unknown): "None", which keeps it unknown.
    assert render(s["value_template"], emotion("agent"), _This("unknown", {})) == "None"
    # A label the model does not have is not an option: shown as unsure.
    assert render(s["value_template"], emotion("customer", "utterance", "x" * 300)) == UNSURE


def state(*alerts: tuple[str, str]) -> str:
    return json.dumps({
        "schema": 1, "type": "state", "device_id": "pi-desk.7", "ts": "2024-05-01T12:00:02.000Z",
        "model": "m", "channels": [],
        "alerts": [{"channel": c, "rule": r, "label": "angry", "since": "x", "confidence": 0.9,
                    "message": None} for c, r in alerts]})


def test_binary_sensor_per_alert_rule_follows_the_retained_state() -> None:
    cfgs = make_configs(rules=("sustained_distress", "shouting"))
    b = _entity(cfgs, f"agent_alert_{object_id('sustained_distress')}")
    assert b["state_topic"] == "serd/pi-desk.7/state"
    assert b["device_class"] == "problem"
    assert b["name"] == "agent sustained_distress"
    t = b["value_template"]
    assert render(t, state()) == "OFF"
    assert render(t, state(("agent", "sustained_distress"))) == "ON"
    assert render(t, state(("customer", "sustained_distress"), ("agent", "shouting"))) == "OFF"


def test_diagnostic_entities() -> None:
    cfgs = make_configs()
    problem = _entity(cfgs, "device_problem")
    assert problem["entity_category"] == "diagnostic"
    degraded = json.dumps({"state": "degraded", "reason": "input_missing"})
    assert render(problem["value_template"], degraded) == "ON"
    assert render(problem["value_template"], json.dumps({"state": "online"})) == "OFF"
    assert json.loads(render(problem["json_attributes_template"], degraded)) == {
        "reason": "input_missing"}
    health = json.dumps({"input_open": False, "publisher": {"spool_depth": 12, "dropped": 3}})
    assert render(_entity(cfgs, "device_input")["value_template"], health) == "OFF"
    assert render(_entity(cfgs, "device_input")["value_template"],
                  json.dumps({"input_open": True})) == "ON"
    backlog = _entity(cfgs, "device_spool_backlog")
    assert render(backlog["value_template"], health) == "12"
    assert render(_entity(cfgs, "device_dropped_events")["value_template"], health) == "3"
    # A health payload without the figure: empty, which a numeric sensor ignores.
    assert render(backlog["value_template"], json.dumps({"publisher": "x"})) == ""
    assert render(backlog["value_template"], json.dumps({"publisher": {"dropped": True}})) == ""
    for key in ("device_problem", "device_input", "device_spool_backlog",
                "device_dropped_events"):
        assert _entity(cfgs, key)["entity_category"] == "diagnostic"
    assert "entity_category" not in _entity(cfgs, "agent_emotion")


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


def _ha(broker: Any, protocol: Any = mqtt.MQTTv311) -> mqtt.Client:
    """A client playing Home Assistant (publishes its birth messages)."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=protocol)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


@pytest.mark.broker
def test_announces_retained_and_again_on_home_assistant_birth(
    mosquitto: Any, subscriber: Any
) -> None:
    disc = Discovery(DiscoverySettings(enabled=True), _settings(mosquitto), device_id="desk-3",
                     channels=("agent", "customer"), labels=LABELS, model="m",
                     reannounce_min_seconds=0.5)
    n = len(disc.configs)
    sub = subscriber(mosquitto, "homeassistant/#", persistent=False)
    disc.start()
    try:
        msgs = sub.wait_for(lambda ms: len(_configs_in(ms)) >= n)
        assert {m.topic for m in _configs_in(msgs)} == set(disc.configs)
        for m in _configs_in(msgs):
            assert m.json() == disc.configs[m.topic]
        # Home Assistant (re)starts: it publishes its birth message; we announce again.
        client = _ha(mosquitto)
        client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        sub.wait_for(lambda ms: len(_configs_in(ms)) >= 2 * n)
        assert disc.announcements == 2
        client.publish("homeassistant/status", "offline", qos=1).wait_for_publish(5)
        time.sleep(1.0)
        assert len(_configs_in(sub.snapshot())) == 2 * n  # offline is no reason to announce
        client.disconnect()
        client.loop_stop()
    finally:
        disc.stop()
    # Retained: Home Assistant finds them whenever it connects.
    late = subscriber(mosquitto, "homeassistant/#", persistent=False)
    late.wait_for(lambda ms: len(_configs_in(ms)) == n and all(m.retain for m in ms))


@pytest.mark.broker
def test_birth_flood_is_coalesced(mosquitto: Any, subscriber: Any) -> None:
    """Issue 24 finding 9: 5,000 births made 5,000 announces (20,004 retained configs)."""
    disc = Discovery(DiscoverySettings(enabled=True), _settings(mosquitto), device_id="desk-4",
                     channels=("main",), labels=LABELS, model="m", reannounce_min_seconds=1.0)
    n = len(disc.configs)
    sub = subscriber(mosquitto, "homeassistant/+/+/+/config", persistent=False)
    disc.start()
    client = _ha(mosquitto)
    try:
        sub.wait_for(lambda ms: len(ms) >= n)
        t0 = time.monotonic()
        infos = [client.publish("homeassistant/status", "online", qos=1) for _ in range(5000)]
        for info in infos:
            info.wait_for_publish(30)
        assert wait_until(lambda: disc.births == 5000, 30), disc.births
        flood_seconds = time.monotonic() - t0
        time.sleep(1.5)  # the one coalesced announce after the flood
        announces = disc.announcements
        assert 2 <= announces <= 2 + flood_seconds / 1.0 + 1, (announces, flood_seconds)
        assert len(sub.snapshot()) == announces * n
    finally:
        client.disconnect()
        client.loop_stop()
        disc.stop()


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_huge_birth_payload_is_never_handled(
    mosquitto: Any, protocol: Any
) -> None:
    from serd.mqttclient import MAX_PACKET_BYTES  # noqa: PLC0415

    settings = dataclasses.replace(_settings(mosquitto), protocol=protocol)
    disc = Discovery(DiscoverySettings(enabled=True), settings, device_id="desk-5",
                     channels=("main",), labels=LABELS, model="m")
    client = _ha(mosquitto, mqtt.MQTTv5)
    client.publish("homeassistant/status", b"online" + b" " * (MAX_PACKET_BYTES + 1),
                   qos=1, retain=True).wait_for_publish(10)
    disc.start()
    try:
        assert wait_until(lambda: disc.announcements == 1, 10)
        time.sleep(1.0)
        # MQTT 5: the broker never sends it (Maximum Packet Size); 3.1.1: read and ignored.
        assert disc.ignored == (1 if protocol == "3.1.1" else 0)
        assert disc.births == 0
        assert disc.announcements == 1
    finally:
        client.publish("homeassistant/status", b"", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        disc.stop()


@pytest.mark.broker
def test_daemon_announces_when_enabled(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, data_dir: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "discovery": {"enabled": True}, "alerts": {"enabled": True},
    }))
    r = subprocess.run(
        [sys.executable, "-m", "serd.cli", "--config", str(cfg), "--once", "--publish",
         "--speed", "0", "--device-id", "desk-9", str(data_dir / "1001_IEO_NEU_XX.flac")],
        capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    sub = subscriber(mosquitto, "homeassistant/#", persistent=False)
    msgs = sub.wait_for(lambda ms: len(_configs_in(ms)) >= 7)
    topics = {m.topic for m in _configs_in(msgs)}
    node = "homeassistant/{}/serd_desk-9/{}/config"
    assert topics == {node.format(*k) for k in (
        ("event", "main_emotion_event"), ("sensor", "main_emotion"),
        ("binary_sensor", f"main_alert_{object_id('sustained_distress')}"),
        ("binary_sensor", "device_problem"), ("binary_sensor", "device_input"),
        ("sensor", "device_spool_backlog"), ("sensor", "device_dropped_events"))}
    event = next(m.json() for m in msgs if "/event/" in m.topic)
    assert set(event["event_types"]) == set(LABELS)


# -- Home Assistant's documented discovery keys (always run) --------------------------------
# A copy of the configuration variables documented for MQTT discovery in Home Assistant
# 2025.x (integrations/{event,sensor,binary_sensor}.mqtt, "MQTT Discovery"); a key outside
# these would be dropped by Home Assistant's schemas (test_home_assistant_schemas below
# checks against the schemas themselves where Home Assistant is installed).
_HA_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "default_entity_id", "origin", "qos", "unique_id", "platform",
    "payload_available", "payload_not_available",
}
_HA_KEYS = {
    "event": _HA_COMMON | {"device_class", "event_types", "state_topic", "value_template"},
    "sensor": _HA_COMMON | {"device_class", "expire_after", "force_update",
                            "last_reset_value_template", "options", "state_class",
                            "state_topic", "suggested_display_precision",
                            "unit_of_measurement", "value_template"},
    "binary_sensor": _HA_COMMON | {"device_class", "expire_after", "force_update",
                                   "off_delay", "payload_off", "payload_on", "state_topic",
                                   "value_template"},
}
_HA_REQUIRED = {"event": {"state_topic", "event_types"}, "sensor": {"state_topic"},
                "binary_sensor": {"state_topic"}}
_HA_DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers",
                   "manufacturer", "model", "model_id", "name", "serial_number",
                   "suggested_area", "sw_version", "via_device"}
_HA_AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available",
                         "value_template"}
_HA_DEVICE_CLASSES = {"binary_sensor": {"problem", "connectivity"}, "sensor": {"enum"},
                      "event": set()}
_HA_TOPIC = re.compile(r"(?P<prefix>[^+#]+)/(?P<component>\w+)/(?:(?P<node>[a-zA-Z0-9_-]+)/)?"
                       r"(?P<object>[a-zA-Z0-9_-]+)/config\Z")  # discovery.TOPIC_MATCHER


def test_configs_use_only_documented_home_assistant_keys() -> None:
    cfgs = make_configs(rules=("sustained_distress", "a b"))
    for t, cfg in cfgs.items():
        m = _HA_TOPIC.match(t)
        assert m, t
        component = m["component"]
        assert set(cfg) <= _HA_KEYS[component], (t, set(cfg) - _HA_KEYS[component])
        assert _HA_REQUIRED[component] <= set(cfg)
        assert set(cfg["device"]) <= _HA_DEVICE_KEYS
        assert all(set(a) <= _HA_AVAILABILITY_KEYS for a in cfg["availability"])
        if "device_class" in cfg:
            assert cfg["device_class"] in _HA_DEVICE_CLASSES[component]
        if cfg.get("device_class") == "enum":
            # An enum sensor needs options and has no state class or unit.
            assert cfg["options"]
            assert "state_class" not in cfg
            assert "unit_of_measurement" not in cfg
        if "state_class" in cfg:
            assert cfg["state_class"] in ("measurement", "total", "total_increasing")
        assert cfg.get("entity_category", "diagnostic") == "diagnostic"


@pytest.mark.broker
def test_look_alike_channels_keep_their_own_entities_and_forget_clears_them(
    mosquitto: Any, subscriber: Any
) -> None:
    """Issue 24 finding 13: channels ``a b`` and ``a_b`` shared every config topic."""
    channels, rules = ("a b", "a_b", "a.b"), ("r 1", "r_1")
    disc = Discovery(DiscoverySettings(enabled=True), _settings(mosquitto), device_id="desk.6",
                     channels=channels, labels=LABELS, model="m", rules=rules)
    disc.start()
    try:
        assert wait_until(lambda: disc.announcements == 1, 10)
    finally:
        disc.stop()
    want = len(channels) * (2 + len(rules)) + 4
    late = subscriber(mosquitto, config_filter("homeassistant", "desk.6"), persistent=False)
    msgs = late.wait_for(lambda ms: len(ms) >= want)
    time.sleep(0.3)
    assert len({m.topic for m in late.snapshot()}) == want
    assert len({m.json()["unique_id"] for m in msgs}) == want
    # serd forget: empty retained configs remove every entity.
    client = _ha(mosquitto)
    for t, payload in forget_payloads("homeassistant", "desk.6", channels, rules).items():
        client.publish(t, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    after = subscriber(mosquitto, "homeassistant/#", persistent=False)
    time.sleep(0.5)
    assert after.snapshot() == []


# -- Home Assistant's own schemas and template engine (only where it is installed) -------
# Home Assistant needs Python 3.13 and takes minutes to install, so it is not a test
# dependency: point SERD_HA_PYTHON at an interpreter that has it
# (python3.13 -m venv /tmp/havenv && /tmp/havenv/bin/pip install homeassistant).
_HA_CHECK = r'''
import asyncio, json, sys, tempfile
from homeassistant.components.mqtt import binary_sensor, event, sensor
from homeassistant.components.mqtt.discovery import TOPIC_MATCHER
from homeassistant.const import __version__
from homeassistant.core import HomeAssistant
from homeassistant.helpers import frame
from homeassistant.helpers.template import Template

job = json.load(sys.stdin)
schemas = {"sensor": sensor.DISCOVERY_SCHEMA, "binary_sensor": binary_sensor.DISCOVERY_SCHEMA,
           "event": event.DISCOVERY_SCHEMA}
out = {"version": __version__, "configs": {}, "renders": []}


async def check():
    hass = HomeAssistant(tempfile.mkdtemp())
    frame.async_setup(hass)  # the schemas' template validators need it
    for topic, cfg in job["configs"].items():
        m = TOPIC_MATCHER.match(topic.removeprefix(job["prefix"] + "/"))
        c = dict(cfg)
        c.pop("origin", None)  # validated on its own by the discovery code, before the schema
        valid = schemas[m.group("component")](c) if m else {}
        out["configs"][topic] = {"matched": bool(m), "dropped": sorted(set(c) - set(valid))}
    for text, payload, this in job["renders"]:
        try:
            value = Template(text, hass).async_render(
                {"value": payload, "value_json": json.loads(payload), "this": this},
                parse_result=False)
        except Exception as exc:  # noqa: BLE001
            value = f"ERROR {type(exc).__name__}: {exc}"
        out["renders"].append(value)
    await hass.async_stop(force=True)

asyncio.run(check())
print(json.dumps(out))
'''


def test_home_assistant_schemas_and_templates() -> None:
    import os  # noqa: PLC0415

    python = os.environ.get("SERD_HA_PYTHON")
    if not python or not Path(python).exists():
        pytest.skip("set SERD_HA_PYTHON to a Python with homeassistant installed")
    cfgs = make_configs(rules=("sustained_distress",))
    sensor = _entity(cfgs, "customer_emotion")
    alert_ = _entity(cfgs, f"agent_alert_{object_id('sustained_distress')}")
    problem = _entity(cfgs, "device_problem")
    backlog = _entity(cfgs, "device_spool_backlog")
    avail = sensor["availability"][0]["value_template"]
    keep = {"state": "happy", "attributes": {"confidence": 0.5}}
    renders: list[tuple[str, str, Any]] = [
        (sensor["value_template"], emotion("customer", "utterance", "sad"), keep),
        (sensor["value_template"], emotion("customer", "window", "sad"), keep),
        (sensor["json_attributes_template"], emotion("customer", "utterance", "sad"), keep),
        (sensor["json_attributes_template"], emotion("agent", "utterance", "sad"), keep),
        (alert_["value_template"], state(("agent", "sustained_distress")), {}),
        (alert_["value_template"], state(), {}),
        (problem["value_template"], json.dumps({"state": "degraded"}), {}),
        (avail, json.dumps({"state": "degraded"}), {}),
        (avail, json.dumps({"state": "offline"}), {}),
        (backlog["value_template"], json.dumps({"publisher": {"spool_depth": 4}}), {}),
        (backlog["value_template"], json.dumps({"publisher": "x"}), {}),
        (sensor["value_template"], emotion("agent", "utterance", "sad"), {"state": "unknown"}),
    ]
    job = {"configs": cfgs, "renders": renders, "prefix": "homeassistant"}
    r = subprocess.run([python, "-c", _HA_CHECK], input=json.dumps(job), capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for t, check in result["configs"].items():
        assert check == {"matched": True, "dropped": []}, (result["version"], t, check)
    got = [str(v).strip() for v in result["renders"]]
    assert json.loads(got[2]) == {"confidence": 0.81, "start": "2024-05-01T12:00:00.000Z",
                                  "end": "2024-05-01T12:00:01.750Z"}
    assert json.loads(got[3]) == {"confidence": 0.5}
    assert got[:2] + got[4:] == ["sad", "happy", "ON", "OFF", "ON", "online", "offline",
                                 "4", "", "None"], (result["version"], got)
