"""sd_notify client against real Unix datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from serd import notify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket that NOTIFY_SOCKET points at, as systemd would set it up."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_status_stopping(notify_socket: socket.socket) -> None:
    assert notify.ready("listening on default")
    assert _receive(notify_socket) == ["READY=1", "STATUS=listening on default"]
    assert notify.watchdog()
    assert _receive(notify_socket) == ["WATCHDOG=1"]
    assert notify.status("input device 'USB mic' is gone; retrying in 2 s")
    assert _receive(notify_socket) == ["STATUS=input device 'USB mic' is gone; retrying in 2 s"]
    assert notify.stopping()
    assert _receive(notify_socket) == ["STOPPING=1"]


def test_status_newlines_cannot_inject_keys(notify_socket: socket.socket) -> None:
    assert notify.status("line one\nREADY=1")
    assert _receive(notify_socket) == ["STATUS=line one READY=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"serd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert _receive(sock) == ["READY=1"]


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.ready()
    assert not notify.watchdog()


def test_missing_socket_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    monkeypatch.setitem(notify._state, "warned", False)
    with caplog.at_level("DEBUG", logger="serd.notify"):
        assert not notify.watchdog()
        assert not notify.watchdog()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, "repeated failures must not flood the journal"
    assert "cannot notify systemd" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("0", None, None),
        ("junk", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        elif value == "self":
            monkeypatch.setenv(name, str(os.getpid()))
        elif value == "other":
            monkeypatch.setenv(name, str(os.getpid() + 1))
        else:
            monkeypatch.setenv(name, value)
    assert notify.watchdog_interval_seconds() == expected
