"""The daemon's configuration: one frozen dataclass tree, loaded from YAML.

``config.yaml`` in the repository documents every key with its default; a user's file
(``serd --config FILE``, or ``$SERD_CONFIG``) only needs the keys that differ.  Unknown keys
and bad values are refused with one line naming the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serd.alerts import AlertSettings
from serd.capture import AudioSettings
from serd.decisions import DecisionSettings
from serd.discovery import DiscoverySettings
from serd.events import DEVICE_ID_PATTERN
from serd.gate import VadSettings
from serd.model import ModelSettings
from serd.mqttsettings import MqttSettings
from serd.validate import ConfigError, build, read_yaml, require

# The one device_id rule (an MQTT topic level that every consumer can print and match),
# shared with serd.events.validate_device_id, which checks payloads against it.
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
# Where the per-machine id lives (systemd; the D-Bus copy on older systems).
MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_SUFFIX_CHARS = 6

# Exit codes shared with systemd's RestartPreventExitStatus= (see systemd/serd.service).
EXIT_USAGE = 2
EXIT_DATAERR = 65  # the model or its card is unusable
EXIT_CONFIG = 78  # the configuration is wrong (EX_CONFIG)
EXIT_STATE = 73  # the state directory cannot be used (EX_CANTCREAT): a storage fault
EXIT_TEMPFAIL = 75  # another serd holds the state directory (EX_TEMPFAIL): retried later


@dataclass(frozen=True)
class Config:
    """Everything the daemon and ``serd --once`` read from the configuration file."""

    device_id: str | None = None
    """Names this device in topics and events; null = the host name plus a short suffix
    derived from /etc/machine-id (unique per device, stable across restarts)."""
    state_dir: str | None = None
    """Spool and sequence counter; null = $STATE_DIRECTORY (systemd) or ~/.local/state/serd."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    health_interval_seconds: float = 30.0
    """Period of the health topic."""
    model: ModelSettings = field(default_factory=ModelSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)

    def __post_init__(self) -> None:
        if self.device_id is not None:
            require(
                _DEVICE_ID_RE.fullmatch(self.device_id) is not None,
                "device_id",
                f"{self.device_id!r} is not usable: 1 to 64 of A-Z a-z 0-9 . _ - starting "
                "with a letter or digit (it is an MQTT topic level)",
            )
        require(self.health_interval_seconds >= 1, "health_interval_seconds", "must be >= 1")
        # The webrtc backend's package is optional: without it the gate would fail as the
        # daemon starts (a traceback and exit 1, restarted by systemd), not as a config error.
        require(self.vad.backend != "webrtc" or importlib.util.find_spec("webrtcvad") is not None,
                "vad.backend", "'webrtc' needs the webrtcvad package (pip install "
                "webrtcvad-wheels), which is not installed; or set vad.backend: voiced or energy")

    @property
    def resolved_device_id(self) -> str:
        if self.device_id:
            return self.device_id
        return default_device_id(socket.gethostname(), machine_id())

    @property
    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        env = os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "serd"


def parse(data: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document (``None`` = empty file = all defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the file must be a mapping of keys to values (like config.yaml), "
            f"not {type(data).__name__}"
        )
    try:
        return build(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load(path: str | Path | None = None) -> Config:
    """Load ``path`` (or ``$SERD_CONFIG``); with neither, the built-in defaults."""
    if path is None:
        path = os.environ.get("SERD_CONFIG") or None
    if path is None:
        return Config()
    p = Path(path).expanduser()
    return parse(read_yaml(p), str(p))


def machine_id() -> str | None:
    """This machine's id (systemd's /etc/machine-id), or None where there is none."""
    for path in MACHINE_ID_PATHS:
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def default_device_id(host: str, machine: str | None) -> str:
    """The host name, sanitised to the device_id rule, plus ``-`` and a short suffix of
    the machine id.

    Every Raspberry Pi OS image is called ``raspberrypi``: a host name alone puts twin
    devices on one topic and one MQTT client id.  The suffix is a hash of the machine id
    (never the id itself, which systemd asks applications not to publish), so it is
    stable across restarts and differs between devices.
    """
    name = host.split(".", maxsplit=1)[0]
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    name = name.lstrip("-_") or "serd"
    if not machine:
        return name[:64]
    suffix = hashlib.sha256(b"serd device id\0" + machine.encode()).hexdigest()[:_SUFFIX_CHARS]
    return f"{name[: 63 - _SUFFIX_CHARS]}-{suffix}"
