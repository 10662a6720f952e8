"""paho clients configured from the ``mqtt:`` settings: one place for TLS, auth and backoff.

The daemon's publisher, ``serd listen`` and Home Assistant discovery all connect to the
same broker with the same security settings; :func:`create_client` builds a paho client
with them (protocol, TLS files and host-name check, user name and password from a file
or an environment variable, reconnect backoff, connect timeout) and
:func:`connect_async` starts connecting in the background.  The password is never read
from config.yaml.  Unreadable TLS or password files raise
:class:`~serd.validate.ConfigError` with one line naming the key.

Every client declares an MQTT 5 *Maximum Packet Size* (:data:`MAX_PACKET_BYTES`) when it
connects, so the broker never sends it a packet larger than that (a 50 MB retained
payload on a topic a client subscribes to would otherwise be read into memory at every
reconnect).  MQTT 3.1.1 has no such property: consumers drop what is over the same bound
with :func:`read_json_object` (counted) before parsing it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from serd.validate import ConfigError

if TYPE_CHECKING:
    from serd.mqttsettings import MqttSettings

MAX_PACKET_BYTES = 256 * 1024
"""Largest MQTT packet any serd client accepts (declared to MQTT 5 brokers at connect).

Every payload serd reads is a few kilobytes at most; the bound leaves room for devices
with many channels and bounds what one hostile retained message can cost."""

# paho 2.2 logs this at ERROR on every reconnect attempt while the broker is down, beside
# on_connect_fail, which the clients report themselves (once, not once per retry).
_PAHO_NOISE = ("Client is not connected",)


class _QuietPaho(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PAHO_NOISE)


def create_client(
    settings: MqttSettings,
    client_id: str,
    *,
    logger: logging.Logger,
    clean: bool = True,
) -> mqtt.Client:
    """A paho client (callback API 2) set up from ``settings``; not yet connected.

    ``clean=False`` asks for a persistent session (MQTT 3.1.1 only; MQTT 5 takes
    ``clean_start`` in :func:`connect_async`).  Callback exceptions are logged, not
    raised, so a bug in one callback cannot kill paho's network thread.
    """
    protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        # MQTT 5 takes clean_start at connect time instead (see connect_async()).
        clean_session=clean if protocol == mqtt.MQTTv311 else None,
    )
    client.suppress_exceptions = True
    paho_logger = logger.getChild("paho")
    if not any(isinstance(f, _QuietPaho) for f in paho_logger.filters):
        paho_logger.addFilter(_QuietPaho())
    client.enable_logger(paho_logger)
    # paho declares ints but handles float delays; tests use sub-second ones.
    client.reconnect_delay_set(
        cast(int, settings.reconnect_min_seconds), cast(int, settings.reconnect_max_seconds)
    )
    client.connect_timeout = settings.connect_timeout_seconds
    if settings.tls:
        # ssl's own error for a missing file names neither the key nor the file.
        for key in ("ca_file", "cert_file", "key_file"):
            name = getattr(settings, key)
            if name is not None and not os.access(name, os.R_OK):
                why = "no such file" if not os.path.exists(name) else "not readable"
                raise ConfigError(f"mqtt.{key}: cannot read {name}: {why}")
        _check_tls_files(settings)
        try:
            client.tls_set(
                ca_certs=settings.ca_file,
                certfile=settings.cert_file,
                keyfile=settings.key_file,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"mqtt.tls: cannot load the TLS files: {exc}") from None
        if settings.tls_insecure:
            logger.warning("mqtt.tls_insecure: broker host name is NOT verified")
            client.tls_insecure_set(True)
    if settings.username is not None:
        client.username_pw_set(settings.username, read_password(settings))
    return client


def _check_tls_files(settings: MqttSettings) -> None:
    """ConfigError naming the key and the file when a readable TLS file is not what it
    should be: ssl's own error ("[X509: NO_CERTIFICATE_OR_CRL_FOUND]", "PEM lib") names
    neither, and a config can hold three such files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=settings.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"mqtt.ca_file: {settings.ca_file} holds no usable CA "
                              f"certificate (PEM expected): {_ssl_reason(exc)}") from None
    if settings.cert_file is not None:
        try:
            ctx.load_cert_chain(settings.cert_file, settings.key_file,
                                password=_no_passphrase)
        except (ssl.SSLError, ValueError) as exc:
            what = f"mqtt.cert_file {settings.cert_file}"
            if settings.key_file is not None:
                what += f" with mqtt.key_file {settings.key_file}"
            raise ConfigError(f"{what}: not a usable certificate and unencrypted key (PEM "
                              f"expected): {_ssl_reason(exc)}") from None


def _no_passphrase() -> str:
    # Without it OpenSSL would ask for an encrypted key's passphrase on the terminal
    # and wait there; serd has no passphrase to give.
    raise ValueError("the key is encrypted (serd needs an unencrypted key file)")


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return reason.replace("_", " ").lower() if isinstance(reason, str) else str(exc)


def connect_async(
    client: mqtt.Client, settings: MqttSettings, host: str, *, clean: bool = True
) -> None:
    """Start connecting to ``host`` in the background (call ``loop_start`` after).

    Under MQTT 5 the CONNECT carries Maximum Packet Size = :data:`MAX_PACKET_BYTES`.
    """
    if settings.protocol == "5":
        client.connect_async(host, settings.port, settings.keepalive_seconds, clean_start=clean,
                             properties=connect_properties())
    else:
        client.connect_async(host, settings.port, settings.keepalive_seconds)


def connect_properties() -> Properties:
    """MQTT 5 CONNECT properties of every serd client."""
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    return props


@dataclass(frozen=True)
class Payload:
    """A received payload after the checks every consumer applies before using it."""

    # The JSON object, or None when the payload is not one (see ``problem``).
    value: dict[str, Any] | None
    # "" when ``value`` is set, else "too_big", "not_json" or "not_object".
    problem: str = ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json_object(payload: bytes, *, max_bytes: int = MAX_PACKET_BYTES) -> Payload:
    """``payload`` as a JSON object, or why not: over ``max_bytes`` (not parsed), not JSON
    (NaN and Infinity included, and nesting too deep to parse), or JSON but not an object."""
    if len(payload) > max_bytes:
        return Payload(None, "too_big")
    try:
        value = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return Payload(None, "not_json")
    if not isinstance(value, dict):
        return Payload(None, "not_object")
    return Payload(value)


def read_password(settings: MqttSettings) -> str | None:
    """The broker password from ``password_file`` (first line) or ``password_env``."""
    if settings.password_file:
        try:
            text = Path(settings.password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"mqtt.password_file: cannot read {settings.password_file}: "
                f"{exc.strerror or exc}"
            ) from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if settings.password_env:
        value = os.environ.get(settings.password_env)
        if value is None:
            raise ConfigError(
                f"mqtt.password_env: environment variable {settings.password_env} is not set"
            )
        return value
    return None


def describe_error(exc: BaseException | None) -> str:
    """A short, one-line reason for a failed connection attempt."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and the port right?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
