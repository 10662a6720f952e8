"""MqttPublisher and StdoutPublisher against a real Mosquitto broker (no MQTT mocks).

Delivery is at least once: tests accept duplicates but require every seq, and that the
first arrival of each seq comes in seq order.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import serd
from serd import events
from serd.publisher import (
    MqttPublisher,
    MqttSettings,
    PublisherStats,
    StdoutPublisher,
    make_publisher,
)
from serd.validate import ConfigError, build
from serd_testkit import Broker, Message, Subscriber, free_port, wait_until

jsonschema = pytest.importorskip("jsonschema")

DEVICE = "dev-1"
PREFIX = "t"
REPO = Path(serd.__file__).parent.parent
SCHEMA_DIR = Path(events.__file__).parent / "schema"
MakeSubscriber = Callable[..., Subscriber]


def fast_settings(broker: Broker, **overrides: Any) -> MqttSettings:
    """Settings with sub-second reconnects so outage tests stay short."""
    fields: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "topic_prefix": PREFIX,
        "keepalive_seconds": 5,
        "reconnect_min_seconds": 0.1,
        "reconnect_max_seconds": 0.5,
    }
    fields.update(overrides)
    return MqttSettings(**fields)


def emotion(i: int) -> dict[str, Any]:
    t = 1714564800.0 + i
    result = events.EmotionResult(
        type="window",
        channel="0",
        start_epoch_seconds=t,
        end_epoch_seconds=t + 1.0,
        label="neutral" if i % 3 else None,
        confidence=0.6,
        probs={"neutral": 0.6, "angry": 0.4},
        model="test-model",
    )
    return events.emotion_event(DEVICE, result)


def topic(suffix: str) -> str:
    return f"{PREFIX}/{DEVICE}/{suffix}"


def seqs(messages: list[Message], suffix: str = "emotion") -> list[int]:
    """seq of every message on ``suffix``, in arrival order (duplicates kept)."""
    return [m.json()["seq"] for m in messages if m.topic == topic(suffix)]


def first_arrivals(messages: list[Message], suffix: str = "emotion") -> list[int]:
    seen: set[int] = set()
    order = []
    for s in seqs(messages, suffix):
        if s not in seen:
            seen.add(s)
            order.append(s)
    return order


def has_all(expected: set[int], suffix: str = "emotion") -> Callable[[list[Message]], bool]:
    return lambda msgs: expected <= set(seqs(msgs, suffix))


def assert_delivered_in_order(messages: list[Message], expected: list[int]) -> None:
    order = first_arrivals(messages)
    assert set(order) == set(expected), "gaps or unexpected seqs"
    assert order == sorted(order), "first arrivals out of order"


def statuses(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.json()["state"], m.json()["reason"]) for m in messages if m.topic == topic("status")]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def publishers() -> Iterator[list[MqttPublisher]]:
    """Publishers made by a test; closed at teardown if the test did not."""
    made: list[MqttPublisher] = []
    yield made
    for pub in made:
        pub.close(timeout_seconds=0.5)


def start_publisher(
    made: list[MqttPublisher], settings: MqttSettings, state_dir: Path
) -> MqttPublisher:
    pub = MqttPublisher(settings, DEVICE, state_dir)
    made.append(pub)
    pub.start()
    return pub


def validator(name: str) -> Any:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


# -- settings -----------------------------------------------------------------------


def test_settings_from_yaml_mapping() -> None:
    s = build(MqttSettings, {"host": "broker.lan", "port": 8883, "tls": True}, "mqtt")
    assert (s.host, s.port, s.topic_prefix, s.tls, s.tls_insecure) == (
        "broker.lan",
        8883,
        "serd",
        True,
        False,
    )
    assert build(MqttSettings, {}, "mqtt").host is None  # stdout by default


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"hostname": "x"}, "mqtt.hostname: unknown key"),
        ({"port": 0}, "mqtt.port"),
        ({"port": "1883"}, "mqtt.port"),
        ({"topic_prefix": "a/+/b"}, "mqtt.topic_prefix"),
        ({"topic_prefix": "a//b"}, "mqtt.topic_prefix"),
        ({"topic_prefix": "/a"}, "mqtt.topic_prefix"),
        ({"topic_prefix": "$SYS"}, "mqtt.topic_prefix"),
        ({"protocol": 5}, "mqtt.protocol"),
        ({"keepalive_seconds": 0}, "mqtt.keepalive_seconds"),
        ({"ca_file": "/ca.pem"}, "mqtt.ca_file: needs tls"),
        ({"tls": True, "key_file": "/k.pem"}, "mqtt.key_file: needs cert_file"),
        ({"password_file": "/pw"}, "mqtt.password_file: needs username"),
        (
            {"username": "u", "password_file": "/pw", "password_env": "PW"},
            "mqtt.password_file",
        ),
        ({"reconnect_min_seconds": 5, "reconnect_max_seconds": 1}, "reconnect_max_seconds"),
        ({"spool_max_events": 0}, "mqtt.spool_max_events"),
    ],
)
def test_settings_are_validated(mapping: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(MqttSettings, mapping, "mqtt")


def test_unreadable_password_file_is_a_config_error(tmp_path: Path, state_dir: Path) -> None:
    settings = MqttSettings(host="127.0.0.1", username="u", password_file=str(tmp_path / "missing"))
    pub = MqttPublisher(settings, DEVICE, state_dir)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read"):
        pub.start()


def test_make_publisher_picks_stdout_without_host(state_dir: Path) -> None:
    assert isinstance(make_publisher(MqttSettings(), DEVICE, state_dir), StdoutPublisher)
    settings = MqttSettings(host="127.0.0.1")
    assert isinstance(make_publisher(settings, DEVICE, state_dir), MqttPublisher)


# -- delivery -----------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_round_trip_and_match_the_schemas(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
    protocol: str,
) -> None:
    sub = subscriber(mosquitto, f"{PREFIX}/{DEVICE}/+")
    pub = start_publisher(publishers, fast_settings(mosquitto, protocol=protocol), state_dir)
    returned = [pub.publish_event("emotion", emotion(i)) for i in range(5)]
    alert = events.AlertResult("0", "sustained_anger", "angry", 1.0, 31.0, 0.8, "m", "grr")
    assert pub.publish_event("alert", events.alert_event(DEVICE, alert)) == 1
    assert returned == [1, 2, 3, 4, 5]
    msgs = sub.wait_for(lambda m: has_all({1, 2, 3, 4, 5})(m) and has_all({1}, "alert")(m))
    assert wait_until(lambda: pub.stats().connected, 10)
    pub.publish_health({"uptime_seconds": 3.0, "rtf": 0.2, "model": "test-model"})
    msgs = sub.wait_for(lambda m: any(x.topic == topic("health") for x in m))

    check_event, check_alert = validator("event"), validator("alert")
    for m in msgs:
        if m.topic == topic("emotion"):
            check_event.validate(m.json())
            assert (m.qos, m.retain) == (1, False)
        elif m.topic == topic("alert"):
            check_alert.validate(m.json())
            assert (m.qos, m.retain) == (1, False)
    health = next(m for m in msgs if m.topic == topic("health"))
    validator("health").validate(health.json())
    assert health.json()["uptime_seconds"] == 3.0
    assert health.json()["publisher"]["connected"] is True
    assert first_arrivals(msgs) == [1, 2, 3, 4, 5]
    online = next(m for m in msgs if m.topic == topic("status"))
    validator("status").validate(online.json())
    assert online.json()["state"] == "online"

    assert wait_until(lambda: pub.stats().spool_depth == 0, 10)
    stats = pub.stats()
    assert isinstance(stats, PublisherStats)
    assert stats.sent >= 6
    assert stats.dropped == 0


@pytest.mark.broker
def test_seq_continues_across_publisher_instances(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
) -> None:
    sub = subscriber(mosquitto, topic("emotion"))
    pub = start_publisher(publishers, fast_settings(mosquitto), state_dir)
    assert [pub.publish_event("emotion", emotion(i)) for i in range(3)] == [1, 2, 3]
    sub.wait_for(has_all({1, 2, 3}))
    pub.close(timeout_seconds=5)
    assert pub.stats().spool_depth == 0

    pub2 = start_publisher(publishers, fast_settings(mosquitto), state_dir)
    assert [pub2.publish_event("emotion", emotion(i)) for i in range(3)] == [4, 5, 6]
    msgs = sub.wait_for(has_all({4, 5, 6}))
    assert_delivered_in_order(msgs, [1, 2, 3, 4, 5, 6])


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_down_at_start_then_all_events_arrive_in_order(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
    protocol: str,
) -> None:
    sub = subscriber(mosquitto, topic("emotion"))  # persistent session: survives restart
    mosquitto.stop()
    pub = start_publisher(publishers, fast_settings(mosquitto, protocol=protocol), state_dir)
    for i in range(30):
        pub.publish_event("emotion", emotion(i))
    stats = pub.stats()
    assert not stats.connected
    assert stats.spool_depth == 30
    mosquitto.start()
    msgs = sub.wait_for(has_all(set(range(1, 31))), timeout=20)
    assert_delivered_in_order(msgs, list(range(1, 31)))
    assert wait_until(lambda: pub.stats().spool_depth == 0, 10)


@pytest.mark.broker
def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
) -> None:
    sub = subscriber(mosquitto, topic("emotion"))
    pub = start_publisher(publishers, fast_settings(mosquitto), state_dir)
    assert wait_until(lambda: pub.stats().connected, 10)
    total = 300
    published = threading.Semaphore(0)

    def produce() -> None:
        for i in range(total):
            pub.publish_event("emotion", emotion(i))
            published.release()
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    for _ in range(100):
        published.acquire()
    mosquitto.stop()  # mid-stream, with events in flight
    for _ in range(100):
        published.acquire()
    mosquitto.start()
    producer.join()
    msgs = sub.wait_for(has_all(set(range(1, total + 1))), timeout=30)
    assert_delivered_in_order(msgs, list(range(1, total + 1)))
    assert pub.stats().connects >= 2
    assert wait_until(lambda: pub.stats().spool_depth == 0, 10)


_SPOOLING_CHILD = """
import sys, time
from serd import events
from serd.publisher import MqttPublisher, MqttSettings
host, port, state_dir, count, mode = sys.argv[1:6]
settings = MqttSettings(host=host, port=int(port), topic_prefix="t", keepalive_seconds=5,
                        reconnect_min_seconds=0.1, reconnect_max_seconds=0.5)
pub = MqttPublisher(settings, "dev-1", state_dir)
pub.start()
result = events.EmotionResult("window", "0", 1.0, 2.0, "calm", 0.9, {"calm": 0.9}, "m")
for _ in range(int(count)):
    pub.publish_event("emotion", events.emotion_event("dev-1", result))
print("spooled", flush=True)
if mode == "wait-connected":
    while not pub.stats().connected:
        time.sleep(0.02)
    print("connected", flush=True)
time.sleep(120)
"""


def spawn_child(broker: Broker, state_dir: Path, count: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SPOOLING_CHILD,
            broker.host,
            str(broker.port),
            str(state_dir),
            str(count),
            mode,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.mark.broker
def test_sigkilled_publisher_spool_is_replayed_by_the_next_one(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
) -> None:
    sub = subscriber(mosquitto, topic("emotion"))
    mosquitto.stop()
    child = spawn_child(mosquitto, state_dir, 25, "spool-only")
    try:
        assert read_line(child) == "spooled"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    mosquitto.start()
    pub = start_publisher(publishers, fast_settings(mosquitto), state_dir)
    msgs = sub.wait_for(has_all(set(range(1, 26))), timeout=20)
    assert_delivered_in_order(msgs, list(range(1, 26)))
    assert pub.publish_event("emotion", emotion(0)) == 26


@pytest.mark.broker
def test_full_spool_drops_the_oldest_and_counts(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
) -> None:
    sub = subscriber(mosquitto, topic("emotion"))
    mosquitto.stop()
    pub = start_publisher(publishers, fast_settings(mosquitto, spool_max_events=5), state_dir)
    for i in range(12):
        pub.publish_event("emotion", emotion(i))
    stats = pub.stats()
    assert (stats.spool_depth, stats.dropped) == (5, 7)
    mosquitto.start()
    msgs = sub.wait_for(has_all({8, 9, 10, 11, 12}), timeout=20)
    assert set(seqs(msgs)) == {8, 9, 10, 11, 12}  # 1..7 dropped: a visible gap
    assert_delivered_in_order(msgs, [8, 9, 10, 11, 12])
    assert pub.stats().dropped == 7


# -- status, will, errors -----------------------------------------------------------


@pytest.mark.broker
def test_retained_status_online_then_offline_on_close(
    mosquitto: Broker,
    subscriber: MakeSubscriber,
    publishers: list[MqttPublisher],
    state_dir: Path,
) -> None:
    sub = subscriber(mosquitto, topic("status"), persistent=False)
    pub = start_publisher(publishers, fast_settings(mosquitto), state_dir)
    sub.wait_for(lambda m: ("online", "connected") in statuses(m))
    for i in range(3):
        pub.publish_event("emotion", emotion(i))
    pub.close(timeout_seconds=5)
    msgs = sub.wait_for(lambda m: ("offline", "shutdown") in statuses(m))
    assert statuses(msgs)[-1] == ("offline", "shutdown")
    assert pub.stats().spool_depth == 0  # close flushed first
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish_event("emotion", emotion(9))

    late = subscriber(mosquitto, topic("status"), persistent=False)
    retained = late.wait_for(lambda m: len(m) >= 1)[0]
    assert retained.retain
    assert retained.json()["state"] == "offline"
    validator("status").validate(retained.json())


@pytest.mark.broker
def test_last_will_offline_when_the_process_is_killed(
    mosquitto: Broker, subscriber: MakeSubscriber, state_dir: Path
) -> None:
    sub = subscriber(mosquitto, topic("status"), persistent=False)
    child = spawn_child(mosquitto, state_dir, 1, "wait-connected")
    try:
        assert read_line(child) == "spooled"
        assert read_line(child) == "connected"
        sub.wait_for(lambda m: ("online", "connected") in statuses(m))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    msgs = sub.wait_for(lambda m: ("offline", "connection_lost") in statuses(m))
    will = next(m for m in msgs if m.topic == topic("status") and m.json()["state"] == "offline")
    validator("status").validate(will.json())
    assert "ts" not in will.json()


@pytest.mark.broker
def test_unreachable_broker_logs_one_line_and_keeps_spooling(
    caplog: pytest.LogCaptureFixture, publishers: list[MqttPublisher], state_dir: Path
) -> None:
    caplog.set_level(logging.DEBUG, logger="serd.publisher")
    port = free_port()  # nothing listens there
    settings = MqttSettings(
        host="127.0.0.1", port=port, reconnect_min_seconds=0.05, reconnect_max_seconds=0.1
    )
    pub = start_publisher(publishers, settings, state_dir)
    assert pub.publish_event("emotion", emotion(0)) == 1

    def attempts() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot connect" in r.getMessage()]

    assert wait_until(lambda: len(attempts()) >= 3, 10)  # it keeps retrying
    errors = [r for r in attempts() if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # the repeats go to DEBUG
    assert "connection refused" in errors[0].getMessage()
    assert errors[0].exc_info is None
    assert pub.stats().spool_depth == 1


@pytest.mark.broker
def test_auth_failure_is_one_line_then_good_password_file_works(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mosquitto_factory: Callable[..., Broker],
    publishers: list[MqttPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    state_dir = tmp_path / "state"
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "serd", "s3cret"], check=True)
    broker = mosquitto_factory(allow_anonymous=False, extra_config=f"password_file {passwd}")
    caplog.set_level(logging.DEBUG, logger="serd.publisher")
    monkeypatch.setenv("SERD_TEST_PW", "wrong")
    bad = start_publisher(
        publishers, fast_settings(broker, username="serd", password_env="SERD_TEST_PW"), state_dir
    )

    def refusals() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "refused the connection" in r.getMessage()]

    assert wait_until(lambda: len(refusals()) >= 2, 10)  # it keeps retrying
    errors = [r for r in refusals() if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # one line, repeats at DEBUG
    assert errors[0].exc_info is None
    assert "Not authorized" in errors[0].getMessage() or "password" in errors[0].getMessage()
    assert not bad.stats().connected
    bad.close(timeout_seconds=0.5)

    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("s3cret\n")
    good = start_publisher(
        publishers, fast_settings(broker, username="serd", password_file=str(pw_file)), state_dir
    )
    assert wait_until(lambda: good.stats().connected, 10)
    assert wait_until(lambda: good.stats().spool_depth == 0, 10)  # bad's spooled event too


# -- TLS ----------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for DNS:localhost only."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca, key, csr, cert, ext = (
        d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext")
    )
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", "/CN=serd test CA")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=localhost")  # fmt: skip
    ext.write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return {"ca": ca, "cert": cert, "key": key}


@pytest.mark.broker
def test_tls_verifies_the_broker_host_name(
    tmp_path: Path,
    tls_files: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    mosquitto_factory: Callable[..., Broker],
    publishers: list[MqttPublisher],
) -> None:
    broker = mosquitto_factory(
        extra_config=f"certfile {tls_files['cert']}\nkeyfile {tls_files['key']}"
    )
    caplog.set_level(logging.INFO, logger="serd.publisher")
    ca = str(tls_files["ca"])
    # The certificate names "localhost", so 127.0.0.1 must be refused by default.
    wrong_name = start_publisher(
        publishers, fast_settings(broker, host="127.0.0.1", tls=True, ca_file=ca), tmp_path / "s1"
    )
    assert wait_until(
        lambda: any("TLS certificate rejected" in r.getMessage() for r in caplog.records), 10
    )
    assert not wrong_name.stats().connected
    wrong_name.close(timeout_seconds=0.5)

    good = start_publisher(
        publishers, fast_settings(broker, host="localhost", tls=True, ca_file=ca), tmp_path / "s2"
    )
    insecure = start_publisher(
        publishers,
        fast_settings(
            broker, host="127.0.0.1", tls=True, ca_file=ca, tls_insecure=True, client_id="insecure"
        ),
        tmp_path / "s3",
    )
    assert good.publish_event("emotion", emotion(0)) == 1
    assert wait_until(lambda: good.stats().connected and insecure.stats().connected, 10)
    assert wait_until(lambda: good.stats().spool_depth == 0, 10)


# -- stdout -------------------------------------------------------------------------


def test_stdout_publisher_prints_json_lines_with_persistent_seq(state_dir: Path) -> None:
    out = io.StringIO()
    pub = StdoutPublisher(DEVICE, state_dir, stream=out)
    pub.start()
    assert [pub.publish_event("emotion", emotion(i)) for i in range(3)] == [1, 2, 3]
    pub.publish_health({"uptime_seconds": 1.0})
    pub.close()

    out2 = io.StringIO()
    pub2 = StdoutPublisher(DEVICE, state_dir, stream=out2)
    pub2.start()
    assert pub2.publish_event("emotion", emotion(3)) == 4
    pub2.close()

    lines = [json.loads(line) for line in (out.getvalue() + out2.getvalue()).splitlines()]
    types = [line["type"] for line in lines]
    assert types == ["status", "window", "window", "window", "health", "status", "status",
                     "window", "status"]  # fmt: skip
    check = validator("event")
    emitted = [line for line in lines if line["type"] == "window"]
    for line in emitted:
        check.validate(line)
    assert [line["seq"] for line in emitted] == [1, 2, 3, 4]
    validator("health").validate(next(line for line in lines if line["type"] == "health"))
    assert pub2.stats().spool_depth == 0


def test_stdout_publisher_survives_a_closed_stdout(state_dir: Path) -> None:
    out = io.StringIO()
    pub = StdoutPublisher(DEVICE, state_dir, stream=out)
    pub.start()
    out.close()  # like a closed pipe
    assert pub.publish_event("emotion", emotion(0)) == 1
    stats = pub.stats()
    assert not stats.connected
    assert stats.rejected == 1
    pub.close()
