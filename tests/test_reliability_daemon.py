"""Reliability of the daemon itself (issue 24 findings 1-4, 10-12; issue 25 point 4).

Each test injects the real fault: twin device ids and an ACL on a real Mosquitto; a
state directory that is a plain file, a dangling symlink, a read-only tmpfs mount, an
immutable folder (``chattr +i``) or one root may not write (``setpriv`` drops
CAP_DAC_OVERRIDE); a damaged spool file; SIGHUP and SIGUSR1 sent to a real process; a
wall clock stepped back an hour.  The daemon runs as a real process (``python -m
serd.cli``) where exit codes and signals matter, in-process otherwise.  Rows go to
$SERD_RELIABILITY_LOG like tests/test_faults.py's (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_faults import (  # noqa: F401  (procs and speech are fixtures)
    CLIPS,
    DEVICE,
    ENV,
    InProcess,
    Proc,
    Speech,
    assert_all_arrive,
    emotion_seqs,
    make_cfg,
    procs,
    record,
    speech,
    spool_integrity,
    statuses,
    write_config,
)

from serd import publisher as publisher_mod
from serd.alerts import AlertEngine, AlertRule, AlertSettings
from serd.config import (
    DEVICE_ID_PATTERN,
    EXIT_CONFIG,
    EXIT_STATE,
    EXIT_TEMPFAIL,
    default_device_id,
    parse,
)
from serd.daemon import Daemon
from serd.decisions import Decision
from serd.model import Classifier
from serd.mqttsettings import MqttSettings
from serd.publisher import MqttPublisher
from serd.spool import SPOOL_FILENAME, Spool
from serd_testkit import Broker, wait_until

CLI = [sys.executable, "-m", "serd.cli"]


def _cli(args: list[str], timeout: float = 120.0,
         prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *CLI, *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, check=False)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _stdout_doc(tmp_path: Path, model_path: Path, **extra: Any) -> dict[str, Any]:
    """A daemon config without a broker (events to stdout): what start-up faults need."""
    return {"device_id": DEVICE, "state_dir": str(tmp_path / "state"),
            "model": {"path": str(model_path)}, "log_level": "warning", **extra}


# -- finding 4: one device_id rule, checked at load ---------------------------------------


BAD_IDS = ["desk!7", "désk-7", "d" * 65, ".hidden", "desk:7", "-desk", "desk 7"]


def test_bad_device_id_is_one_line_and_exit_78_at_load(tmp_path: Path, model_path: Path) -> None:
    """Every id events.py would refuse is refused by --check-config and by the daemon's
    start (the unit's ExecStart), in one line, exit 78 (no restart loop)."""
    for i, bad in enumerate(BAD_IDS):
        cfg = write_config(tmp_path / f"c{i}.yaml", {**_stdout_doc(tmp_path, model_path),
                                                     "device_id": bad})
        for args in (["--config", str(cfg), "--check-config"], ["--config", str(cfg)]):
            done = _cli(args, timeout=60)
            assert done.returncode == EXIT_CONFIG, (bad, args, done.stderr[-2000:])
            lines = _lines(done.stderr)
            assert len(lines) == 1, (bad, lines)
            assert "device_id" in lines[0] and "Traceback" not in done.stderr
    for good in ("desk-7", "a", "D" * 64, "pi.kitchen_2"):
        assert parse({"device_id": good}).resolved_device_id == good
    record("device_id that events.py refuses (desk!7, désk-7, 65 chars, .hidden, desk:7, "
           "-desk, 'desk 7')", produced=0, received=0, repetitions=len(BAD_IDS) * 2,
           behaviour="one line naming device_id and the rule, exit 78, from --check-config "
           "and from the daemon's start")


# -- finding 1: twin device ids ------------------------------------------------------------


def test_default_device_id_is_unique_per_machine_and_stable() -> None:
    rule = re.compile(DEVICE_ID_PATTERN)
    a = default_device_id("raspberrypi", "0" * 31 + "1")
    b = default_device_id("raspberrypi", "0" * 31 + "2")
    assert a != b and a.startswith("raspberrypi-") and b.startswith("raspberrypi-")
    assert a == default_device_id("raspberrypi.local", "0" * 31 + "1")
    for host in ("désk!7.lan", "-x", "", "a" * 200, "kitchen pi"):
        got = default_device_id(host, "abc")
        assert rule.fullmatch(got), (host, got)
    # The real machine: two separate processes (two restarts) agree.
    code = "from serd.config import Config; print(Config().resolved_device_id)"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=ENV).stdout.strip() for _ in range(2)}
    assert len(ids) == 1
    (mine,) = ids
    assert rule.fullmatch(mine), mine
    if Path("/etc/machine-id").is_file():
        assert re.fullmatch(r".+-[0-9a-f]{6}", mine), mine


def test_two_daemons_on_one_state_dir_second_stops_in_one_line(
    tmp_path: Path, model_path: Path, procs: list[Proc],  # noqa: F811
) -> None:
    """A manual serd beside the service: the second one says who holds the state dir."""
    cfg = write_config(tmp_path / "c.yaml", _stdout_doc(tmp_path, model_path))
    first = Proc(["--config", str(cfg)], tmp_path / "first.log")
    procs.append(first)
    lock = tmp_path / "state" / "serd.lock"
    assert wait_until(lambda: lock.exists() and lock.read_text().strip() ==
                      str(first.proc.pid), 60), first.output()[-2000:]
    tries = 3
    for _ in range(tries):
        second = _cli(["--config", str(cfg)], timeout=60)
        assert second.returncode == EXIT_TEMPFAIL, second.stderr[-2000:]
        lines = [ln for ln in _lines(second.stderr) if "WARNING" not in ln]
        assert len(lines) == 1, lines
        assert f"another serd (pid {first.proc.pid})" in lines[0], lines
    assert first.proc.poll() is None, "the first daemon must not be disturbed"
    first.kill9()  # the kernel drops a dead holder's flock: no stale lock
    third = Proc(["--config", str(cfg)], tmp_path / "third.log")
    procs.append(third)
    assert wait_until(lambda: lock.read_text().strip() == str(third.proc.pid), 60)
    third.wait_for('"online"')  # running (the stdout publisher printed its status)
    assert third.terminate() == 0, third.output()[-2000:]
    record("two daemons on one state dir (a manual serd beside the service), then the first "
           "killed -9", produced=0, received=0, repetitions=tries,
           behaviour="second: one line naming the first's pid, exit 75; after kill -9 of "
           "the first, a new one starts (no stale lock)")


def test_the_service_waits_for_a_held_state_dir_instead_of_exhausting_its_start_limit(
    tmp_path: Path, model_path: Path, procs: list[Proc],  # noqa: F811
) -> None:
    """Under systemd (NOTIFY_SOCKET set), exit 75 would be restarted every RestartSec
    until StartLimitBurst left the unit failed for good while a manual serd held the
    state directory.  The service waits instead, extends its start timeout while it does,
    and starts as soon as the manual run ends."""
    import socket  # noqa: PLC0415

    cfg = write_config(tmp_path / "c.yaml", _stdout_doc(tmp_path, model_path))
    manual = Proc(["--config", str(cfg)], tmp_path / "manual.log")
    procs.append(manual)
    lock = tmp_path / "state" / "serd.lock"
    assert wait_until(lambda: lock.exists() and lock.read_text().strip() ==
                      str(manual.proc.pid), 60), manual.output()[-2000:]
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.5)
        service = Proc(["--config", str(cfg)], tmp_path / "service.log",
                       env={**ENV, "NOTIFY_SOCKET": str(sock_path)})
        procs.append(service)
        got: list[str] = []

        def drain() -> str:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(4096).decode())
            return "\n".join(got)

        assert wait_until(lambda: "EXTEND_TIMEOUT_USEC=" in drain(), 60), service.output()
        time.sleep(5)  # a few polls: still waiting, still one line
        assert service.proc.poll() is None, service.output()[-2000:]
        waiting = [ln for ln in _lines(service.output()) if "waiting for it to stop" in ln]
        assert len(waiting) == 1, service.output()[-2000:]
        assert f"pid {manual.proc.pid}" in waiting[0]
        assert manual.terminate() == 0
        assert wait_until(lambda: lock.read_text().strip() == str(service.proc.pid), 60)
        service.wait_for('"online"')
        assert wait_until(lambda: "READY=1" in drain(), 60), "\n".join(got)
    assert service.terminate() == 0, service.output()[-2000:]


def _publisher(broker: Broker, state: Path, device: str = DEVICE, **mqtt: Any) -> MqttPublisher:
    settings = MqttSettings(host=broker.host, port=broker.port, reconnect_min_seconds=0.1,
                            reconnect_max_seconds=0.5, keepalive_seconds=5, **mqtt)
    pub = MqttPublisher(settings, device, state)
    pub.start()
    return pub


def _event(i: int) -> dict[str, Any]:
    return {"schema": 1, "type": "emotion", "device_id": DEVICE, "seq": None, "i": i}


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_session_taken_over_is_logged_once_and_counted(
    tmp_path: Path, mosquitto: Broker, protocol: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Two devices with one device_id (so one client id), each with its own spool."""
    caplog.set_level(logging.DEBUG, logger="serd")
    a = _publisher(mosquitto, tmp_path / "a", protocol=protocol)
    b = _publisher(mosquitto, tmp_path / "b", protocol=protocol)
    try:
        t0 = time.monotonic()
        for i in range(40):
            a.publish_event("emotion", _event(i))
            b.publish_event("emotion", _event(i))
            time.sleep(0.1)
        assert wait_until(lambda: a.stats().session_taken_over + b.stats().session_taken_over
                          >= 2, 30)
        flapping = time.monotonic() - t0
    finally:
        b.close(timeout_seconds=1.0)
    # The twin gone, the survivor delivers everything it spooled.
    assert wait_until(lambda: a.stats().spool_depth == 0 and a.stats().connected, 30)
    stats_a = a.stats()
    a.close()
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and "taken over" in r.getMessage()]
    assert 1 <= len(errors) <= 2, errors  # once per publisher at most
    assert all(f"client id 'serd-{DEVICE}'" in e for e in errors)
    lost_lines = [r for r in caplog.records if "lost connection" in r.getMessage()]
    assert len(lost_lines) <= 2 * 2, len(lost_lines)  # not one per flap
    taken = stats_a.session_taken_over
    record(f"two devices with one device_id on one broker (MQTT {protocol})", produced=40,
           received=40 if stats_a.spool_depth == 0 else 40 - stats_a.spool_depth,
           repetitions=1, taken_over=taken, seconds=round(flapping, 1),
           behaviour="'MQTT session taken over' logged once per device, counted in health "
           "(session_taken_over); each kept its events in its spool; the survivor delivered "
           "all of them")


# -- finding 2: refused publishes ------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_refused_publishes_stay_in_the_spool_logged_once_and_counted(
    tmp_path: Path, mosquitto_factory: Any, subscriber: Any, protocol: str,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mosquitto's ACL lets anonymous clients read serd/# but not write it.  Mosquitto
    2.0.11 answers MQTT 5 with PUBACK 0x87 and 3.1.1 with a plain PUBACK (checked)."""
    caplog.set_level(logging.INFO, logger="serd")
    monkeypatch.setattr(publisher_mod, "_ECHO_TIMEOUT_SECONDS", 1.0)
    acl = tmp_path / "acl"
    acl.write_text("topic read serd/#\n")
    broker = mosquitto_factory(extra_config=f"acl_file {acl}")
    n = 23
    pub = _publisher(broker, tmp_path / "state", protocol=protocol)
    for i in range(n):
        pub.publish_event("emotion", _event(i))
    assert wait_until(lambda: pub.stats().refused_kept == n, 40), pub.stats()
    stats = pub.stats()
    assert stats.sent == 0 and stats.spool_depth == n and stats.rejected >= n
    pub.close(timeout_seconds=1.0)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()
                and r.levelno >= logging.ERROR]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    closing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closed")]
    assert closing == [f"closed: 0 events acknowledged by the broker; {n} undelivered kept "
                       f"in the spool ({n} of them refused by the broker)"], closing
    # The ACL fixed and the broker restarted: every kept event is delivered.
    acl.write_text("topic readwrite serd/#\n")
    broker.stop()
    broker.start()
    sub = subscriber(broker, f"serd/{DEVICE}/#")
    pub = _publisher(broker, tmp_path / "state", protocol=protocol)
    received = assert_all_arrive(sub, n, timeout=30)
    assert wait_until(lambda: pub.stats().spool_depth == 0, 30)
    pub.close()
    record(f"broker ACL refuses every publish (MQTT {protocol})", produced=n,
           received=received, repetitions=1, rejected=stats.rejected,
           behaviour="one ERROR line, counted (rejected, refused_kept), kept in the spool, "
           "closing line '0 events acknowledged'; all delivered once the ACL allowed them")


# -- finding 3: storage faults -------------------------------------------------------------


def _immutable(path: Path) -> Iterator[None]:
    path.mkdir()
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def _read_only_mount(path: Path) -> Iterator[None]:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


STATE_FAULTS = ["plain file", "dangling symlink", "read-only file system",
                "immutable folder", "no write permission"]


@pytest.mark.parametrize("fault", STATE_FAULTS)
def test_unusable_state_dir_is_one_line_and_exit_73(
    tmp_path: Path, model_path: Path, fault: str,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("these faults are made as root (mount, chattr, setpriv)")
    state = tmp_path / "state"
    prefix: list[str] = []
    cleanup: Iterator[None] | None = None
    if fault == "plain file":
        state.write_text("not a folder\n")
    elif fault == "dangling symlink":
        state.symlink_to(tmp_path / "gone")
    elif fault == "read-only file system":
        cleanup = _read_only_mount(state)
    elif fault == "immutable folder":
        cleanup = _immutable(state)
    else:
        state.mkdir(mode=0o555)
        # Root without CAP_DAC_OVERRIDE obeys the mode bits, like the service's user.
        prefix = ["setpriv", "--bounding-set", "-dac_override", "--"]
    if cleanup is not None:
        next(cleanup)
    try:
        cfg = write_config(tmp_path / "c.yaml", _stdout_doc(tmp_path, model_path))
        check = _cli(["--config", str(cfg), "--check-config"], prefix=prefix)
        assert check.returncode == EXIT_STATE, check.stderr[-2000:]
        assert [ln for ln in _lines(check.stderr) if "storage error" in ln], check.stderr
        t0 = time.monotonic()
        run = _cli(["--config", str(cfg)], prefix=prefix)
        took = time.monotonic() - t0
        assert run.returncode == EXIT_STATE, run.stderr[-2000:]
        lines = [ln for ln in _lines(run.stderr) if "WARNING" not in ln]
        assert len(lines) == 1 and "state_dir" in lines[0], lines
        assert "Traceback" not in run.stderr
    finally:
        if cleanup is not None:
            next(cleanup, None)
    record(f"state_dir unusable: {fault}", produced=0, received=0, repetitions=1,
           seconds_to_exit=round(took, 1),
           behaviour=f"one line ({lines[0].split(': ', 1)[1][:90]}...), exit 73, which "
           "RestartPreventExitStatus= does not restart; --check-config exit 73")


def _spool_with(path: Path, n: int) -> None:
    sp = Spool(path)
    for i in range(n):
        sp.put("emotion", _event(i))
    sp.close()


SPOOL_FAULTS = ["garbage", "truncated", "a folder", "dangling symlink"]


@pytest.mark.broker
@pytest.mark.parametrize("fault", SPOOL_FAULTS)
def test_damaged_spool_is_moved_aside_and_the_daemon_keeps_running(
    tmp_path: Path, model_path: Path, mosquitto: Broker, subscriber: Any,
    procs: list[Proc], fault: str,  # noqa: F811
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / SPOOL_FILENAME
    n = 300
    if fault == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    elif fault == "truncated":
        _spool_with(path, n)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 4096])
    elif fault == "a folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.sqlite3")
    doc = {**_stdout_doc(tmp_path, model_path), "log_level": "info",
           "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}
    cfg = write_config(tmp_path / "c.yaml", doc)
    check = _cli(["--config", str(cfg), "--check-config"])
    assert check.returncode == 0, check.stderr[-2000:]
    assert any(ln.startswith("serd: warning:") and "move it aside" in ln
               for ln in _lines(check.stderr)), check.stderr[-2000:]
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    p = Proc(["--config", str(cfg)], tmp_path / "daemon.log")
    procs.append(p)
    # Connected: its retained status arrived.  (Not its "connected" log line: python-
    # sounddevice points descriptor 2 at /dev/null while PortAudio initialises, and
    # that line, from paho's thread, can fall into that window.)
    sub.wait_for(lambda ms: bool(statuses(ms)), timeout=120)
    time.sleep(2.0)
    assert p.proc.poll() is None, p.output()[-3000:]
    rc = p.terminate()
    out = p.output()
    assert rc == 0, out[-3000:]
    assert "Traceback" not in out
    damaged = [ln for ln in out.splitlines() if "is damaged" in ln]
    assert len(damaged) == 1, damaged
    kept = int(re.search(r"with the (\d+) readable events", damaged[0]).group(1))  # type: ignore[union-attr]
    assert list(state.glob(f"{SPOOL_FILENAME}.damaged-*")), sorted(os.listdir(state))
    ok, depth = spool_integrity(path)
    assert ok == "ok" and depth == 0
    db = sqlite3.connect(str(path))
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    db.close()
    assert counters.get("recovered") == 1
    if kept:  # the salvaged events were delivered, their seq numbers unchanged
        got = set(emotion_seqs(sub.wait_for(
            lambda ms: len(set(emotion_seqs(ms))) >= kept, timeout=30)))
        assert len(got) == kept
    record(f"damaged spool: {fault}", produced=n if fault == "truncated" else 0,
           received=kept, repetitions=1,
           behaviour="one line, moved aside (spool.sqlite3.damaged-TIME), readable rows "
           "copied into a fresh spool and delivered, recovered counted; kept running; "
           "--check-config warns")


# -- finding 10: SIGHUP, SIGUSR1 -------------------------------------------------------------


@pytest.mark.broker
def test_sighup_and_sigusr1_do_not_stop_the_daemon(
    tmp_path: Path, model_path: Path, mosquitto: Broker, subscriber: Any, data_dir: Path,
    procs: list[Proc],  # noqa: F811
) -> None:
    device = "sig-desk"
    sub = subscriber(mosquitto, f"serd/{device}/#")
    doc = {**_stdout_doc(tmp_path, model_path), "log_level": "info",
           "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}
    cfg = write_config(tmp_path / "c.yaml", doc)
    p = Proc(["--config", str(cfg), "--once", "--publish", "--loop", "--speed", "4",
              "--device-id", device, *[str(data_dir / c) for c in CLIPS]],
             tmp_path / "daemon.log")
    procs.append(p)
    rounds = 3
    for _ in range(rounds):
        for sig in (signal.SIGHUP, signal.SIGUSR1):
            n = len(set(emotion_seqs(sub.snapshot(), device)))
            sub.wait_for(lambda ms, n=n: len(set(emotion_seqs(ms, device))) >= n + 2, 60)
            p.proc.send_signal(sig)
            time.sleep(0.3)
            assert p.proc.poll() is None, p.output()[-3000:]
    n = len(set(emotion_seqs(sub.snapshot(), device)))
    sub.wait_for(lambda ms: len(set(emotion_seqs(ms, device))) >= n + 2, 60)
    rc = p.terminate()
    out = p.output()
    assert rc == 0, out[-3000:]
    assert out.count("received SIGHUP: ignored") == rounds
    assert out.count("received SIGUSR1") == rounds
    assert ("offline", "connection_lost") not in statuses(sub.snapshot(), device)
    db = sqlite3.connect(f"file:{tmp_path / 'state' / 'replay' / device / SPOOL_FILENAME}"
                         "?mode=ro", uri=True)
    produced = int(db.execute("SELECT value FROM counters WHERE name='seq/emotion'")
                   .fetchone()[0])
    db.close()
    received = assert_all_arrive(sub, produced, device=device)
    record("SIGHUP and SIGUSR1 to a running daemon (real process)", produced=produced,
           received=received, repetitions=rounds,
           behaviour="SIGHUP: one line 'ignored', SIGUSR1: one status line; kept running, no "
           "Last Will; SIGTERM then exited 0 with everything delivered")


# -- finding 11: monotonic timers ----------------------------------------------------------


class ClockedInProcess(InProcess):
    """:class:`InProcess` with the daemon's wall clock given."""

    def __init__(self, cfg: Any, source: Any, classifier: Classifier, clock: Any) -> None:
        self.cfg = cfg
        # As in production: the wall clock for timestamps, time.monotonic for timers.
        self.daemon = Daemon(cfg, source=source, classifier=classifier, clock=clock,
                             monotonic=time.monotonic)
        self.rc = None
        self.thread = threading.Thread(target=self._run, name="daemon", daemon=True)


class SteppedClock:
    """time.time(), stepped back by ``step`` seconds once :meth:`step_back` is called."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def step_back(self, seconds: float) -> None:
        self.offset -= seconds


@pytest.mark.broker
def test_wall_clock_stepped_back_an_hour_delays_no_timer(
    tmp_path: Path, mosquitto: Broker, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],  # noqa: F811
) -> None:
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    clock = SteppedClock()
    cfg = make_cfg(tmp_path, model_path, mosquitto.host, mosquitto.port)
    d = ClockedInProcess(cfg, Speech(speech), classifier, clock)
    running.append(d)
    d.start()
    health_topic = f"serd/{DEVICE}/health"
    sub.wait_for(lambda ms: sum(m.topic == health_topic for m in ms) >= 2, 30)
    clock.step_back(3600)
    before = sum(m.topic == health_topic for m in sub.snapshot())
    sub.wait_for(lambda ms: sum(m.topic == health_topic for m in ms) >= before + 3, 15)
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    d.stop()
    stamps = [m.json()["ts"] for m in sub.snapshot() if m.topic == f"serd/{DEVICE}/emotion"]
    assert any(s < stamps[0] for s in stamps[1:]), "event timestamps follow the wall clock"
    record("wall clock stepped back an hour while running", produced=produced,
           received=received, repetitions=1,
           behaviour="health kept its 1 s period (monotonic timer); event timestamps "
           "follow the wall clock")


def test_alert_clears_after_silence_when_the_clock_steps_back() -> None:
    rule = AlertRule(labels=("angry",), min_seconds=2.0, over_seconds=4.0, min_confidence=0.5)
    eng = AlertEngine(AlertSettings(enabled=True, rules=(rule,),
                                    clear_after_silence_seconds=5.0),
                      device_id=DEVICE, model="m", labels=["angry", "neutral"])
    wall, mono = 1_800_000_000.0, 1000.0
    out = []
    for t in range(6):
        d = Decision("window", "main", 0, float(t), t + 1.0, "angry", 0.9)
        out += eng.observe(d, wall + t, wall + t + 1, wall + t + 1, mono + t + 1)
    assert [a["state"] for a in out] == ["started"]
    wall -= 3600  # NTP steps the clock back an hour; 6 s pass on the monotonic clock
    got = eng.tick(wall + 6 + 6, mono + 6 + 6)
    assert [a["state"] for a in got] == ["cleared"]


# -- finding 12 and issue 25.4: the spool's own limits --------------------------------------


def test_full_spool_logs_one_line_not_one_per_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="serd")
    sp = Spool(tmp_path / SPOOL_FILENAME, max_events=100)
    n = 1900
    for i in range(n):
        sp.put("emotion", _event(i))
    stats = sp.stats()
    sp.close()
    assert stats.dropped == n - 100 and stats.depth == 100
    lines = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert len(lines) == 1, len(lines)
    record("spool full: 1,900 events into a 100-event spool", produced=n, received=0,
           repetitions=1, dropped=stats.dropped, log_lines=len(lines),
           behaviour="one WARNING, then at most one per minute; drops counted (by design)")


def test_undelivered_events_expire_and_leave_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILENAME
    sp = Spool(path)
    secret = "caller-was-furious-7f3a"
    seqs = [sp.put("emotion", {**_event(i), "note": f"{secret}-{i}"}) for i in range(10)]
    assert None not in seqs
    rows = [e.id for e in sp.peek(10)]
    sp.ack(rows[:5])  # five delivered
    assert sp.expire(3600) == 0
    later = time.time() + 7200
    assert sp.expire(3600, now_epoch_seconds=later) == 5  # five never delivered, too old
    assert sp.stats().expired == 5 and sp.depth() == 0
    sp.close()
    reopened = Spool(path)
    assert reopened.stats().expired == 5  # persisted
    assert reopened.put("emotion", _event(99)) == 11  # seq numbers continue
    reopened.ack([e.id for e in reopened.peek(1)])
    reopened.close()
    leftovers = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in leftovers
    # The key is documented with its default in config.yaml's mqtt section.
    text = (Path(__file__).resolve().parent.parent / "config.yaml").read_text()
    mqtt_section = text.split("\nmqtt:", 1)[1].split("\n\n", 1)[0]
    assert f"spool_max_age_seconds: {MqttSettings().spool_max_age_seconds:.0f}" in mqtt_section


@pytest.mark.broker
def test_publisher_expires_old_events_at_start_and_reports_them(
    tmp_path: Path, mosquitto: Broker, subscriber: Any,
) -> None:
    state = tmp_path / "state"
    _spool_with(state / SPOOL_FILENAME, 8)
    db = sqlite3.connect(str(state / SPOOL_FILENAME))
    # Five spooled two hours ago: by the wall clock and by the boot clock.
    db.execute("UPDATE events SET created = created - 7200, uptime = uptime - 7200 "
               "WHERE seq <= 5")
    db.commit()
    db.close()
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    pub = _publisher(mosquitto, state, spool_max_age_seconds=3600)
    assert pub.stats().expired == 5
    sub.wait_for(lambda ms: set(emotion_seqs(ms)) == {6, 7, 8}, 30)
    assert wait_until(lambda: pub.stats().spool_depth == 0, 30)
    pub.close()
    shutil.rmtree(state)
