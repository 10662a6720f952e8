
"""Faults in the running daemon: the broker, the network, the microphone, the CPU, the disk.

Each test injects one fault into a running daemon and then checks the one number that
matters: every ``seq`` the daemon produced reaches a subscriber (duplicates allowed, gaps
not; first arrivals in order).  The daemon runs either in-process (the real
:class:`~serd.daemon.Daemon` in a thread, fed by a looping, paced
:class:`~serd.replay.ReplaySource`, with the real MQTT publisher and spool) or as a real
process (``python -m serd.cli``), which the ``kill -9``, SIGSTOP and microphone tests do.
The network faults go through :class:`tcp_proxy.TcpProxy` (latency, a silent partition,
a reset).  All waits poll with generous timeouts; nothing asserts on a fixed sleep.

With ``SERD_RELIABILITY_LOG=file.jsonl`` every test appends one JSON line (fault, what
the daemon did, events produced and received) -- the source of the table in
docs/reliability.md.  ``SERD_KILL_CYCLES=N`` makes the kill -9 test do N cycles.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from tcp_proxy import TcpProxy

from serd.config import Config, parse
from serd.daemon import Daemon
from serd.model import Classifier
from serd.replay import ReplaySource
from serd.spool import SPOOL_FILENAME
from serd_testkit import Broker, Message, Subscriber, wait_until

DEVICE = "fault-desk"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
CLIPS = ["1001_IEO_ANG_HI.flac", "1091_TIE_NEU_XX.flac", "1001_IEO_HAP_HI.flac",
         "1091_TIE_SAD_XX.flac"]
SPEED = 4.0  # paced replay: ~10 emotion events per second of test time


# -- bookkeeping -------------------------------------------------------------------------


def record(fault: str, *, produced: int, received: int, **what: Any) -> None:
    """Print one result row, and append it to $SERD_RELIABILITY_LOG when set."""
    row = {"fault": fault, "produced": produced, "received": received, **what}
    print("RELIABILITY", json.dumps(row))
    path = os.environ.get("SERD_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def emotion_seqs(messages: list[Message], device: str = DEVICE) -> list[int]:
    return [m.json()["seq"] for m in messages if m.topic == f"serd/{device}/emotion"]


def statuses(messages: list[Message], device: str = DEVICE) -> list[tuple[str, str]]:
    return [(m.json()["state"], m.json()["reason"]) for m in messages
            if m.topic == f"serd/{device}/status"]


def assert_all_arrive(sub: Subscriber, produced: int, timeout: float = 60.0,
                      device: str = DEVICE) -> int:
    """Every seq 1..produced arrives, first arrivals in order; returns how many distinct."""
    assert produced > 0, "the test produced no events"
    want = set(range(1, produced + 1))
    try:
        msgs = sub.wait_for(lambda ms: want <= set(emotion_seqs(ms, device)), timeout=timeout)
    except AssertionError:
        got = set(emotion_seqs(sub.snapshot(), device))
        missing = sorted(want - got)
        raise AssertionError(
            f"{len(missing)} of {produced} events never arrived: {missing[:20]}...") from None
    seqs = emotion_seqs(msgs, device)
    first: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first.append(s)
    assert first == sorted(first), "first arrivals out of order"
    assert seen <= want | {produced + 1, produced + 2}, "unexpected seqs"
    return len(want & seen)


def spool_last_seq(state_dir: Path, stream: str = "emotion") -> int:
    """The last seq the spool handed out (read-only; the daemon is not running)."""
    db = sqlite3.connect(f"file:{state_dir / SPOOL_FILENAME}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM counters WHERE name = ?",
                         (f"seq/{stream}",)).fetchone()
        return int(row[0]) if row else 0
    finally:
        db.close()


def spool_integrity(path: Path) -> tuple[str, int]:
    db = sqlite3.connect(str(path))
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return ok, int(depth)
    finally:
        db.close()


# -- the daemon in-process ------------------------------------------------------------------


class Speech(ReplaySource):
    """Speech clips in a loop, paced at ``speed``; silence (still paced) once ``quiet``."""

    def __init__(self, files: list[Path], speed: float = SPEED) -> None:
        super().__init__(files, 16000, speed=speed, loop=True, gap_seconds=0.8)
        self.quiet = threading.Event()

    def read(self, timeout_seconds: float) -> np.ndarray | None:
        if not self.quiet.is_set():
            return super().read(timeout_seconds)
        self._samples += self.block
        delay = self._t0 + self._samples / (self.rate * self.speed) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return np.zeros((self.block, 1), np.float32)


class InProcess:
    """``Daemon.run()`` in a thread: the real loop, publisher, spool and paho client."""

    def __init__(self, cfg: Config, source: Any, classifier: Classifier | None) -> None:
        self.cfg = cfg
        self.daemon = Daemon(cfg, source=source, classifier=classifier)
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, name="daemon", daemon=True)

    def _run(self) -> None:
        self.rc = self.daemon.run()

    def start(self) -> InProcess:
        self.thread.start()
        return self

    def stats(self) -> Any:
        return self.daemon.publisher.stats()

    @property
    def events(self) -> int:
        return self.daemon.counters.events

    def go_quiet(self, timeout: float = 30.0) -> None:
        """Silence in; wait for every open utterance to close."""
        self.daemon.source.quiet.set()
        assert wait_until(lambda: not any(p.in_speech for p in self.daemon.pipelines),
                          timeout), "utterance did not close"
        n = self.events
        time.sleep(0.3)  # one more loop turn: the closing utterance is published
        wait_until(lambda: self.events == n, 5)

    def stop(self, timeout: float = 20.0) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
        assert self.rc == 0


def make_cfg(tmp_path: Path, model_path: Path, host: str | None, port: int,
             **mqtt: Any) -> Config:
    doc: dict[str, Any] = {
        "device_id": DEVICE,
        "state_dir": str(tmp_path / "state"),
        "health_interval_seconds": 1.0,
        "model": {"path": str(model_path)},
    }
    if host is not None:
        doc["mqtt"] = {"host": host, "port": port, "keepalive_seconds": 5,
                       "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 1.0,
                       "connect_timeout_seconds": 3.0, **mqtt}
    return parse(doc)


@pytest.fixture
def speech(data_dir: Path) -> list[Path]:
    return [data_dir / c for c in CLIPS]


def start_daemon(made: list[InProcess], cfg: Config, speech: list[Path],
                 classifier: Classifier) -> InProcess:
    d = InProcess(cfg, Speech(speech), classifier)
    made.append(d)
    return d.start()


@pytest.fixture
def proxy(mosquitto: Broker) -> Iterator[TcpProxy]:
    with TcpProxy(mosquitto.port) as p:
        yield p


# -- the proxy itself ----------------------------------------------------------------------


def _echo_server() -> tuple[int, Callable[[], None]]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=lambda c=c: _echo(c), daemon=True).start()

    def _echo(c: Any) -> None:
        with contextlib.suppress(OSError):
            while data := c.recv(4096):
                c.sendall(data)
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], lambda: (stop.set(), srv.close())


def test_tcp_proxy_passes_delays_blackholes_and_cuts() -> None:
    port, stop = _echo_server()
    try:
        with TcpProxy(port) as p:
            c = socket.create_connection((p.host, p.port), timeout=5)
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
            p.latency(0.3)
            t0 = time.monotonic()
            c.sendall(b"slow")
            assert c.recv(10) == b"slow"
            assert time.monotonic() - t0 >= 0.55  # 0.3 s each way
            p.blackhole()
            c.sendall(b"lost")
            c.settimeout(1.0)
            with pytest.raises(TimeoutError):
                c.recv(10)  # no data, and no FIN (recv would return b"")
            p.heal()
            c2 = socket.create_connection((p.host, p.port), timeout=5)
            c2.sendall(b"new")
            assert c2.recv(10) == b"new"
            p.cut()
            c2.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert c2.recv(10) == b""
            c.close()
            c2.close()
    finally:
        stop()


# -- broker faults ---------------------------------------------------------------------------


@pytest.mark.broker
def test_broker_down_at_start(
    tmp_path: Path, mosquitto: Broker, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serd")
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")  # persistent session survives the outage
    mosquitto.stop()
    d = start_daemon(running, make_cfg(tmp_path, model_path, mosquitto.host, mosquitto.port),
                     speech, classifier)
    assert wait_until(lambda: d.events >= 10, 30), "no events while the broker was down"
    assert wait_until(lambda: sum("cannot connect" in r.getMessage()
                                  for r in caplog.records) >= 1, 20)
    assert not d.stats().connected
    spooled = d.stats().spool_depth
    assert spooled > 0
    mosquitto.start()
    assert wait_until(lambda: d.stats().connected, 30), "never connected"
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    d.stop()
    assert spool_last_seq(tmp_path / "state") == produced
    record("broker down at start", produced=produced, received=received, repetitions=1,
           behaviour=f"ran and spooled ({spooled} events) while the broker was down, "
           "connected when it came up, sent the backlog in order")


@pytest.mark.broker
def test_broker_restarted_mid_stream(
    tmp_path: Path, mosquitto: Broker, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
) -> None:
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    d = start_daemon(running, make_cfg(tmp_path, model_path, mosquitto.host, mosquitto.port),
                     speech, classifier)
    restarts = 3
    for _ in range(restarts):
        n = d.events
        assert wait_until(lambda n=n: d.events >= n + 8 and d.stats().connected, 30)
        mosquitto.stop()
        assert wait_until(lambda: not d.stats().connected, 15), "outage not noticed"
        n = d.events
        assert wait_until(lambda n=n: d.events >= n + 3, 30)  # produced during the outage
        mosquitto.start()
    assert wait_until(lambda: d.stats().connected, 30)
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    connects = d.stats().connects
    d.stop()
    assert connects >= restarts + 1
    record("broker restarted mid-stream", produced=produced, received=received,
           repetitions=restarts, connects=connects,
           behaviour="noticed each outage at once (TCP close), spooled, reconnected "
           "within the backoff, resent unacked events")


# -- network faults through the proxy ---------------------------------------------------------


@pytest.mark.broker
def test_silent_partition_is_noticed_by_keepalive(
    tmp_path: Path, mosquitto: Broker, proxy: TcpProxy, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Packets black-holed, nothing closed: only MQTT keepalive (5 s) can tell."""
    caplog.set_level(logging.INFO, logger="serd")
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    cfg = make_cfg(tmp_path, model_path, proxy.host, proxy.port, keepalive_seconds=5)
    d = start_daemon(running, cfg, speech, classifier)
    assert wait_until(lambda: d.stats().connected and d.stats().sent >= 5, 30)
    proxy.blackhole()
    t0 = time.monotonic()
    assert wait_until(lambda: not d.stats().connected, 30), "partition never noticed"
    noticed = time.monotonic() - t0
    during = d.events
    proxy.heal()
    t1 = time.monotonic()
    assert wait_until(lambda: d.stats().connected, 30), "no reconnect after the partition"
    back = time.monotonic() - t1
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    connects = d.stats().connects
    d.stop()
    assert connects >= 2
    assert noticed <= 3 * cfg.mqtt.keepalive_seconds
    assert any("lost connection" in r.getMessage() for r in caplog.records)
    record("silent network partition (proxy black-holes packets, keepalive 5 s)",
           produced=produced, received=received, repetitions=1,
           noticed_after_s=round(noticed, 1), reconnected_after_heal_s=round(back, 1),
           produced_before_heal=during, bytes_dropped=proxy.stats.bytes_dropped,
           behaviour="PINGREQ unanswered: dropped the connection after ~2x keepalive, "
           "retried (black-holed CONNECTs time out too), reconnected once healed, "
           "resent from the spool")


@pytest.mark.broker
def test_connection_reset_by_the_network(
    tmp_path: Path, mosquitto: Broker, proxy: TcpProxy, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
) -> None:
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    d = start_daemon(running, make_cfg(tmp_path, model_path, proxy.host, proxy.port),
                     speech, classifier)
    cuts = 4
    for i in range(cuts):
        assert wait_until(lambda i=i: d.stats().connects == i + 1 and d.stats().sent >= 3 * i,
                          30)
        n = d.events
        assert wait_until(lambda n=n: d.events >= n + 3, 30)
        proxy.cut()
    assert wait_until(lambda: d.stats().connects == cuts + 1 and d.stats().connected, 30)
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    d.stop()
    record("connection reset (proxy sends RST both ways)", produced=produced,
           received=received, repetitions=cuts, connects=cuts + 1,
           behaviour="noticed at once, reconnected within the backoff, resent unacked")


@pytest.mark.broker
def test_slow_broker(
    tmp_path: Path, mosquitto: Broker, proxy: TcpProxy, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
) -> None:
    """0.6 s each way (RTT 1.2 s, a quarter of the keepalive): slower, never a reconnect."""
    proxy.latency(0.6)
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    d = start_daemon(running, make_cfg(tmp_path, model_path, proxy.host, proxy.port),
                     speech, classifier)
    assert wait_until(lambda: d.stats().connected, 30)
    assert wait_until(lambda: d.events >= 25, 60)
    max_depth = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        max_depth = max(max_depth, d.stats().spool_depth)
        time.sleep(0.05)
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    stats = d.stats()
    d.stop()
    assert stats.connects == 1, "latency below the keepalive must not cause reconnects"
    record("slow broker (proxy adds 0.6 s each way)", produced=produced, received=received,
           repetitions=1, connects=stats.connects, max_spool_depth=max_depth,
           behaviour="kept one connection; up to 20 events in flight hide the latency")


# -- disk full ------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (root only); skips where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; tests/test_spool.py covers SQLITE_FULL")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); "
                    "tests/test_spool.py covers SQLITE_FULL with max_page_count")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(mnt: Path) -> Path:
    """Fill the file system to the last byte (unbuffered writes until ENOSPC)."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@pytest.mark.broker
def test_spool_disk_full_on_a_small_tmpfs(
    small_tmpfs: Path, tmp_path: Path, mosquitto: Broker, subscriber: Any,
    model_path: Path, classifier: Classifier, speech: list[Path], running: list[InProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The state directory's disk fills up while the daemon runs, then frees again."""
    caplog.set_level(logging.WARNING, logger="serd")
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    cfg = make_cfg(small_tmpfs, model_path, mosquitto.host, mosquitto.port)
    d = start_daemon(running, cfg, speech, classifier)
    assert wait_until(lambda: d.stats().connected and d.stats().sent >= 5, 30)
    filler = _fill(small_tmpfs)
    n = d.events
    assert wait_until(lambda: d.stats().held_in_memory >= 5, 30), "disk full never hit"
    held = d.stats().held_in_memory
    assert d.events > n
    errors = [r for r in caplog.records if "spool write failed" in r.getMessage()]
    assert len(errors) == 1, "one line per disk-full episode"
    assert errors[0].exc_info is None
    filler.unlink()
    assert wait_until(lambda: d.stats().held_in_memory == 0, 30), "held events not written"
    d.go_quiet()
    produced = d.events
    received = assert_all_arrive(sub, produced)
    stats = d.stats()
    d.stop()
    assert stats.dropped == 0
    ok, _ = spool_integrity(small_tmpfs / "state" / SPOOL_FILENAME)
    assert ok == "ok"
    assert spool_last_seq(small_tmpfs / "state") == produced
    record("spool disk full (1 MB tmpfs filled, then freed)", produced=produced,
           received=received, repetitions=1, held_in_memory_max=held,
           behaviour="one error line; new events held in memory without a seq, numbered "
           "and sent once the disk had room; spool integrity ok")


@pytest.mark.broker
def test_restart_with_the_disk_still_full(
    small_tmpfs: Path, mosquitto: Broker, subscriber: Any, model_path: Path,
    classifier: Classifier, speech: list[Path], running: list[InProcess],
) -> None:
    """A daemon restarted while its (existing) spool's disk is full keeps running."""
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    cfg = make_cfg(small_tmpfs, model_path, mosquitto.host, mosquitto.port)
    d1 = start_daemon(running, cfg, speech, classifier)
    assert wait_until(lambda: d1.stats().sent >= 3, 30)
    d1.go_quiet()
    first = d1.events
    d1.stop()
    filler = _fill(small_tmpfs)
    d2 = start_daemon(running, cfg, speech, classifier)
    assert wait_until(lambda: d2.stats().held_in_memory >= 3, 30)
    filler.unlink()
    assert wait_until(lambda: d2.stats().held_in_memory == 0, 30)
    d2.go_quiet()
    produced = first + d2.events
    received = assert_all_arrive(sub, produced)
    d2.stop()
    record("restart with the spool's disk full", produced=produced, received=received,
           repetitions=1, behaviour="started, held events in memory, numbered and sent "
           "them when the disk had room")


def test_fresh_spool_on_a_full_disk_holds_then_opens(
    small_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No spool file yet and no room for one: Spool() must not raise (it did: the daemon
    crashed at start, and systemd restarted it every 5 s until the disk had room)."""
    from serd.spool import Spool  # noqa: PLC0415

    caplog.set_level(logging.ERROR, logger="serd.spool")
    filler = _fill(small_tmpfs)
    spool = Spool(small_tmpfs / "state" / SPOOL_FILENAME)
    assert spool.put("emotion", {"seq": None, "n": 1}) is None
    assert spool.peek(10) == []
    assert spool.ack([1]) == 0
    assert spool.stats().held_in_memory == 1
    assert len([r for r in caplog.records if "spool write failed" in r.getMessage()]) == 1
    filler.unlink()
    assert spool.put("emotion", {"seq": None, "n": 2}) == 2  # the held one got seq 1
    assert [(e.seq, e.payload["n"]) for e in spool.peek(10)] == [(1, 1), (2, 2)]
    spool.close()


# -- real processes: kill -9, SIGSTOP, the microphone ---------------------------------------


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


class Proc:
    """``python -m serd.cli ARGS`` with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._f = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serd.cli", *args], stdout=self._f, stderr=subprocess.STDOUT,
            env=env or ENV, start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r}: {self.output()[-3000:]}"
            time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._f.close()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM unless it already exited; its exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._f.close()
        return rc

    def wait_exit(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._f.close()
        return rc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    made: list[Proc] = []
    yield made
    for p in made:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=10)


@pytest.mark.broker
def test_kill_9_at_random_moments_never_corrupts_the_spool_or_loses_a_seq(
    tmp_path: Path, mosquitto: Broker, subscriber: Any, model_path: Path,
    data_dir: Path, procs: list[Proc],
) -> None:
    """``serd --once --publish --loop --speed 0`` (the daemon's event path at full speed,
    hundreds of fsynced inserts per second) killed with SIGKILL at random moments, some
    while the broker is down; after each kill the spool passes PRAGMA integrity_check,
    and in the end every seq handed out reached the subscriber."""
    cycles = int(os.environ.get("SERD_KILL_CYCLES", "4"))
    seed = int(os.environ.get("SERD_KILL_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    device = "kill-desk"
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "c.yaml", {
        "device_id": DEVICE, "state_dir": str(state), "model": {"path": str(model_path)},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_min_seconds": 0.1,
                 "reconnect_max_seconds": 0.5},
    })
    spool = state / "replay" / device / SPOOL_FILENAME
    clips = [str(data_dir / c) for c in CLIPS]
    sub = subscriber(mosquitto, f"serd/{device}/#")
    kills = []
    for i in range(cycles):
        broker_down = i % 3 == 2
        if broker_down:
            mosquitto.stop()
        p = Proc(["--config", str(cfg), "--once", "--publish", "--loop", "--speed", "0",
                  "--device-id", device, *clips], tmp_path / f"run{i}.log")
        procs.append(p)
        p.wait_for("serd: replaying")
        # Let it spool a little (seq numbers must move), then kill at a random moment.
        assert wait_until(spool.exists, 30)
        time.sleep(rng.uniform(0.05, 1.5))
        p.kill9()
        ok, depth = spool_integrity(spool)
        assert ok == "ok", f"cycle {i} (seed {seed}): {ok}"
        kills.append({"broker_down": broker_down, "spool_depth": depth})
        if broker_down:
            mosquitto.start()
        assert "Traceback" not in p.output()
    last = spool_last_seq(spool.parent)
    assert last > 0
    # Recovery: a run with nothing new to play sends the backlog, then stops.
    # Paced (speed 1): the run lasts ~2 s, time to connect and send; close() then waits
    # up to 3 s more for the acks.
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000, np.float32), 16000)
    for attempt in range(5):
        p = Proc(["--config", str(cfg), "--once", "--publish", "--device-id", device,
                  str(silence)], tmp_path / f"drain{attempt}.log")
        procs.append(p)
        assert p.wait_exit() == 0, p.output()[-2000:]
        if spool_integrity(spool)[1] == 0:
            break
    assert spool_last_seq(spool.parent) == last, "the drain run made no events"
    received = assert_all_arrive(sub, last, device=device)
    dups = len(emotion_seqs(sub.snapshot(), device)) - received
    record("kill -9 at random moments, then restart", produced=last, received=received,
           repetitions=cycles, seed=seed, duplicates=dups,
           kills_with_broker_down=sum(k["broker_down"] for k in kills),
           behaviour="spool integrity_check ok after every kill; the next start resent "
           "every unacked event (duplicates, no gaps)")


def _daemon_doc(tmp_path: Path, model_path: Path, broker: Broker, **audio: Any) -> dict:
    return {
        "device_id": DEVICE, "state_dir": str(tmp_path / "state"),
        "health_interval_seconds": 1.0, "model": {"path": str(model_path)},
        "audio": {"reopen_min_seconds": 0.2, "reopen_max_seconds": 1.0, **audio},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_seconds": 0.1,
                 "reconnect_max_seconds": 1.0},
    }


def health(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"serd/{DEVICE}/health"]


@pytest.mark.broker
@pytest.mark.audio
def test_microphone_removed_and_readded(
    tmp_path: Path, mic: Any, mosquitto: Broker, subscriber: Any, model_path: Path,
    data_dir: Path, procs: list[Proc],
) -> None:
    """The PulseAudio sink is unloaded (the USB mic pulled) and loaded again, twice."""
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    cfg = write_config(tmp_path / "c.yaml", _daemon_doc(tmp_path, model_path, mosquitto))
    p = Proc(["--config", str(cfg)], tmp_path / "daemon.log", env=mic_env(mic))
    procs.append(p)
    p.wait_for("ready: input")
    unplugs = 2
    for i in range(unplugs):
        n = len(set(emotion_seqs(sub.snapshot())))
        mic.play(data_dir / CLIPS[i])
        sub.wait_for(lambda ms, n=n: len(set(emotion_seqs(ms))) > n, timeout=30)
        mic.unplug()
        sub.wait_for(lambda ms: any(not h["input_open"] for h in health(ms)), timeout=30)
        mic.plug()
        sub.wait_for(lambda ms, i=i: any(h["input_open"] and h["input_reopens"] >= i + 1
                                         for h in health(ms)), timeout=30)
    mic.play(data_dir / CLIPS[2])
    time.sleep(0.5)  # the VAD's hangover: let the last utterance close before stopping
    rc = p.terminate()
    assert rc == 0, p.output()[-3000:]
    out = p.output()
    assert "Traceback" not in out
    produced = spool_last_seq(tmp_path / "state")
    received = assert_all_arrive(sub, produced)
    gone = out.count("is gone")
    assert gone == unplugs, out[-3000:]
    assert out.count("is back") == unplugs
    record("microphone removed and re-added (PulseAudio sink unloaded/loaded)",
           produced=produced, received=received, repetitions=unplugs,
           behaviour="one warning per outage, health input_open false meanwhile, reopened "
           "with backoff when back, events resumed; real process")


def mic_env(mic: Any) -> dict[str, str]:
    """The environment that reaches the private PulseAudio server (the virtual mic)."""
    return {**mic.env, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


@pytest.mark.broker
@pytest.mark.audio
def test_cpu_starvation_sigstop_then_recovery(
    tmp_path: Path, mic: Any, mosquitto: Broker, subscriber: Any, model_path: Path,
    data_dir: Path, procs: list[Proc],
) -> None:
    """The whole daemon process is stopped (SIGSTOP) for 4 s while audio plays, with a
    tiny capture queue: it loses that audio (counted), and carries on."""
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    doc = _daemon_doc(tmp_path, model_path, mosquitto, block_seconds=0.05, queue_seconds=0.1)
    cfg = write_config(tmp_path / "c.yaml", doc)
    p = Proc(["--config", str(cfg)], tmp_path / "daemon.log", env=mic_env(mic))
    procs.append(p)
    p.wait_for("ready: input")
    player = mic.play(data_dir / "1091_TIE_NEU_XX.flac", wait=False)
    time.sleep(0.5)
    p.proc.send_signal(signal.SIGSTOP)
    time.sleep(4.0)  # the fault itself, not an assertion
    p.proc.send_signal(signal.SIGCONT)
    player.wait(timeout=60)
    n = len(health(sub.snapshot()))
    msgs = sub.wait_for(lambda ms: len(health(ms)) >= n + 2 and health(ms)[-1]["input_open"],
                        timeout=40)
    lost = health(msgs)[-1]
    u = len(_utterances(msgs))
    mic.play(data_dir / "1001_IEO_ANG_HI.flac")
    sub.wait_for(lambda ms: len(_utterances(ms)) > u, timeout=30)
    time.sleep(0.5)
    rc = p.terminate()
    assert rc == 0, p.output()[-3000:]
    assert "Traceback" not in p.output()
    produced = spool_last_seq(tmp_path / "state")
    received = assert_all_arrive(sub, produced)
    record("CPU starvation: daemon SIGSTOPped 4 s during speech (queue 0.1 s)",
           produced=produced, received=received, repetitions=1,
           overflows=lost["overflows"], dropped_blocks=lost.get("input_dropped_blocks"),
           reopens=lost["input_reopens"],
           behaviour="resumed; the lost audio shows in health (PortAudio overflows, "
           "dropped queue blocks, or a stall reopen); later speech classified")


def _utterances(ms: list[Message]) -> list[dict[str, Any]]:
    return [m.json() for m in ms
            if m.topic == f"serd/{DEVICE}/emotion" and m.json()["type"] == "utterance"]


@pytest.mark.broker
@pytest.mark.audio
def test_slow_consumer_overflow_is_counted_in_health(
    tmp_path: Path, mic: Any, mosquitto: Broker, subscriber: Any, model_path: Path,
    classifier: Classifier, data_dir: Path, running: list[InProcess],
) -> None:
    """The processing loop stalls for 2 s (CPU starvation of the loop only: PortAudio's
    thread keeps delivering) with a 0.1 s queue: dropped blocks are counted in health,
    the device is *not* declared gone, and the daemon recovers."""
    sub = subscriber(mosquitto, f"serd/{DEVICE}/#")
    cfg = parse({
        "device_id": DEVICE, "state_dir": str(tmp_path / "state"),
        "health_interval_seconds": 1.0, "model": {"path": str(model_path)},
        "audio": {"block_seconds": 0.05, "queue_seconds": 0.1},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port,
                 "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 1.0},
    })
    d = InProcess(cfg, None, classifier)
    running.append(d)
    starve = threading.Event()
    real = d.daemon.process_block

    def slow(block: np.ndarray, now: float) -> Any:
        if starve.is_set():
            starve.clear()
            time.sleep(2.0)  # the injected stall
        return real(block, now)

    d.daemon.process_block = slow  # type: ignore[method-assign]
    d.start()
    sub.wait_for(lambda ms: any(h["input_open"] for h in health(ms)), timeout=30)
    starve.set()
    msgs = sub.wait_for(lambda ms: any(h.get("input_dropped_blocks", 0) > 0
                                       for h in health(ms)), timeout=30)
    dropped = max(h.get("input_dropped_blocks", 0) for h in health(msgs))
    mic.play(data_dir / "1001_IEO_ANG_HI.flac")
    sub.wait_for(lambda ms: len(_utterances(ms)) >= 1, timeout=30)
    time.sleep(0.5)
    d.stop()
    produced = spool_last_seq(tmp_path / "state")
    received = assert_all_arrive(sub, produced)
    assert d.daemon.source.reopens == 0, "a slow consumer is not a vanished device"
    assert dropped >= 10  # 2 s of 50 ms blocks, minus the 2 the queue holds
    record("slow processing loop (2 s stall, queue 0.1 s)", produced=produced,
           received=received, repetitions=1, dropped_blocks=dropped,
           behaviour="blocks dropped and counted in health (input_dropped_blocks), no "
           "reopen, processing resumed")



@pytest.mark.broker
def test_soak_command_runs(tmp_path: Path, model_path: Path) -> None:
    """``python -m bench.soak`` (not CI: hours of audio) still works: 3 audio-minutes."""
    out = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--hours", "0.05", "--sample-minutes", "1",
         "--publisher", "mqtt", "--model", str(model_path), "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=ENV, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["pass"] is True
    assert result["events"] > 0
    # Every emotion event and every alert (the soak enables the alert rules) was sent.
    assert result["publisher_stats"]["sent"] == result["events"] + result["alerts"]
