"""Real components for the bench: Mosquitto on loopback, a PulseAudio virtual microphone,
an MQTT subscriber that timestamps what it receives.

The startup logic is the tests' (``tests/fixtures_broker.py``, ``tests/fixtures_audio.py``)
without pytest: a private broker on a free port, and a private PulseAudio server with one
null sink whose monitor is the default source, so ``paplay`` into the sink is what the
daemon records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOSQUITTO = (
    os.environ.get("SERD_TEST_MOSQUITTO")
    or shutil.which("mosquitto")
    or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class Broker:
    """A private mosquitto on 127.0.0.1:<free port> (no persistence: nothing outlives it)."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "user root" if os.geteuid() == 0 else "",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "log_type error",
            "log_type warning",
            f"log_dest file {self.log}",
        ]
        self.config.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(self._accepts, 10.0):
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-500:]}")
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    recv_epoch: float


@dataclass
class Subscriber:
    """A paho client in its own thread; every message with ``time.time()`` on arrival."""

    broker: Broker
    topic: str
    client_id: str = field(default_factory=lambda: f"bench-sub-{uuid.uuid4().hex[:8]}")
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415

        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.max_queued_messages_set(0)
        self._client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def connect(self, timeout: float = 10.0) -> Subscriber:
        self._client.connect(self.broker.host, self.broker.port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"subscriber did not subscribe to {self.topic}")
        return self

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {}
        with self._lock:
            self.messages.append(Received(msg.topic, payload, now))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- PulseAudio virtual microphone ---------------------------------------------------------

SINK = "vmic"
SINK_ARGS = [f"sink_name={SINK}", "channels=2", "rate=48000", "format=float32le"]


class VirtualMic:
    """A private PulseAudio server with one null sink; its monitor is the default source.

    ``env`` is what a process needs to use it (``PULSE_SERVER``, ``XDG_RUNTIME_DIR``, ...).
    """

    def __init__(self) -> None:
        missing = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
        if missing:
            raise RuntimeError(f"virtual microphone needs {', '.join(missing)}")
        self.root = Path(tempfile.mkdtemp(prefix="serd-bpa-"))
        runtime = self.root / "run"
        config = self.root / "config"
        (runtime / "pulse").mkdir(parents=True)
        (config / "pulse").mkdir(parents=True)
        runtime.chmod(0o700)
        (config / "pulse" / "client.conf").write_text("autospawn = no\n")
        self.socket = runtime / "pulse" / "native"
        self.settings = {
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_CONFIG_HOME": str(config),
        }
        self.env = {**os.environ, **self.settings}
        self.server: subprocess.Popen[bytes] | None = None
        self._players: list[subprocess.Popen[bytes]] = []

    def start(self) -> VirtualMic:
        log = (self.root / "pulseaudio.log").open("wb")
        self.server = subprocess.Popen(
            [
                "pulseaudio", "--daemonize=no", "--system=no", "-n", "--exit-idle-time=-1",
                "--use-pid-file=no", "--realtime=no", "--high-priority=no",
                "--log-target=stderr",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                "--load=module-null-sink " + " ".join(SINK_ARGS),
            ],
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )
        ok = wait_until(lambda: self._pactl("info") is not None, 30.0, 0.1)
        if not ok:
            self.stop()
            raise RuntimeError("pulseaudio did not come up")
        self._pactl("set-default-sink", SINK)
        self._pactl("set-default-source", f"{SINK}.monitor")
        return self

    def _pactl(self, *args: str) -> str | None:
        done = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True,
                              timeout=30, check=False)
        return done.stdout if done.returncode == 0 else None

    def play(self, path: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["paplay", f"--device={SINK}", str(path)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._players.append(proc)
        return proc

    def stop_players(self) -> None:
        for p in self._players:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._players.clear()

    def stop(self) -> None:
        self.stop_players()
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
