
"""Security: TLS, credentials, broker ACLs, and no audio ever leaving the pipeline.

* MQTT over TLS against a real Mosquitto TLS listener with a CA the test makes (openssl):
  the broker's certificate and host name are verified by default; a certificate for
  another host name or from another CA is refused; ``tls_insecure`` skips only the
  host-name check, only when configured (and says so in the log); mutual TLS works.
* User name and password, the password from a file or an environment variable (never
  from config.yaml, and never in logs or ``--check-config`` output).
* Mosquitto ACLs: a subscriber without read permission receives nothing; a client
  cannot publish into a device's topics without write permission.
* Audio never leaves: while speech runs through the daemon, nothing audio-sized reaches
  the broker, the spool or the log; statically, only the in-memory pipeline modules
  handle sample arrays, and nothing in serd writes audio anywhere.  There is no option
  to record or publish audio; the test of the config tree fails if one appears, so that
  it comes with its own test that it is off by default.
* systemd sandbox: exposure <= 2.0 is checked by
  tests/test_systemd_unit.py::test_exposure_score (``systemd-analyze security``).

The daemon runs in-process (the real Daemon, publisher, spool and paho client) from a
YAML-shaped config, so every key goes the way a device's config.yaml does.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from test_faults import InProcess, Speech

from serd.config import Config, parse
from serd.model import Classifier
from serd.spool import Spool
from serd.validate import ConfigError
from serd_testkit import Broker, wait_until

ROOT = Path(__file__).resolve().parent.parent
SERD = ROOT / "serd"
DEVICE = "sec-desk"
CLIPS = ["1001_IEO_ANG_HI.flac", "1091_TIE_SAD_XX.flac", "1001_IEO_HAP_HI.flac"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


# -- a test PKI ---------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr


class Pki:
    """A throwaway CA (and a second, unrelated one) issuing server and client certs."""

    def __init__(self, d: Path) -> None:
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca = self._ca("ca")
        self.other_ca = self._ca("other-ca")

    def _ca(self, name: str) -> Path:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN=serd test {name}", cwd=self.d)
        return self.d / f"{name}.pem"

    def issue(self, name: str, san: str, *, ca: str = "ca", client: bool = False,
              ) -> tuple[Path, Path]:
        """A certificate and key signed by ``ca`` with subjectAltName ``san``."""
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=self.d)
        usage = "clientAuth" if client else "serverAuth"
        (self.d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=self.d)
        return self.d / f"{name}.pem", self.d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_listener(cert: Path, key: Path, *, cafile: Path | None = None,
                 require_client_cert: bool = False) -> str:
    lines = [f"certfile {cert}", f"keyfile {key}"]
    if cafile is not None:
        lines.append(f"cafile {cafile}")
    if require_client_cert:
        lines.append("require_certificate true")
    return "\n".join(lines)


# -- the daemon, configured the way config.yaml does it -------------------------------------


def daemon_cfg(tmp_path: Path, model_path: Path, mqtt_doc: dict[str, Any],
               name: str = "state") -> Config:
    return parse({
        "device_id": DEVICE, "state_dir": str(tmp_path / name),
        "health_interval_seconds": 1.0, "model": {"path": str(model_path)},
        "mqtt": {"reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5,
                 "connect_timeout_seconds": 3.0, **mqtt_doc},
    })


def run_daemon(made: list[InProcess], cfg: Config, data_dir: Path,
               classifier: Classifier) -> InProcess:
    d = InProcess(cfg, Speech([data_dir / c for c in CLIPS]), classifier)
    made.append(d)
    return d.start()


class Collector:
    """A paho client (optionally with credentials) collecting what it is sent."""

    def __init__(self, broker: Broker, topic: str, *, username: str | None = None,
                 password: str | None = None, ca: Path | None = None,
                 host: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.granted: list[Any] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"col-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.topic = topic
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe(topic, qos=1) if not rc.is_failure else None)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host or broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(15), f"no SUBACK for {topic}"

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self.granted = list(rcs)
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def snapshot(self) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return list(self.messages)

    def seqs(self, suffix: str = "emotion") -> set[int]:
        return {json.loads(m.payload)["seq"] for m in self.snapshot()
                if m.topic.endswith("/" + suffix)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collectors() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(*args: Any, **kwargs: Any) -> Collector:
        c = Collector(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def delivered_everything(d: InProcess, col: Collector, timeout: float = 30.0) -> int:
    assert wait_until(lambda: d.events >= 5, 60), "no events"
    d.go_quiet()
    produced = d.events
    want = set(range(1, produced + 1))
    assert wait_until(lambda: want <= col.seqs(), timeout), \
        f"missing {sorted(want - col.seqs())[:20]}"
    return produced


# -- TLS ------------------------------------------------------------------------------------


@pytest.mark.broker
def test_tls_verified_by_default_and_the_right_broker_gets_everything(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Broker],
    collectors: Callable[..., Collector], model_path: Path, classifier: Classifier,
    data_dir: Path, running: list[InProcess], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serd")
    cert, key = pki.issue("broker-localhost", "DNS:localhost")
    broker = mosquitto_factory(extra_config=tls_listener(cert, key))
    col = collectors(broker, f"serd/{DEVICE}/#", ca=pki.ca, host="localhost")
    d = run_daemon(running, daemon_cfg(tmp_path, model_path, {
        "host": "localhost", "port": broker.port, "tls": True, "ca_file": str(pki.ca)}),
        data_dir, classifier)
    assert wait_until(lambda: d.stats().connected, 20), "TLS connection failed"
    produced = delivered_everything(d, col)
    d.stop()
    assert not any("tls_insecure" in r.getMessage() for r in caplog.records)
    print(f"TLS: {produced} events delivered over a verified connection")


@pytest.mark.broker
@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong-host-name", "TLS certificate rejected"),
        ("other-ca", "TLS certificate rejected"),
        ("plain-to-tls", "ended before the broker accepted it"),
    ],
)
def test_tls_refuses_the_wrong_broker(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Broker], model_path: Path,
    classifier: Classifier, data_dir: Path, running: list[InProcess],
    caplog: pytest.LogCaptureFixture, case: str, expect: str,
) -> None:
    """Nothing is sent to a broker whose certificate does not prove it is the one
    configured; events wait in the spool."""
    caplog.set_level(logging.DEBUG, logger="serd")
    if case == "wrong-host-name":
        cert, key = pki.issue("broker-elsewhere", "DNS:broker.example.org")
    elif case == "other-ca":
        cert, key = pki.issue("broker-forged", "DNS:localhost", ca="other-ca")
    else:
        cert, key = pki.issue("broker-plain", "DNS:localhost")
    broker = mosquitto_factory(extra_config=tls_listener(cert, key))
    mqtt_doc: dict[str, Any] = {"host": "localhost", "port": broker.port, "tls": True,
                                "ca_file": str(pki.ca)}
    if case == "plain-to-tls":
        mqtt_doc = {"host": "localhost", "port": broker.port}  # tls: false, to a TLS port
    d = run_daemon(running, daemon_cfg(tmp_path, model_path, mqtt_doc), data_dir, classifier)
    assert wait_until(lambda: sum(expect in r.getMessage() for r in caplog.records) >= 2, 20)
    assert wait_until(lambda: d.events >= 3, 30)
    stats = d.stats()
    d.stop()
    assert stats.connects == 0
    assert stats.sent == 0
    assert stats.spool_depth >= 3  # kept for the right broker
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    ours = [r for r in errors if expect in r.getMessage()]
    assert len(ours) == 1, "one line per problem, not one per attempt"
    assert ours[0].exc_info is None
    # paho's own error lines (e.g. "failed to receive on socket") are not repeated either.
    assert len(errors) <= 2, [r.getMessage() for r in errors]


@pytest.mark.broker
def test_tls_insecure_skips_only_the_host_name_and_only_when_configured(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Broker], model_path: Path,
    classifier: Classifier, data_dir: Path, running: list[InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serd")
    cert, key = pki.issue("broker-ip-only", "DNS:broker.example.org")
    broker = mosquitto_factory(extra_config=tls_listener(cert, key))
    forged, forged_key = pki.issue("broker-forged2", "DNS:localhost", ca="other-ca")
    forged_broker = mosquitto_factory(extra_config=tls_listener(forged, forged_key))
    insecure = {"host": "localhost", "tls": True, "ca_file": str(pki.ca), "tls_insecure": True}
    d = run_daemon(running, daemon_cfg(tmp_path, model_path, {**insecure, "port": broker.port}),
                   data_dir, classifier)
    assert wait_until(lambda: d.stats().connected, 20)
    d.stop()
    assert any("host name is NOT verified" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    # The chain is still verified: a certificate from another CA is refused anyway.
    caplog.clear()
    d2 = run_daemon(running, daemon_cfg(
        tmp_path, model_path, {**insecure, "port": forged_broker.port}, "state2"),
        data_dir, classifier)
    assert wait_until(lambda: any("TLS certificate rejected" in r.getMessage()
                                  for r in caplog.records), 20)
    assert not d2.stats().connected
    d2.stop()
    # And it is off unless configured.
    assert Config().mqtt.tls_insecure is False
    with pytest.raises(ConfigError, match="needs tls"):
        parse({"mqtt": {"host": "x", "tls_insecure": True}})


@pytest.mark.broker
def test_mutual_tls_client_certificate(
    tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., Broker], model_path: Path,
    classifier: Classifier, data_dir: Path, running: list[InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="serd")
    cert, key = pki.issue("broker-mtls", "DNS:localhost")
    ccert, ckey = pki.issue("client-desk", "DNS:sec-desk", client=True)
    broker = mosquitto_factory(extra_config=tls_listener(cert, key, cafile=pki.ca,
                                                         require_client_cert=True))
    base = {"host": "localhost", "port": broker.port, "tls": True, "ca_file": str(pki.ca)}
    without = run_daemon(running, daemon_cfg(tmp_path, model_path, base, "s1"), data_dir,
                         classifier)
    assert wait_until(lambda: any("cannot connect" in r.getMessage() or "TLS" in r.getMessage()
                                  for r in caplog.records if r.levelno >= logging.ERROR), 20)
    assert not without.stats().connected
    without.stop()
    with_cert = run_daemon(running, daemon_cfg(
        tmp_path, model_path, {**base, "cert_file": str(ccert), "key_file": str(ckey)}, "s2"),
        data_dir, classifier)
    assert wait_until(lambda: with_cert.stats().connected, 20)
    with_cert.stop()


# -- user name and password -----------------------------------------------------------------


PASSWORD = "c0rrect-h0rse-" + uuid.uuid4().hex[:8]


@pytest.fixture
def auth_broker(tmp_path: Path, mosquitto_factory: Callable[..., Broker]) -> Broker:
    """allow_anonymous false; users: desk (writes serd/sec-desk/#), dashboard (reads
    serd/#), intruder (no rights)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwd = tmp_path / "passwd"
    for i, (user, pw) in enumerate([("desk", PASSWORD), ("dashboard", "dash-pw"),
                                    ("intruder", "intruder-pw")]):
        flags = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(passwd), user, pw], check=True,
                       capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text(
        f"user desk\ntopic write serd/{DEVICE}/#\n\n"
        "user dashboard\ntopic read serd/#\n\n"
        "user intruder\ntopic readwrite intruder/#\n"
    )
    return mosquitto_factory(allow_anonymous=False,
                             extra_config=f"password_file {passwd}\nacl_file {acl}")


@pytest.mark.broker
def test_password_from_file_or_environment_and_acl_keeps_others_out(
    tmp_path: Path, auth_broker: Broker, collectors: Callable[..., Collector],
    model_path: Path, classifier: Classifier, data_dir: Path, running: list[InProcess],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # paho's own debug log included
    dashboard = collectors(auth_broker, "serd/#", username="dashboard", password="dash-pw")
    intruder = collectors(auth_broker, "serd/#", username="intruder", password="intruder-pw")
    pw_file = tmp_path / "mqtt-password"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    d = run_daemon(running, daemon_cfg(tmp_path, model_path, {
        "host": auth_broker.host, "port": auth_broker.port, "username": "desk",
        "password_file": str(pw_file)}), data_dir, classifier)
    assert wait_until(lambda: d.stats().connected, 20)
    produced = delivered_everything(d, dashboard)
    d.stop()

    monkeypatch.setenv("SERD_TEST_MQTT_PW", PASSWORD)
    d2 = run_daemon(running, daemon_cfg(tmp_path, model_path, {
        "host": auth_broker.host, "port": auth_broker.port, "username": "desk",
        "password_env": "SERD_TEST_MQTT_PW"}), data_dir, classifier)
    assert wait_until(lambda: d2.stats().connected, 20)
    d2.go_quiet()
    total = d2.events + produced
    assert wait_until(lambda: set(range(1, total + 1)) <= dashboard.seqs(), 30)
    d2.stop()
    # The intruder subscribed (the broker does not say no) but got none of it.
    assert intruder.snapshot() == [], [m.topic for m in intruder.snapshot()][:5]
    # The password is not in any log line, paho's debug output included.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PASSWORD not in logged
    print(f"auth: {total} events to the dashboard, 0 to the intruder")


@pytest.mark.broker
def test_wrong_or_missing_credentials_are_refused(
    tmp_path: Path, auth_broker: Broker, model_path: Path, classifier: Classifier,
    data_dir: Path, running: list[InProcess], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serd")
    monkeypatch.setenv("SERD_TEST_MQTT_PW", "wrong")
    for i, mqtt_doc in enumerate([
        {"username": "desk", "password_env": "SERD_TEST_MQTT_PW"},
        {},  # anonymous
    ]):
        caplog.clear()
        d = run_daemon(running, daemon_cfg(tmp_path, model_path, {
            "host": auth_broker.host, "port": auth_broker.port, **mqtt_doc}, f"s{i}"),
            data_dir, classifier)
        assert wait_until(lambda: any("refused the connection" in r.getMessage()
                                      for r in caplog.records), 20)
        assert wait_until(lambda d=d: d.events >= 2, 30)
        assert not d.stats().connected
        assert d.stats().sent == 0
        d.stop()


@pytest.mark.broker
def test_a_device_cannot_publish_outside_its_acl(
    tmp_path: Path, auth_broker: Broker, collectors: Callable[..., Collector],
    model_path: Path, classifier: Classifier, data_dir: Path, running: list[InProcess],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """User ``desk`` may write only serd/sec-desk/#: posing as another device fails, and
    the refusals (MQTT 5 PUBACK 'not authorized') are counted, not retried forever."""
    caplog.set_level(logging.INFO, logger="serd")
    dashboard = collectors(auth_broker, "serd/#", username="dashboard", password="dash-pw")
    monkeypatch.setenv("SERD_TEST_MQTT_PW", PASSWORD)
    cfg = parse({
        "device_id": "other-desk", "state_dir": str(tmp_path / "state"),
        "model": {"path": str(model_path)},
        "mqtt": {"host": auth_broker.host, "port": auth_broker.port, "username": "desk",
                 "password_env": "SERD_TEST_MQTT_PW", "reconnect_min_seconds": 0.1,
                 "reconnect_max_seconds": 0.5},
    })
    d = run_daemon(running, cfg, data_dir, classifier)
    assert wait_until(lambda: d.stats().rejected >= 3, 30)
    d.stop()
    assert [m for m in dashboard.snapshot() if "/other-desk/" in m.topic] == []
    refusals = [r for r in caplog.records if "refused an event" in r.getMessage()]
    assert len([r for r in refusals if r.levelno >= logging.ERROR]) == 1


def test_the_password_cannot_live_in_config_yaml_nor_leak_from_check_config(
    tmp_path: Path, model_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.password: unknown key"):
        parse({"mqtt": {"host": "b", "username": "u", "password": "hunter2"}})
    pw_file = tmp_path / "pw"
    pw_file.write_text("s3cret-value\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": {"path": str(model_path)}, "mqtt": {
        "host": "b", "username": "u", "password_file": str(pw_file)}}))
    r = subprocess.run([sys.executable, "-m", "serd.cli", "--config", str(cfg),
                        "--check-config"], capture_output=True, text=True, env=ENV,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "s3cret-value" not in r.stdout + r.stderr
    assert str(pw_file) in r.stdout


# -- audio never leaves -----------------------------------------------------------------------

# A 0.1 s clip of 16 kHz int16 is 3.2 kB; an emotion event is ~0.4 kB, health ~1 kB.
MAX_PAYLOAD = 3000
MAX_ARRAY = 64  # probs have one entry per label; no payload carries a long list


def _audio_like(obj: Any) -> str | None:
    """Why ``obj`` (parsed JSON) could be carrying audio, or None."""
    if isinstance(obj, list):
        if len(obj) > MAX_ARRAY:
            return f"a list of {len(obj)} items"
        return next((w for w in map(_audio_like, obj) if w), None)
    if isinstance(obj, dict):
        if len(obj) > MAX_ARRAY:
            return f"an object with {len(obj)} keys"
        return next((w for w in map(_audio_like, obj.values()) if w), None)
    if isinstance(obj, str) and len(obj) > 256:
        return f"a {len(obj)}-character string"
    return None


@pytest.mark.broker
def test_nothing_audio_sized_reaches_the_broker_the_spool_or_the_log(
    tmp_path: Path, mosquitto: Broker, collectors: Callable[..., Collector],
    model_path: Path, classifier: Classifier, data_dir: Path, running: list[InProcess],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    everything = collectors(mosquitto, "#")  # every topic on the broker
    spooled: list[str] = []
    real_put = Spool.put

    def recording_put(self: Spool, stream: str, payload: Any, qos: int = 1) -> Any:
        spooled.append(json.dumps(dict(payload)))
        return real_put(self, stream, payload, qos)

    monkeypatch.setattr(Spool, "put", recording_put)
    d = run_daemon(running, daemon_cfg(tmp_path, model_path, {
        "host": mosquitto.host, "port": mosquitto.port}), data_dir, classifier)
    assert wait_until(lambda: d.stats().connected, 20)
    assert wait_until(lambda: d.daemon.counters.audio_seconds >= 20, 60)
    produced = delivered_everything(d, everything)
    audio_seconds = d.daemon.counters.audio_seconds
    d.stop()
    msgs = everything.snapshot()
    assert len(msgs) >= produced
    for m in msgs:
        assert len(m.payload) <= MAX_PAYLOAD, (m.topic, len(m.payload))
        why = _audio_like(json.loads(m.payload))
        assert why is None, f"{m.topic} carries {why}"
    assert len(spooled) == produced
    for text in spooled:
        assert len(text) <= MAX_PAYLOAD
        assert _audio_like(json.loads(text)) is None
    # What stays on disk: only the spool, and small (20 s of audio alone is 640 kB).
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    # The spool, the state-dir lock (serd.lock: a pid, serd.statedir) and each line's
    # voice reference (serd.linestate: per channel a count and 512 statistics averaged
    # over its windows, a fixed size whatever the audio, so no samples fit in it).
    assert {p.name.split("-")[0] for p in files} <= {
        "spool.sqlite3", "serd.lock", "line", "line-references.json"}, files
    assert sum(p.stat().st_size for p in files) < 200_000
    lines = tmp_path / "state" / "line-references.json"
    if lines.is_file():
        saved = json.loads(lines.read_text())
        assert set(saved) == {"version", "head_sha256", "channels"}
        for entry in saved["channels"].values():
            assert set(entry) == {"count", "mean"} and len(entry["mean"]) == 512
    db = sqlite3.connect(str(tmp_path / "state" / "spool.sqlite3"))
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} \
        <= {"events", "counters", "sqlite_sequence"}
    db.close()
    for r in caplog.records:
        assert len(r.getMessage()) < 2000, r.getMessage()[:200]
    print(f"{audio_seconds:.0f} s of audio in, {len(msgs)} messages out "
          f"(largest {max(len(m.payload) for m in msgs)} bytes)")


# -- statically -------------------------------------------------------------------------------

# The in-memory audio path: these may hold sample arrays.
AUDIO_MODULES = {"capture", "decode", "replay", "pipeline", "features", "normalise", "gate",
                 "speechcheck", "windows", "model", "voice", "decisions", "crosstalk"}
# They orchestrate the path (blocks pass through them) but send and store nothing raw.
# preflight (--check-config --probe) reads one block from the microphone and drops it;
# devices (serd devices) lists the input devices.
ORCHESTRATORS = {"daemon", "cli", "once", "preflight", "devices"}
ARRAY_LIBS = {"numpy", "soundfile", "sounddevice", "soxr", "wave", "scipy", "librosa"}
WRITERS = {"tobytes", "tofile", "save", "savez", "savez_compressed", "savetxt", "write"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(SERD.rglob("*.py")):
        name = ".".join(p.relative_to(SERD).with_suffix("").parts)
        out[name] = ast.parse(p.read_text(encoding="utf-8"), str(p))
    return out


def _imports(tree: ast.Module) -> set[str]:
    mods: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            mods |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            mods.add(n.module)
    return mods


def test_only_the_audio_path_touches_sample_arrays() -> None:
    """Modules that send, store, log or serve (publisher, spool, events, mqttclient,
    listen, dashboard, discovery, alerts, notify, ...) import no array or audio library
    and none of the audio modules: a sample array has no way in."""
    for name, tree in _modules().items():
        base = name.split(".")[0]
        if base in AUDIO_MODULES or base in ORCHESTRATORS:
            continue
        imported = _imports(tree)
        libs = {m for m in imported if m.split(".")[0] in ARRAY_LIBS}
        audio = {m for m in imported if m.startswith("serd.")
                 and m.split(".")[1] in AUDIO_MODULES - {"decisions"}}
        if base == "config":  # settings dataclasses only (AudioSettings, VadSettings...)
            audio = {m for m in audio if m not in ("serd.capture", "serd.gate", "serd.model")}
        assert not libs, f"serd/{name}.py imports {libs}"
        assert not audio, f"serd/{name}.py imports {audio}"


def test_nothing_in_serd_writes_audio() -> None:
    """No module writes samples anywhere: no soundfile/wave writing, no numpy save or
    tofile, no ``tobytes`` except gate.py handing 10 ms to webrtcvad in memory."""
    allowed = {("gate", "tobytes")}  # webrtcvad.Vad.is_speech(bytes, rate): in memory
    for name, tree in _modules().items():
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                attr = n.func.attr
                owner = n.func.value
                owner_name = owner.id if isinstance(owner, ast.Name) else ""
                if attr in ("tobytes", "tofile", "save", "savez", "savez_compressed",
                            "savetxt") and (name, attr) not in allowed:
                    pytest.fail(f"serd/{name}.py calls .{attr}() (line {n.lineno})")
                if attr == "write" and owner_name in ("sf", "soundfile", "wave", "wavfile"):
                    pytest.fail(f"serd/{name}.py writes audio (line {n.lineno})")
                if attr in ("SoundFile", "open") and owner_name in ("sf", "soundfile", "wave"):
                    modes = list(n.args[1:2]) + [k.value for k in n.keywords
                                                         if k.arg == "mode"]
                    for m in modes:
                        if isinstance(m, ast.Constant) and "r" not in str(m.value):
                            pytest.fail(f"serd/{name}.py opens audio for writing "
                                        f"(line {n.lineno})")
    assert WRITERS  # the names above, for the reader


def test_no_option_records_or_publishes_audio() -> None:
    """There is no debug option to keep audio today.  If one is added, this fails: give
    it a test that it is off by default and reaches neither broker nor spool unless on."""
    import dataclasses  # noqa: PLC0415
    import typing  # noqa: PLC0415

    words = ("record", "dump", "save", "keep_audio", "raw", "pcm", "wav", "samples",
             "debug")

    def keys(cls: type, prefix: str = "") -> Iterator[str]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                yield from keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            else:
                yield prefix + f.name

    suspicious = [k for k in keys(Config) if any(w in k.lower() for w in words)]
    assert suspicious == []
    # The event schemas allow no extra fields, so nothing can ride along with an event.
    for name in ("event", "alert", "status"):
        schema = json.loads((SERD / "schema" / f"{name}.schema.json").read_text())
        assert schema["additionalProperties"] is False, name


def test_systemd_exposure_is_checked_elsewhere() -> None:
    """``systemd-analyze security`` exposure <= 2.0 lives in tests/test_systemd_unit.py."""
    text = (ROOT / "tests" / "test_systemd_unit.py").read_text()
    assert "def test_exposure_score" in text
    assert "MAX_EXPOSURE = 2.0" in text

