"""A throwaway Mosquitto broker on a free loopback port, and an MQTT subscriber.

:class:`Broker` can be stopped and started again on the same port (to test outages).
Persistence is on by default so that a *persistent* :class:`Subscriber` session keeps its
queued QoS 1 messages across a broker restart: a test can then check that every event
arrives even when the publisher reconnects first.  Every :class:`Message` carries the
``time.time()`` of its arrival (the bench's latencies).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from serd_testkit.tools import ToolMissingError

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
    """A mosquitto process on ``host``:``port`` that can be stopped and restarted.

    ``persistence=False`` keeps nothing across a restart (the benches: nothing outlives
    them); ``extra_config`` lines come last, so listener options (cafile, certfile,
    password_file...) apply to the one listener.  A context manager: started, then stopped.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        allow_anonymous: bool = True,
        extra_config: str = "",
        persistence: bool = True,
        max_queued_messages: int = 100000,
    ) -> None:
        if MOSQUITTO is None:
            raise ToolMissingError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {data}/" if persistence else "",
            # Running as root, mosquitto would switch to user "mosquitto" and then be
            # unable to write its persistence file in our temporary directory.
            "user root" if os.geteuid() == 0 else "",
            f"max_queued_messages {max_queued_messages}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"log_dest file {self.log}",
            extra_config,
        ]
        self.config.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Broker:
        """Start (again) on the same port; returns once it accepts connections."""
        if self.running:
            return self
        assert MOSQUITTO is not None
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if wait_until(self._accepts, timeout=5.0) and self.running:
                return self
            # The port may still be held by the previous instance's closing sockets.
            err = self._kill()
            if time.monotonic() >= deadline:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto did not start: {err!r}\n{log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto saves sessions and queued messages."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def _kill(self) -> bytes:
        proc, self.proc = self.proc, None
        if proc is None:
            return b""
        if proc.poll() is None:
            proc.kill()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b""
        return err or b""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
    received_epoch: float = 0.0
    """``time.time()`` when the subscriber got it."""

    def json(self) -> Any:
        return json.loads(self.payload)

    @cached_property
    def fields(self) -> dict[str, Any]:
        """The payload's JSON object, or ``{}`` when it is not one (for counting, not checks)."""
        try:
            value = json.loads(self.payload)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class Subscriber:
    """Messages received on ``topic``, collected by a paho client in its own thread."""

    broker: Broker
    topic: str
    persistent: bool = True
    client_id: str = field(default_factory=lambda: f"kit-sub-{uuid.uuid4().hex[:10]}")
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
        now = time.time()
        with self._cond:
            self.messages.append(
                Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, now)
            )
            self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

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
