"""paho clients configured from the ``mqtt:`` settings: one place for TLS, auth and backoff.

The daemon's publisher, ``serd listen`` and Home Assistant discovery all connect to the
same broker with the same security settings; :func:`create_client` builds a paho client
with them (protocol, TLS files and host-name check, user name and password from a file
or an environment variable, reconnect backoff, connect timeout) and
:func:`connect_async` starts connecting in the background.  The password is never read
from config.yaml.  Unreadable TLS or password files raise
:class:`~serd.validate.ConfigError` with one line naming the key.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, cast

import paho.mqtt.client as mqtt

from serd.validate import ConfigError

if TYPE_CHECKING:
    from serd.mqttsettings import MqttSettings


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
    client.enable_logger(logger.getChild("paho"))
    # paho declares ints but handles float delays; tests use sub-second ones.
    client.reconnect_delay_set(
        cast(int, settings.reconnect_min_seconds), cast(int, settings.reconnect_max_seconds)
    )
    client.connect_timeout = settings.connect_timeout_seconds
    if settings.tls:
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


def connect_async(
    client: mqtt.Client, settings: MqttSettings, host: str, *, clean: bool = True
) -> None:
    """Start connecting to ``host`` in the background (call ``loop_start`` after)."""
    if settings.protocol == "5":
        client.connect_async(host, settings.port, settings.keepalive_seconds, clean_start=clean)
    else:
        client.connect_async(host, settings.port, settings.keepalive_seconds)


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
