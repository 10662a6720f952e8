"""``serd listen``: the board (state, duplicates, table) and the command against real brokers
(JSON lines, the table when piped, TLS + password from the config's mqtt section)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from serd import events
from serd.listen import Board, json_line
from serd.publisher import MqttPublisher, MqttSettings
from serd_testkit import wait_until

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def emotion(channel: str, label: str | None, t: float = T0,
            type_: Literal["window", "utterance"] = "window") -> dict:
    return events.emotion_event("desk-1", events.EmotionResult(
        type_, channel, t, t + 2.0, label, 0.8, {"angry": 0.8, "neutral": 0.2}, "m"),
        now_epoch_seconds=t + 2.0)


def alert(channel: str, message: str) -> dict:
    state, _, text = message.partition(": ")
    return events.alert_event("desk-1", events.AlertResult(
        channel, "sustained_distress", "angry", T0, T0 + 12, 0.8, "m", text,
        state="cleared" if state == "cleared" else "started"))


def with_seq(p: dict, seq: int) -> dict:
    return {**p, "seq": seq}


def test_board_tracks_devices_channels_and_drops_duplicates() -> None:
    b = Board("serd")
    status = events.status_event("desk-1", "online", "connected", version="0.1.0")
    assert b.feed("serd/desk-1/status", status)
    assert b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "angry"), 1))
    assert b.feed("serd/desk-1/emotion", with_seq(emotion("customer", None), 2))
    assert not b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "sad"), 1))  # resent
    assert b.duplicates == 1
    assert b.feed("serd/desk-1/alert", with_seq(alert("agent", "started: angry 11 s"), 1))
    assert not b.feed("other/desk-1/emotion", with_seq(emotion("agent", "sad"), 3))
    assert not b.feed("serd/desk-1/health", {"type": "health"})
    table = b.table(now=time.time())
    rows = table.splitlines()
    assert rows[0].split() == ["DEVICE", "CHANNEL", "STATUS", "EMOTION", "CONF", "UPDATED",
                               "LAST", "ALERT"]
    agent = next(r for r in rows if " agent " in r)
    assert "online" in agent
    assert "angry" in agent
    assert "0.80" in agent
    assert "ACTIVE sustained_distress angry since" in agent
    customer = next(r for r in rows if " customer " in r)
    assert "(unsure)" in customer
    # Cleared, then the device goes away.
    b.feed("serd/desk-1/alert", with_seq(alert("agent", "cleared: angry 4 s"), 2))
    lost = events.status_event("desk-1", "offline", "connection_lost", version="0.1.0",
                               with_ts=False)
    b.feed("serd/desk-1/status", lost)
    table = b.table(color=True)
    agent = next(r for r in table.splitlines() if " agent " in r)
    assert "ACTIVE" not in agent
    assert "sustained_distress angry" in agent
    assert "offline (connection lost)" in agent
    assert agent.startswith("\x1b[2m")  # dimmed
    # Back online after the outage: events it re-sends are still duplicates ...
    b.feed("serd/desk-1/status", status)
    assert not b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "sad"), 2))
    assert b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "sad"), 3))
    # ... but after a restart with a wiped state dir, seq starts again at 1.
    b.feed("serd/desk-1/status", lost)
    b.feed("serd/desk-1/status", status)
    assert b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "happy"), 1))
    assert b.feed("serd/desk-1/emotion", with_seq(emotion("agent", "happy"), 2))


def test_device_without_events_has_a_row_and_multilevel_prefix() -> None:
    b = Board("acme/site1")
    b.feed("acme/site1/pi-2/status",
           events.status_event("pi-2", "online", "connected", version="0.1.0"))
    assert any(r.startswith("pi-2 ") and " - " in r for r in b.table().splitlines())
    assert b.split("acme/site1/pi-2/emotion") == ("pi-2", "emotion")
    assert b.split("acme/site1/pi-2/x/emotion") is None


# -- the command against a broker -----------------------------------------------------------


class Listen:
    """``serd listen`` as its own process; its stdout collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serd.cli", "listen", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        """Until some output line contains ``text`` (e.g. the retained status: subscribed)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.out)):
            assert self.proc.poll() is None or self._reader.is_alive(), self.out
            assert time.monotonic() < deadline, f"no {text!r} in {self.out[-20:]}"
            time.sleep(0.05)

    def lines(self, timeout: float = 20.0) -> list[str]:
        """All output once it exits by itself (--count)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"serd listen did not finish: {self.out[-20:]}") from None
        self._reader.join(5)
        assert self.proc.stderr is not None
        assert rc == 0, self.proc.stderr.read()
        return list(self.out)


@pytest.fixture
def listens() -> Iterator[list[Listen]]:
    made: list[Listen] = []
    yield made
    for lst in made:
        if lst.proc.poll() is None:
            lst.proc.kill()
            lst.proc.communicate()


def publisher(tmp_path: Path, settings: MqttSettings, name: str = "desk-1") -> MqttPublisher:
    pub = MqttPublisher(settings, name, tmp_path / f"state-{name}")
    pub.start()
    return pub


@pytest.mark.broker
def test_json_lines_for_every_message(
    tmp_path: Path, mosquitto: Any, listens: list[Listen]
) -> None:
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    pub = publisher(tmp_path, settings)
    # The retained status arrives even though it was published before listen started.
    assert wait_until(lambda: pub.stats().connected, 10)
    lst = Listen("--host", mosquitto.host, "--port", str(mosquitto.port), "--json",
                 "--count", "4")
    listens.append(lst)
    lst.wait_for('"type": "status"')  # retained: it is subscribed
    pub.publish_event("emotion", emotion("agent", "angry"))
    pub.publish_event("emotion", emotion("agent", "neutral", T0 + 0.5, "utterance"))
    pub.publish_event("alert", alert("agent", "started: angry 11 s"))
    recs = [json.loads(line) for line in lst.lines()]
    pub.close()
    assert [(r["topic"], r["type"]) for r in recs] == [
        ("serd/desk-1/status", "status"), ("serd/desk-1/emotion", "window"),
        ("serd/desk-1/emotion", "utterance"), ("serd/desk-1/alert", "alert")]
    assert recs[0]["state"] == "online"
    assert [r.get("seq") for r in recs[1:]] == [1, 2, 1]
    assert recs[3]["rule"] == "sustained_distress"


@pytest.mark.broker
def test_table_when_piped(tmp_path: Path, mosquitto: Any, listens: list[Listen]) -> None:
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port, topic_prefix="acme/s1")
    pub = publisher(tmp_path, settings)
    assert wait_until(lambda: pub.stats().connected, 10)
    lst = Listen("--host", mosquitto.host, "--port", str(mosquitto.port), "--prefix", "acme/s1",
                 "--count", "2")
    listens.append(lst)
    lst.wait_for("DEVICE")  # printed once the retained status arrived
    pub.publish_event("emotion", emotion("customer", "sad", T0 + 1))
    out = "\n".join(lst.lines())
    pub.close()
    assert "DEVICE" in out
    row = next(r for r in out.splitlines()[::-1] if r.startswith("desk-1 "))
    assert row.split()[:4] == ["desk-1", "customer", "online", "sad"]
    assert "\x1b[" not in out  # no terminal codes when piped


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost, a mosquitto password file."""
    for tool in ("openssl", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca, key, csr, cert, ext = (
        d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", "/CN=serd test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    passwd = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "watcher", "s3cret"],
                   check=True, capture_output=True)
    passwd.chmod(0o600)
    secret = d / "password.txt"
    secret.write_text("s3cret\n")
    return {"ca": ca, "cert": cert, "key": key, "passwd": passwd, "secret": secret}


@pytest.mark.broker
def test_tls_and_password_from_the_config(
    tmp_path: Path, mosquitto_factory: Any, pki: dict[str, Path], listens: list[Listen]
) -> None:
    broker = mosquitto_factory(
        allow_anonymous=False,
        extra_config=f"certfile {pki['cert']}\nkeyfile {pki['key']}\n"
        f"password_file {pki['passwd']}",
    )
    mqtt_cfg = {"host": "localhost", "port": broker.port, "tls": True,
                "ca_file": str(pki["ca"]), "username": "watcher",
                "password_file": str(pki["secret"])}
    pub = publisher(tmp_path, MqttSettings(**mqtt_cfg))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": mqtt_cfg}))
    assert wait_until(lambda: pub.stats().connected, 10)
    lst = Listen("--config", str(cfg), "--json", "--count", "2")
    listens.append(lst)
    lst.wait_for('"type": "status"')
    pub.publish_event("emotion", emotion("agent", "sad", T0 + 1))
    recs = [json.loads(line) for line in lst.lines()]
    pub.close()
    assert [r["type"] for r in recs] == ["status", "window"]
    assert recs[1]["label"] == "sad"

    # Wrong password: one clear line on stderr, and it keeps retrying (until stopped).
    (tmp_path / "wrong.txt").write_text("nope\n")
    cfg.write_text(yaml.safe_dump({"mqtt": {**mqtt_cfg,
                                            "password_file": str(tmp_path / "wrong.txt")}}))
    bad = Listen("--config", str(cfg), "--json")
    listens.append(bad)
    time.sleep(2.5)
    assert bad.proc.poll() is None
    bad.proc.terminate()
    out, err = bad.proc.communicate(timeout=10)
    assert bad.proc.returncode == 0
    assert out == ""
    assert "refused the connection" in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mqtt: {port: 0}\n")
    r = subprocess.run([sys.executable, "-m", "serd.cli", "listen", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 78
    assert r.stderr.strip().count("\n") == 0
    assert "mqtt.port" in r.stderr


# -- hostile payloads (issue 24 findings 5, 6, 8; issue 22's listen lies) ------------------


def _retain(broker: Any, messages: list[tuple[str, bytes | str]], *, protocol: Any = 4) -> None:
    """Publish ``messages`` retained (QoS 1) with a plain client, and wait for each."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         protocol=protocol)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


HOSTILE: list[dict[str, Any]] = [
    {"channel": "a", "label": ["x"], "type": "window", "confidence": 0.5},
    {"channel": "a", "label": 7, "type": "window"},
    {"channel": ["a"], "label": "sad"},
    {"channel": "a", "label": "sad", "confidence": "0.9", "seq": "1"},
    {"channel": "a", "label": "sad", "confidence": 1e308, "seq": 3},
    {"channel": "a", "label": "sad", "seq": True},
    {"channel": "a", "rule": {"x": 1}, "label": "angry", "state": "started"},
    {"channel": "a", "rule": "r", "label": "angry", "start": ["2024"], "end": 5},
    {"channel": "a", "rule": "r", "label": "angry", "start": "9999999-01-01T00:00:00Z"},
    {"channel": "a", "label": "sad", "seq": 10**40},
    {"state": {"online": 1}, "reason": ["x"]},
]


def test_board_survives_every_hostile_field() -> None:
    b = Board("serd")
    for i, p in enumerate(HOSTILE):
        for suffix in ("emotion", "alert", "status"):
            b.feed(f"serd/d{i}/{suffix}", p)
    table = b.table(color=True, now=T0)
    assert "DEVICE" in table
    assert b.invalid > 0
    # A list label or a numeric one is dropped, never shown as a verdict.
    assert "['x']" not in table
    assert b.rows[("d4", "a")].confidence is None  # 1e308 is no confidence


ESC_CHANNEL = "\x1b]0;pwned\x07"  # OSC 0: set the window title
ESC_LABEL = "\x1b]52;c;cm0gLXJmIH4K\x07"  # OSC 52: write the clipboard
ESC_REASON = "\x1b[2J\x1b[1;1H\x9b2K\x7f"  # erase the screen, C1 CSI, DEL


def test_control_characters_are_escaped() -> None:
    b = Board("serd")
    b.feed("serd/x\x1b[2Jy/status", {"state": "degraded", "reason": ESC_REASON})
    b.feed("serd/x\x1b[2Jy/emotion", {"channel": ESC_CHANNEL, "label": ESC_LABEL,
                                      "confidence": 0.5, "type": "window"})
    b.feed("serd/x\x1b[2Jy/alert", {"channel": ESC_CHANNEL, "rule": "\u202erule",
                                    "label": "\x9d8;;x\x9c", "state": "started"})
    table = b.table(color=False)
    assert not any(c in table for c in "\x1b\x07\x9b\x9d\x9c\x7f\u202e"), repr(table)
    assert "\\x1b]0;pwned\\x07" in table  # shown, visibly
    line = json_line({"topic": "t", "label": ESC_LABEL + "\x9b\x7f\u202e"})
    assert not any(c in line for c in "\x1b\x07\x9b\x7f\u202e")
    assert json.loads(line)["label"] == ESC_LABEL + "\x9b\x7f\u202e"  # same data


def test_degraded_is_shown_distinctly() -> None:
    b = Board("serd")
    b.feed("serd/pi-1/status", {"state": "degraded", "reason": "input_missing"})
    b.feed("serd/pi-2/status", {"state": "online", "reason": "connected"})
    table = b.table(color=True)
    row = next(r for r in table.splitlines() if "pi-1" in r)
    assert "degraded (input missing)" in row
    assert "online" not in row
    assert row.startswith("\x1b[33m")
    assert "2 devices, 1 online, 1 degraded" in table


def test_devices_bounded_stale_aged_out_and_redraw_cheap() -> None:
    b = Board("serd", max_devices=1000, stale_seconds=60)
    for i in range(8000):
        b.feed(f"serd/fake-{i}/status", {"state": "online" if i % 2 else "offline"})
        b.feed(f"serd/fake-{i}/emotion", {"channel": "main", "label": "angry", "seq": 1,
                                          "confidence": 0.5, "type": "window"})
    assert len(b.devices) == 1000
    assert b.refused > 0
    assert b.forgotten > 0
    # Offline devices made room; online ones are never pushed out by newcomers.
    assert sum(d.availability == "online" for d in b.devices.values()) == 1000
    t0 = time.perf_counter()
    screen = b.table(color=True, max_rows=40)
    assert time.perf_counter() - t0 < 0.25
    assert "... 960 more rows" in screen
    assert len(screen.splitlines()) == 1 + 40 + 1 + 2
    for dev in b.devices.values():
        dev.availability = "offline"
    assert b.sweep(time.monotonic() + 61) == 1000
    assert not b.devices
    # A device cannot grow without bound either.
    for i in range(100):
        b.feed("serd/one/emotion", {"channel": f"c{i}", "label": "sad"})
    assert len(b.devices["one"].rows) == 32
    assert b.row_count == 32


@pytest.mark.broker
def test_hostile_retained_messages_do_not_kill_listen(
    mosquitto: Any, listens: list[Listen]
) -> None:
    msgs: list[tuple[str, bytes | str]] = [
        (f"serd/bad-{i}/{s}", json.dumps(p)) for i, p in enumerate(HOSTILE)
        for s in ("emotion", "alert", "status")]
    msgs += [("serd/bad-x/emotion", b"\xff\xfe"), ("serd/bad-y/emotion", "[" * 100_000),
             ("serd/bad-z/emotion", '{"channel": "a", "label": NaN}'),
             ("serd/ok-1/status", json.dumps({"state": "degraded", "reason": "input_missing"})),
             # (Mosquitto refuses control characters in topics: a payload must carry them.)
             ("serd/esc/status", json.dumps({"state": "degraded", "reason": ESC_REASON})),
             ("serd/esc/emotion", json.dumps({"channel": ESC_CHANNEL, "label": ESC_LABEL,
                                              "seq": 1, "type": "window"})),
             # A lone surrogate is valid JSON but cannot be written as UTF-8.
             ("serd/sur/emotion", '{"channel": "a", "label": "\\ud800", "seq": 1}')]
    _retain(mosquitto, msgs)
    table = Listen("--host", mosquitto.host, "--port", str(mosquitto.port))
    js = Listen("--host", mosquitto.host, "--port", str(mosquitto.port), "--json")
    listens += [table, js]
    table.wait_for("degraded (input missing)")
    js.wait_for("pwned")
    time.sleep(1.5)  # every retained message has been handled (and the table redrawn)
    for lst in (table, js):
        assert lst.proc.poll() is None, lst.proc.communicate()
        lst.proc.terminate()
        out, err = lst.proc.communicate(timeout=10)
        text = "\n".join(lst.out) + out
        assert not any(c in text for c in "\x1b\x07\x9b\x7f"), repr(text[-500:])
        assert "Traceback" not in err, err
    assert "invalid dropped" in "\n".join(table.out)


@pytest.mark.broker
def test_count_n_prints_exactly_n_lines(mosquitto: Any, listens: list[Listen]) -> None:
    _retain(mosquitto, [(f"serd/d{i}/status", json.dumps({"state": "online"}))
                        for i in range(50)])
    for n in (1, 3):
        lst = Listen("--host", mosquitto.host, "--port", str(mosquitto.port), "--json",
                     "--count", str(n))
        listens.append(lst)
        assert len(lst.lines()) == n


@pytest.mark.broker
def test_broker_down_is_one_line_then_connected(
    mosquitto: Any, listens: list[Listen]
) -> None:
    mosquitto.stop()
    cfg = Path(mosquitto.workdir) / "listen.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": {
        "host": mosquitto.host, "port": mosquitto.port, "reconnect_min_seconds": 0.1,
        "reconnect_max_seconds": 0.4}}))
    lst = Listen("--config", str(cfg), "--json")
    listens.append(lst)
    time.sleep(3.0)  # several retries
    mosquitto.start()
    _retain(mosquitto, [("serd/d1/status", json.dumps({"state": "online"}))])
    lst.wait_for('"state": "online"')
    lst.proc.terminate()
    _, err = lst.proc.communicate(timeout=10)
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert "cannot connect" in lines[0]
    assert "retrying" in lines[0]
    assert lines[1] == f"serd listen: connected to {mosquitto.host}:{mosquitto.port}"


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_oversize_payload_is_never_handled(
    mosquitto: Any, listens: list[Listen], protocol: str
) -> None:
    from serd.mqttclient import MAX_PACKET_BYTES  # noqa: PLC0415

    big = json.dumps({"state": "online", "reason": "x" * (MAX_PACKET_BYTES + 10)})
    _retain(mosquitto, [("serd/big/status", big),
                        ("serd/small/status", json.dumps({"state": "online"}))], protocol=5)
    cfg = Path(mosquitto.workdir) / "listen.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": {"host": mosquitto.host, "port": mosquitto.port,
                                            "protocol": protocol}}))
    lst = Listen("--config", str(cfg))
    listens.append(lst)
    lst.wait_for("small")
    time.sleep(1.5)
    lst.proc.terminate()
    lst.proc.communicate(timeout=10)
    text = "\n".join(lst.out)
    assert "big" not in text
    last = text.strip().splitlines()[-1]
    if protocol == "3.1.1":  # no Maximum Packet Size in 3.1.1: dropped by listen, counted
        assert "1 invalid dropped" in last, last
    else:  # the broker never sent it
        assert "invalid dropped" not in last, last


@pytest.mark.broker
def test_thousands_of_fake_devices_stay_bounded(mosquitto: Any, listens: list[Listen]) -> None:
    """Issue 24 finding 8: 8,000 fake devices made every redraw take 3.5 s under the lock."""
    _retain(mosquitto, [(f"serd/fake-{i}/status", json.dumps({"state": "online"}))
                        for i in range(1500)])
    lst = Listen("--host", mosquitto.host, "--port", str(mosquitto.port))
    listens.append(lst)
    lst.wait_for("500 refused (board full)", timeout=30)
    lst.proc.terminate()
    lst.proc.communicate(timeout=10)
    last = [line for line in lst.out if "devices," in line][-1]
    assert last.startswith("1000 devices, 1000 online"), last
    assert "500 refused (board full)" in last, last


def test_a_terminal_that_is_not_utf8_never_stops_listen() -> None:
    import io  # noqa: PLC0415

    from serd.listen import Listener  # noqa: PLC0415

    out = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    listener = Listener(MqttSettings(host="127.0.0.1"), as_json=False, count=None, out=out)
    listener._write("sad \U0001f600 é\n")
    assert not listener.stop.is_set()
    assert out.buffer.getvalue() == b"sad \\U0001f600 \xe9\n"


# -- the retained state: a listener started during an incident sees it ------------------------


def state_payload(alerts: list[dict[str, Any]], *, ts: float = T0 + 20,
                  label: str | None = "angry") -> dict[str, Any]:
    """A ``{prefix}/{device}/state`` payload as serd.state publishes it (schema-checked)."""
    import jsonschema  # noqa: PLC0415

    p = {"schema": 1, "type": "state", "device_id": "desk-1", "ts": events.iso_utc(ts),
         "model": "m",
         "channels": [{"channel": "customer", "role": "customer", "label": label,
                       "confidence": 0.74, "kind": "utterance", "end": events.iso_utc(ts - 1)}],
         "alerts": alerts}
    schema = json.loads((Path(events.__file__).parent / "schema" /
                         "state.schema.json").read_text())
    jsonschema.validate(p, schema)
    return p


DISTRESS = {"channel": "customer", "rule": "distress", "label": "angry",
            "since": events.iso_utc(T0 + 5), "confidence": 0.71, "message": "angry 2.0 s"}


def test_retained_state_shows_the_verdict_and_the_alert_in_progress() -> None:
    b = Board("serd")
    b.feed("serd/desk-1/status", events.status_event("desk-1", "online", "connected",
                                                     version="0.1.0"))
    assert b.feed("serd/desk-1/state", state_payload([DISTRESS]), now=T0 + 21)
    row = next(r for r in b.table(now=T0 + 21).splitlines() if " customer " in r)
    assert "angry" in row and "0.74" in row
    assert "ACTIVE distress angry since" in row
    # A fresher live event wins over the state; a later state without the alert clears it.
    b.feed("serd/desk-1/emotion", with_seq(emotion("customer", "neutral", T0 + 22), 1),
           now=T0 + 24)
    b.feed("serd/desk-1/state", state_payload([], ts=T0 + 23), now=T0 + 24.5)
    row = next(r for r in b.table(now=T0 + 25).splitlines() if " customer " in r)
    assert "neutral" in row
    assert "ACTIVE" not in row and "distress angry" in row
    # An alert that started after the state was taken is not cleared by it.
    b.feed("serd/desk-1/alert", with_seq(alert("customer", "started: angry 11 s"), 1))
    b.feed("serd/desk-1/state", state_payload([], ts=T0 - 10), now=T0 + 26)  # late, old
    assert b.rows[("desk-1", "customer")].alert.active  # type: ignore[union-attr]


def test_hostile_state_payloads_are_dropped() -> None:
    b = Board("serd")
    good = state_payload([DISTRESS])
    for bad in ({**good, "channels": "x"}, {**good, "alerts": [1]}, {**good, "ts": 5},
                {**good, "channels": [{"channel": ["c"]}]},
                {**good, "alerts": [{**DISTRESS, "rule": {"x": 1}}]},
                {**good, "channels": [{"channel": f"c{i}"} for i in range(10_000)]}):
        assert not b.feed("serd/desk-1/state", bad)
    assert b.invalid == 6
    assert not b.devices


@pytest.mark.broker
def test_listen_started_during_an_alert_shows_it(mosquitto: Any, listens: list[Listen]) -> None:
    _retain(mosquitto, [
        ("serd/desk-1/status", json.dumps(events.status_event(
            "desk-1", "online", "connected", version="0.1.0"))),
        ("serd/desk-1/state", json.dumps(state_payload([DISTRESS])))])
    table = Listen("--host", mosquitto.host, "--port", str(mosquitto.port))
    js = Listen("--host", mosquitto.host, "--port", str(mosquitto.port), "--json",
                "--count", "2")
    listens += [table, js]
    table.wait_for("ACTIVE distress angry since")
    recs = [json.loads(line) for line in js.lines()]
    assert sorted(r["topic"] for r in recs) == ["serd/desk-1/state", "serd/desk-1/status"]


@pytest.mark.broker
def test_a_forgotten_device_leaves_a_running_listen(mosquitto: Any, listens: list[Listen]) -> None:
    """Was: `serd forget` cleared the retained topics, but a running `serd listen` kept
    showing the device (for an hour, until it aged out)."""
    _retain(mosquitto, [(f"serd/{d}/status", json.dumps(events.status_event(
        d, "offline", "shutdown", version="0.1.0"))) for d in ("old-replay", "desk-9")])
    lst = Listen("--host", mosquitto.host, "--port", str(mosquitto.port))
    listens.append(lst)
    lst.wait_for("2 devices")
    _retain(mosquitto, [("serd/old-replay/status", b"")])  # what serd forget publishes
    lst.wait_for("1 devices")
    assert not any("old-replay" in line for line in lst.out[-4:])
    b = Board("serd")
    b.feed("serd/x/status", {"state": "offline"})
    assert not b.forget("serd/x/state") and b.forget("serd/x/status") and not b.devices


def test_the_table_says_whose_voice_a_channel_carries() -> None:
    """A channel named for its wiring (``right``) shows its declared role; one named for
    its role (``customer``) is not repeated."""
    b = Board("serd")
    b.feed("serd/desk-1/status", events.status_event("desk-1", "online", "connected",
                                                     version="0.1.0"))
    assert b.feed("serd/desk-1/emotion", with_seq({**emotion("right", "angry"),
                                                   "role": "customer"}, 1))
    assert b.feed("serd/desk-1/emotion", with_seq({**emotion("customer", "sad"),
                                                   "role": "customer"}, 2))
    rows = b.table(now=time.time()).splitlines()
    assert any(" right:customer " in r and "angry" in r for r in rows)
    assert any(" customer " in r and ":customer" not in r for r in rows)
