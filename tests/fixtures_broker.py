"""Fixtures: a throwaway Mosquitto broker on a free loopback port, and MQTT subscribers.

``mosquitto`` yields a :class:`Broker` that can be stopped and started again on the same
port (to test outages).  Persistence is on so that a *persistent* subscriber session
(see :func:`subscriber`) keeps its queued QoS 1 messages across a broker restart: the
tests can then check that every event arrives even when the publisher reconnects first.
Tests that use these fixtures are skipped, with the reason, when mosquitto is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = (
    os.environ.get("SERD_TEST_MOSQUITTO")
    or shutil.which("mosquitto")
    or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
)
_START_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class Broker:
    """A mosquitto process on ``host``:``port`` that can be stopped and restarted."""

    host = "127.0.0.1"

    def __init__(
        self, workdir: Path, *, allow_anonymous: bool = True, extra_config: str = ""
    ) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {data}/",
            # Running as root, mosquitto would switch to user "mosquitto" and then be
            # unable to write its persistence file in our temporary directory.
            "user root" if os.geteuid() == 0 else "",
            "max_queued_messages 100000",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log}",
            extra_config,
        ]
        # extra_config comes last so that listener options (cafile, certfile,
        # password_file...) apply to the one listener above.
        self.config.write_text("\n".join(line for line in lines if line) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        if self.running:
            return
        assert MOSQUITTO is not None
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if wait_until(self._accepts, timeout=5.0) and self.running:
                return
            # The port may still be held by the previous instance's closing sockets.
            err = self._kill()
            if time.monotonic() >= deadline:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto did not start: {err!r}\n{log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto saves sessions and queued messages."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None

    def _kill(self) -> bytes:
        proc, self._proc = self._proc, None
        if proc is None:
            return b""
        if proc.poll() is None:
            proc.kill()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b""
        return err or b""

    def _accepts(self) -> bool:
        if not self.running:
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """Messages received on ``topic``, collected by a paho client in its own thread."""

    broker: Broker
    topic: str
    persistent: bool = True
    client_id: str = field(default_factory=lambda: f"test-sub-{uuid.uuid4().hex[:10]}")
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            # A persistent session keeps the subscription and its queued QoS 1
            # messages while the subscriber is away (e.g. during a broker restart).
            clean_session=not self.persistent,
        )
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def connect(self, timeout: float = 10.0) -> Subscriber:
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"subscriber did not subscribe to {self.topic}")
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Wait until ``predicate(messages)`` holds; the messages, or AssertionError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.messages)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting on {self.topic}; got "
                        f"{len(self.messages)} messages: "
                        + ", ".join(
                            m.payload[:80].decode(errors="replace") for m in self.messages[-5:]
                        )
                    )
                self._cond.wait(min(remaining, 0.2))
            return list(self.messages)


def _require_mosquitto() -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto broker on a free loopback port (``.stop()``/``.start()``)."""
    _require_mosquitto()
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Factory for brokers with their own settings: ``mosquitto_factory(allow_anonymous=
    False, extra_config="password_file ...")``; started, and stopped at teardown."""
    _require_mosquitto()
    made: list[Broker] = []

    def make(*, allow_anonymous: bool = True, extra_config: str = "") -> Broker:
        broker = Broker(
            tmp_path / f"mosquitto-{len(made)}",
            allow_anonymous=allow_anonymous,
            extra_config=extra_config,
        )
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory ``subscriber(broker, topic, persistent=True)``: connected, subscribed."""
    made: list[Subscriber] = []

    def make(broker: Broker, topic: str, persistent: bool = True) -> Subscriber:
        sub = Subscriber(broker, topic, persistent=persistent).connect()
        made.append(sub)
        return sub

    yield make
    for sub in made:
        with contextlib.suppress(Exception):
            sub.close()
