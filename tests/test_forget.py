"""``serd forget DEVICE``: a retired device's retained topics and Home Assistant discovery
configs are cleared on a real Mosquitto; other devices are untouched; an online device is
refused unless --force; a broker that cannot be reached is one line and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from serd.discovery import config_topic
from serd.events import status_event
from serd_testkit import Broker, free_port


def retained(broker: Broker, topic: str = "#") -> dict[str, bytes]:
    """Every retained message a new subscriber gets now."""
    got: dict[str, bytes] = {}
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload)) \
        if m.retain else None
    client.connect(broker.host, broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(0.8)
    client.disconnect()
    client.loop_stop()
    return got


def put(broker: Broker, items: dict[str, Any]) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for t, payload in items.items():
        client.publish(t, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def forget(broker: Broker | None, *args: str, port: int | None = None) -> Any:
    where = ["--host", "127.0.0.1", "--port", str(port or (broker.port if broker else 1))]
    return subprocess.run([sys.executable, "-m", "serd.cli", "forget", *where, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def device(name: str, state: str, reason: str) -> dict[str, Any]:
    return {
        f"serd/{name}/status": status_event(name, state, reason, version="0"),  # type: ignore[arg-type]
        f"serd/{name}/state": {"type": "state", "device_id": name, "alerts": []},
        config_topic("homeassistant", name, "sensor", "main_emotion"): {"name": "main emotion"},
        config_topic("homeassistant", name, "binary_sensor", "device_problem"): {"name": "p"},
    }


@pytest.mark.broker
def test_forget_clears_retained_topics_and_discovery_of_that_device_only(
    mosquitto: Broker,
) -> None:
    put(mosquitto, {**device("old-replay", "offline", "shutdown"),
                    **device("desk-1", "offline", "connection_lost")})
    assert len(retained(mosquitto)) == 8
    r = forget(mosquitto, "old-replay")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("forgot old-replay: cleared 2 retained topics (state, status) "
                                "and 2 Home Assistant discovery configs")
    left = retained(mosquitto)
    assert sorted(left) == sorted(device("desk-1", "offline", "x"))
    # Forgetting again is harmless, and says that there was nothing left: a mistyped id
    # (desk1 for desk-1) must not read as "forgot desk1: cleared 2 retained topics".
    for name in ("old-replay", "desk1"):
        again = forget(mosquitto, name)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"nothing to forget for {name}: "), again.stdout
        assert "cleared" not in again.stdout
    assert sorted(retained(mosquitto)) == sorted(device("desk-1", "offline", "x"))


@pytest.mark.broker
def test_forget_refuses_an_online_device_unless_forced(mosquitto: Broker) -> None:
    put(mosquitto, device("desk-2", "online", "connected"))
    r = forget(mosquitto, "desk-2")
    assert r.returncode == 1
    assert r.stderr.strip() == ("serd forget: desk-2 not forgotten: it is online: stop it first "
                                "(it would announce itself again), or use --force")
    assert len(retained(mosquitto)) == 4
    assert forget(mosquitto, "desk-2", "--force").returncode == 0
    assert retained(mosquitto) == {}


def test_forget_says_what_is_wrong() -> None:
    r = forget(None, "desk/1")
    assert r.returncode == 2
    assert "device_id" in r.stderr and r.stderr.count("\n") == 1
    r = forget(None, "desk-1", port=free_port())
    assert r.returncode == 1
    assert r.stderr.startswith("serd forget: cannot connect to MQTT broker 127.0.0.1:")
    assert r.stderr.strip().endswith("nothing was removed")
