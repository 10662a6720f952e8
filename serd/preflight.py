"""``serd --check-config``: everything the daemon checks when it starts, without starting.

:func:`start_checks` builds, from a loaded config and model, the daemon itself (channels,
alert rules against the model's labels, discovery, the device id as a topic level) and the
MQTT client its publisher starts (TLS files, password file or variable).  So a config that
passes ``--check-config`` starts.

``--check-config --probe`` also tries what the daemon only retries: :func:`probe_microphone`
opens the input device and reads a block, :func:`probe_broker` connects to the broker
(bounded by a timeout); one line each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from serd.validate import ConfigError

if TYPE_CHECKING:
    from serd.config import Config
    from serd.model import Classifier
    from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger(__name__)

PROBE_MIC_SECONDS = 3.0
"""How long the microphone probe waits for its first block of audio."""


class _NoAudio:
    """An input that is never opened: the checks build the daemon, they do not run it."""

    is_open = False
    device_name: str | None = None
    overflows = 0
    reopens = 0

    def open(self) -> None:
        raise RuntimeError("preflight never opens the input (see probe_microphone)")

    def read(self, timeout_seconds: float) -> Any:
        return None

    def close(self) -> None:
        pass


def start_checks(cfg: Config, clf: Classifier) -> None:
    """Raise :class:`ConfigError` (one line) for what would stop the daemon at start.

    Builds the daemon itself (channels and roles, pipelines, alert rules against the
    model's labels, discovery, publisher; none of them does I/O when built), then what its
    publisher reads when it starts: the TLS files and the password.  Following the daemon's
    own constructor keeps the two from drifting apart.
    """
    from serd.daemon import Daemon  # noqa: PLC0415
    from serd.events import validate_device_id  # noqa: PLC0415

    try:  # the daemon's publisher refuses it with a bare ValueError
        validate_device_id(cfg.resolved_device_id)
    except ValueError as exc:
        raise ConfigError(f"device_id {cfg.resolved_device_id!r}: {exc}") from None
    Daemon(cfg, source=_NoAudio(), classifier=clf)
    if cfg.mqtt.host is not None:
        from serd.mqttclient import create_client  # noqa: PLC0415

        # Reads the TLS files and the password as the publisher's start does; connects nowhere.
        create_client(cfg.mqtt, f"serd-check-{os.getpid()}", logger=_LOGGER)


@dataclass(frozen=True)
class ProbeResult:
    """One ``--probe`` line."""

    ok: bool
    line: str


def probe_microphone(cfg: Config, target_rate: int) -> ProbeResult:
    """Open ``audio.device`` as the daemon would and wait for one block of audio."""
    from serd.capture import Capture, CaptureError  # noqa: PLC0415

    capture = Capture(cfg.audio, target_rate=target_rate)
    try:
        capture.open()
    except CaptureError as exc:
        return ProbeResult(False, f"microphone: cannot open it: {exc}")
    try:
        block = capture.read(PROBE_MIC_SECONDS)
        if block is None:
            return ProbeResult(False, f"microphone: {capture.device_name} opened but gave no "
                               f"audio within {PROBE_MIC_SECONDS:g} s"
                               f"{': ' + capture.last_error if capture.last_error else ''}")
        return ProbeResult(True, f"microphone: {capture.device_name}: recording "
                           f"{block.shape[1]} channel(s) ({', '.join(cfg.audio.channel_names)})")
    finally:
        capture.close()


def probe_broker(settings: MqttSettings, timeout_seconds: float) -> ProbeResult:
    """Connect to ``mqtt.host`` with the configured TLS and credentials, then disconnect."""
    from serd.mqttclient import connect_properties, create_client, describe_error  # noqa: PLC0415

    if settings.host is None:
        return ProbeResult(True, "broker: none configured (mqtt.host is null: events go to "
                           "standard output)")
    where = f"mqtt{'s' if settings.tls else ''}://{settings.host}:{settings.port}"
    client = create_client(settings, f"serd-probe-{os.getpid()}", logger=_LOGGER)
    client.connect_timeout = min(settings.connect_timeout_seconds, timeout_seconds)
    answer: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        answer["reason"] = reason
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, settings.keepalive_seconds,
                       properties=connect_properties() if settings.protocol == "5" else None)
    except (OSError, ValueError) as exc:
        return ProbeResult(False, f"broker: cannot connect to {where}: {describe_error(exc)}")
    deadline = time.monotonic() + timeout_seconds
    try:
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (OSError, ValueError) as exc:
        return ProbeResult(False, f"broker: cannot connect to {where}: {describe_error(exc)}")
    finally:
        client.disconnect()
    if not done.is_set():
        return ProbeResult(False, f"broker: {where} did not answer within {timeout_seconds:g} s")
    reason = answer["reason"]
    if reason.is_failure:
        return ProbeResult(False, f"broker: {where} refused the connection: {reason}")
    return ProbeResult(True, f"broker: connected to {where} (MQTT {settings.protocol})")
