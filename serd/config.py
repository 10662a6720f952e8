"""The daemon's configuration: one frozen dataclass tree, loaded from YAML.

``config.yaml`` in the repository documents every key with its default; a user's file
(``serd --config FILE``, or ``$SERD_CONFIG``) only needs the keys that differ.  Unknown keys
and bad values are refused with one line naming the key and what is allowed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serd.alerts import AlertSettings
from serd.capture import AudioSettings
from serd.decisions import DecisionSettings
from serd.discovery import DiscoverySettings
from serd.gate import VadSettings
from serd.model import ModelSettings
from serd.mqttsettings import MqttSettings
from serd.validate import ConfigError, build, read_yaml, require

# Exit codes shared with systemd's RestartPreventExitStatus= (see systemd/serd.service).
EXIT_USAGE = 2
EXIT_DATAERR = 65  # the model or its card is unusable
EXIT_CONFIG = 78  # the configuration is wrong (EX_CONFIG)


@dataclass(frozen=True)
class Config:
    """Everything the daemon and ``serd --once`` read from the configuration file."""

    device_id: str | None = None
    """Names this device in topics and events; null = the host name."""
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
                bool(self.device_id) and not any(c in self.device_id for c in "/+#\0 "),
                "device_id",
                "must be non-empty without '/', '+', '#' or spaces (it is an MQTT topic level)",
            )
        require(self.health_interval_seconds >= 1, "health_interval_seconds", "must be >= 1")

    @property
    def resolved_device_id(self) -> str:
        if self.device_id:
            return self.device_id
        host = socket.gethostname().split(".")[0] or "serd"
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in host)

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
