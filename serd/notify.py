"""systemd ``sd_notify`` in pure Python: READY, STATUS, WATCHDOG and STOPPING.

The protocol is one datagram of ``KEY=value`` lines sent to the ``AF_UNIX`` socket named
by ``$NOTIFY_SOCKET`` (see ``man sd_notify``).  A name starting with ``@`` is a Linux
abstract socket (a leading NUL byte on the wire).  Outside systemd, or under a unit that
is not ``Type=notify``, the variable is unset and every call here is a cheap no-op that
returns ``False``; so the daemon calls these functions unconditionally.

Errors never propagate: a lost notification must not take the daemon down.  The first
failure is logged as a warning, later ones at debug level, because the watchdog ping
repeats every few seconds and would otherwise flood the journal.
"""

from __future__ import annotations

import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval_seconds",
]

# Only the first failed send is worth a warning line (see module docstring).
_state = {"warned": False}


def _socket_address(value: str) -> str | None:
    """Map ``$NOTIFY_SOCKET`` to an address for ``socket.connect``; None if unsupported."""
    if value.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte instead of "@".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 253 may also hand out "vsock:CID:PORT" (VMs); a Pi daemon never sees it.
    return None


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields in one datagram; True if it was sent.

    No-op (False) when ``$NOTIFY_SOCKET`` is unset.  Newlines inside a field would start a
    new, bogus key on the wire, so they are replaced by spaces.
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _socket_address(value)
    if address is None:
        _warn_once("NOTIFY_SOCKET=%r is not a Unix socket; notifications are disabled", value)
        return False
    payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        _warn_once("cannot notify systemd via %s: %s", value, exc)
        return False
    return True


def _warn_once(message: str, *args: object) -> None:
    if _state["warned"]:
        _LOGGER.debug(message, *args)
    else:
        _state["warned"] = True
        _LOGGER.warning(message, *args)


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
    fields = ["READY=1"]
    if status_text is not None:
        fields.append(f"STATUS={status_text}")
    return notify(*fields)


def status(text: str) -> bool:
    """Set the free-text status shown by ``systemctl status serd``."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Ping the service watchdog (``WATCHDOG=1``); send it from the main loop, not a timer
    thread, so a wedged loop stops the pings and systemd restarts the service."""
    return notify("WATCHDOG=1")


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
    fields = ["STOPPING=1"]
    if status_text is not None:
        fields.append(f"STATUS={status_text}")
    return notify(*fields)


def watchdog_interval_seconds() -> float | None:
    """The service's watchdog timeout in seconds, or None when no watchdog is armed.

    Read from ``$WATCHDOG_USEC``; when ``$WATCHDOG_PID`` is set it must be this process
    (a child that inherited the environment must not ping on its parent's behalf).
    Ping at least every half of this interval, as ``man sd_watchdog_enabled`` advises.
    """
    usec_text = os.environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        _LOGGER.debug("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            _LOGGER.debug("ignoring WATCHDOG_PID=%r: not an integer", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 1_000_000
