"""The ``mqtt:`` settings, apart from the client so that loading a config never imports paho.

``serd --once`` loads the whole configuration but publishes nothing; keeping this dataclass
free of paho keeps its start fast.  ``serd.publisher`` re-exports :class:`MqttSettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from serd.validate import require


@dataclass(frozen=True)
class MqttSettings:
    """The ``mqtt:`` section of config.yaml."""

    # Broker host name or address; null = no broker: events go to stdout as JSON lines.
    host: str | None = None
    # Broker TCP port (usually 1883, or 8883 with TLS).
    port: int = 1883
    # First topic level: topics are {topic_prefix}/{device_id}/{emotion,alert,status,health}.
    topic_prefix: str = "serd"
    # MQTT client id; null = "serd-{device_id}". Must be unique per broker.
    client_id: str | None = None
    # MQTT protocol version, quoted in YAML: "5" or "3.1.1".
    protocol: Literal["5", "3.1.1"] = "5"
    # Keepalive: the broker declares us dead (and publishes the Last Will) after 1.5x this.
    keepalive_seconds: int = 30
    # Give up one TCP/TLS connection attempt after this long (then back off and retry).
    connect_timeout_seconds: float = 10.0
    # Connect with TLS. Without ca_file the system CA store is used.
    tls: bool = False
    # PEM CA bundle that signed the broker's certificate.
    ca_file: str | None = None
    # PEM client certificate and its key, for brokers that authenticate clients by cert.
    cert_file: str | None = None
    key_file: str | None = None
    # Skip the broker host name check (the chain is still verified). Testing only.
    tls_insecure: bool = False
    # User name for broker authentication; null = anonymous.
    username: str | None = None
    # The password never lives in config.yaml: read it from this file (first line) ...
    password_file: str | None = None
    # ... or from this environment variable.
    password_env: str | None = None
    # Reconnect backoff: first wait, doubling up to the maximum.
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 30.0
    # Spool bound: beyond this many undelivered events the oldest are dropped (counted).
    spool_max_events: int = 100_000
    # Retention: undelivered events spooled longer ago than this are dropped (counted in
    # health as expired); null = kept until delivered or pushed out by spool_max_events.
    spool_max_age_seconds: float | None = 604_800.0
    # Events published but not yet acknowledged (PUBACK) at any time.
    inflight_max_messages: int = 20

    def __post_init__(self) -> None:
        if self.host is not None:
            require(bool(self.host.strip()), "host", "must not be empty (use null for stdout)")
        require(1 <= self.port <= 65535, "port", f"must be within 1..65535, got {self.port}")
        require(
            _valid_prefix(self.topic_prefix),
            "topic_prefix",
            f"{self.topic_prefix!r} must be one or more topic levels without + # or "
            "empty levels, not starting with $ or /",
        )
        if self.client_id is not None:
            require(0 < len(self.client_id.encode()) <= 65535, "client_id", "must not be empty")
        require(self.protocol in ("5", "3.1.1"), "protocol", "must be '5' or '3.1.1'")
        # 0 would disable keepalive and with it the Last Will on a silent network loss.
        require(
            5 <= self.keepalive_seconds <= 65535,
            "keepalive_seconds",
            f"must be within 5..65535, got {self.keepalive_seconds}",
        )
        for name in ("connect_timeout_seconds", "reconnect_min_seconds", "reconnect_max_seconds"):
            # An infinite timeout kills paho's network thread (OverflowError in settimeout):
            # the daemon would run on, never connecting, after one traceback.
            value = getattr(self, name)
            require(math.isfinite(value), name, f"must be a finite number, got {value}")
        require(self.connect_timeout_seconds > 0, "connect_timeout_seconds", "must be > 0")
        for name in ("ca_file", "cert_file", "key_file", "tls_insecure"):
            require(self.tls or not getattr(self, name), name, "needs tls: true")
        require(self.key_file is None or self.cert_file is not None, "key_file", "needs cert_file")
        require(
            not (self.password_file and self.password_env),
            "password_file",
            "set either password_file or password_env, not both",
        )
        for name in ("password_file", "password_env"):
            require(self.username is not None or not getattr(self, name), name, "needs username")
        require(self.reconnect_min_seconds > 0, "reconnect_min_seconds", "must be > 0")
        require(
            self.reconnect_max_seconds >= self.reconnect_min_seconds,
            "reconnect_max_seconds",
            "must be >= reconnect_min_seconds",
        )
        require(self.spool_max_events >= 1, "spool_max_events", "must be at least 1")
        if self.spool_max_age_seconds is not None:
            require(
                self.spool_max_age_seconds >= 60,
                "spool_max_age_seconds",
                "must be at least 60 (or null: no age limit)",
            )
        require(
            1 <= self.inflight_max_messages <= 1000,
            "inflight_max_messages",
            "must be within 1..1000",
        )


def _valid_prefix(prefix: str) -> bool:
    if not prefix or prefix.startswith("$") or "\x00" in prefix:
        return False
    levels = prefix.split("/")
    return all(level and "+" not in level and "#" not in level for level in levels)
