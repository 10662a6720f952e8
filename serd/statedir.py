"""The state directory: checked before use, and held by one daemon at a time.

The spool (``spool.sqlite3``) and its sequence counters live in the state directory.  Two
faults there used to be a crash loop under systemd (a traceback and exit 1 every 5 s, no
audio analysed): a state directory that cannot be written (read-only file system, the
classic SD-card failure; no permission; an immutable folder), or that is not a folder (a
plain file, a dangling symlink).  :func:`prepare` finds each of them before the spool is
opened and raises :class:`StateDirError` with one line; the daemon exits with
``EXIT_STATE`` (73), which the unit's ``RestartPreventExitStatus=`` does not restart.

Two daemons on one state directory (a manual ``serd`` beside the service) would share one
spool and publish as one device id, kicking each other off the broker.  :class:`StateLock`
takes an exclusive ``flock`` on ``serd.lock`` there; the second daemon stops with one line
naming the first one's pid (``EXIT_TEMPFAIL``, 75).  The kernel drops the lock when its
holder dies, ``kill -9`` included, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from serd import spool

LOCK_FILENAME = "serd.lock"
_PROBE_FILENAME = ".serd-write-probe"


class StateDirError(Exception):
    """The state directory cannot be used; the message is one line saying what to do."""


class StateDirBusyError(StateDirError):
    """Another process holds the state directory's lock."""


def prepare(path: Path) -> Path:
    """Create ``path`` if needed and prove it is a writable folder; StateDirError if not.

    The proof is a real write (create, write, fsync, delete a probe file): permission bits
    say nothing about a read-only mount or an immutable folder, and root ignores them.
    """
    where = f"state_dir {path}"
    if path.is_symlink() and not path.exists():
        raise StateDirError(
            f"{where} is a symlink to {os.readlink(path)}, which does not exist; "
            "fix or remove the link (or set state_dir)"
        )
    if path.exists() and not path.is_dir():
        raise StateDirError(
            f"{where} is not a folder; move the file away (or set state_dir)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirError(f"{where} cannot be created: {_why(exc)}") from None
    probe = path / _PROBE_FILENAME
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"serd")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk is an operating condition the spool rides out (events held in
            # memory until there is room), not a reason to stop.
            return path
        raise StateDirError(f"{where} is not writable: {_why(exc)}") from None
    return path


def _why(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return f"{reason} (the SD card or disk was remounted read-only: check it with fsck)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{reason} (check its owner and mode, and lsattr for the immutable flag; "
                "under systemd leave state_dir null to use StateDirectory=)")
    return reason


class StateLock:
    """An exclusive ``flock`` on ``{state_dir}/serd.lock`` for this process's lifetime."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock or raise :class:`StateDirBusyError` (never waits)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateDirError(f"cannot create the lock file {self.path}: {_why(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise StateDirBusyError(
                    f"another serd ({who}) is using state_dir {self.path.parent}: two "
                    "daemons there would publish as one device; stop it, or give this one "
                    "its own state_dir and device_id"
                ) from None
            raise StateDirError(f"cannot lock {self.path}: {_why(exc)}") from None
        # The pid is for the message above only; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would race with a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def inspect(path: Path) -> list[str]:
    """For ``serd --check-config``: raise :class:`StateDirError` for what would stop the
    daemon; warnings (a damaged spool it would move aside) as lines.  Creates nothing."""
    if not path.exists() and not path.is_symlink():
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StateDirError(f"state_dir {path} cannot be created: {parent} is not a folder")
        if os.statvfs(parent).f_flag & os.ST_RDONLY:
            raise StateDirError(f"state_dir {path} cannot be created: "
                                f"{_why(OSError(errno.EROFS, os.strerror(errno.EROFS)))}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StateDirError(f"state_dir {path} cannot be created in {parent}: "
                                f"{_why(OSError(errno.EACCES, os.strerror(errno.EACCES)))}")
        return []
    prepare(path)
    problem = spool.inspect(path / spool.SPOOL_FILENAME)
    return [problem] if problem else []
