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
from typing import Any

import pytest
import yaml
from fixtures_broker import wait_until

from serd import events
from serd.listen import Board
from serd.publisher import MqttPublisher, MqttSettings

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def emotion(channel: str, label: str | None, t: float = T0, type_: str = "window") -> dict:
    return events.emotion_event("desk-1", events.EmotionResult(
        type_, channel, t, t + 2.0, label, 0.8, {"angry": 0.8, "neutral": 0.2}, "m"),
        now_epoch_seconds=t + 2.0)


def alert(channel: str, message: str) -> dict:
    state, _, text = message.partition(": ")
    return events.alert_event("desk-1", events.AlertResult(
        channel, "sustained_distress", "angry", T0, T0 + 12, 0.8, "m", text, state=state))


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
