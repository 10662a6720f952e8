"""Durable, bounded on-disk spool of events awaiting delivery (SQLite, WAL).

The spool is where an event gets its ``seq``: :meth:`Spool.put` takes the next number of
the event's stream (``emotion`` or ``alert``) and stores the payload with ``seq`` filled
in, in one transaction.  A number is therefore never handed out twice, not after a
crash and not after a power cut, so consumers can trust gaps (dropped events) and
duplicates (re-sent events) for what they are.

Design notes (the why):

* **One sequence per stream**, kept in the ``counters`` table.  A dashboard that
  subscribes only to ``emotion`` must not see a gap every time an alert is raised.
* **Row ids use AUTOINCREMENT**.  They order delivery and the sender remembers the last
  id it sent; plain rowids restart at max(rowid)+1, so after the table drains a new row
  could get an id the sender has already passed and never be sent.
* **WAL; synchronous=FULL for inserts, NORMAL for acks**.  WAL keeps readers and the
  writer from blocking each other and survives ``kill -9`` at any synchronous level.
  FULL adds one fsync per insert, which is what makes a handed-out ``seq`` survive a
  power cut (devices get unplugged): with NORMAL the last commits can roll back at
  power loss and their seq numbers would be handed out again for different events that
  consumers then discard as duplicates.  At a few events per second that fsync is
  cheap.  Acks (deletes) commit with NORMAL: losing one at power loss only means the
  event is sent again, and skipping the fsync matters when a long backlog drains on an
  SD card.  The next FULL commit syncs the whole WAL, earlier acks included.
* **Bounded**: at ``max_events`` the oldest rows are deleted in the same transaction
  as the insert and counted in the persisted ``dropped`` counter.
* **Disk full** (``sqlite3.OperationalError: database or disk is full``) never raises
  out of :meth:`put`: the event is held in memory *without* a seq (up to
  ``memory_max_events``, beyond that the oldest held event is dropped and counted) and
  gets its seq when a later write succeeds.  Held events are never handed out for
  delivery, so a seq is only ever published after it is on disk.  The error is logged
  once per episode.
* **Disk full at start**: if the database cannot even be opened because the disk is
  full (or reports I/O errors), the spool starts anyway in the same held-in-memory
  mode and opens the file on a later write; a daemon restarted on a full SD card keeps
  analysing instead of crash-looping under systemd.  Other open errors still raise.
* **Full spool, one line a minute**: the first drop is a WARNING; later drops are summed
  into at most one line per ``_DROP_LOG_SECONDS`` (a full spool on an SD card once logged
  a line per event).
* **Retention**: :meth:`Spool.expire` deletes undelivered events spooled longer ago than
  a given age (``mqtt.spool_max_age_seconds``), counted in the persisted ``expired``
  counter.  Deleted rows are overwritten (``secure_delete``) and the WAL is checkpointed
  and truncated every minute (:meth:`Spool.scrub`), so a delivered or expired event does
  not linger in free pages or in the WAL.
* **A damaged spool** (garbage, truncated, not a database) is moved aside as
  ``spool.sqlite3.damaged-<UTC time>``, as journald does with a damaged journal, and a
  fresh one is started: every row still readable is copied into it first (seq numbers
  kept, counters continued above the highest seq seen), the recovery is counted
  (``recovered``, persisted) and logged in one line.  Moved-aside files are deleted by
  :meth:`Spool.expire` once older than the retention age.
* **Thread safety**: one connection shared under a lock (``check_same_thread=False``);
  the pipeline thread puts, the sender thread peeks and acks.  One process per spool
  file: the cached depth assumes no other writer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serd.events import to_json

_LOGGER = logging.getLogger(__name__)

SPOOL_FILENAME = "spool.sqlite3"
"""File name of the spool inside the state directory."""

_DROPPED = "dropped"
_EXPIRED = "expired"
_RECOVERED = "recovered"
_DAMAGED_INFIX = ".damaged-"
_DROP_LOG_SECONDS = 60.0
_STREAMS = ("emotion", "alert")  # the event topics (serd.events), for a lost counter
_SEQ_PREFIX = "seq/"
_BUSY_TIMEOUT_MS = 5000
# SQLite primary result codes that mean "the disk is full or failing right now": the
# daemon runs on (events held in memory) and retries, instead of crashing at start.
_SQLITE_IOERR = 10
_SQLITE_FULL = 13

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    qos     INTEGER NOT NULL,
    payload TEXT    NOT NULL,
    created REAL,
    boot    TEXT,
    uptime  REAL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_EVENT_COLUMNS = {"id", "stream", "seq", "qos", "payload", "created"}


def _boot_id() -> str | None:
    """This boot's id (Linux), or None: rows spooled in this boot age by its clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _uptime() -> float | None:
    """Seconds since boot (CLOCK_BOOTTIME: counts suspend, never steps), or None."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else None


_BOOT_ID = _boot_id()


@dataclass(frozen=True)
class SpoolEntry:
    """One stored event, as :meth:`Spool.peek` returns it."""

    # Spool row id: global enqueue order across streams; what ack() takes.
    id: int
    # Stream (topic suffix), e.g. "emotion" or "alert".
    stream: str
    # The event's sequence number within its stream (also inside the payload).
    seq: int
    # MQTT QoS to publish with.
    qos: int
    # The exact JSON text to publish, seq included; re-sends are byte-identical.
    payload_json: str

    @property
    def payload(self) -> dict[str, Any]:
        """The payload parsed back into a dict."""
        result: dict[str, Any] = json.loads(self.payload_json)
        return result


@dataclass(frozen=True)
class SpoolStats:
    """Counters for health reporting."""

    # Events on disk awaiting delivery.
    depth: int
    # Events dropped so far because the spool or the memory hold was full (persisted).
    dropped: int
    # Events held in memory, without a seq yet, because the disk is full.
    held_in_memory: int
    # Writes that failed with a disk-full/I/O error since this process started.
    write_failures: int = 0
    # Undelivered events deleted for being older than the retention age (persisted).
    expired: int = 0
    # Damaged spool files moved aside and replaced by a fresh spool (persisted).
    recovered: int = 0


class Spool:
    """Durable FIFO of events with per-stream persistent sequence numbers."""

    def __init__(
        self, path: Path | str, *, max_events: int = 100_000, memory_max_events: int = 1000
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events: must be at least 1, got {max_events}")
        if memory_max_events < 0:
            raise ValueError(f"memory_max_events: must be >= 0, got {memory_max_events}")
        self.path = Path(path)
        self.max_events = max_events
        self.memory_max_events = memory_max_events
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None  # None until opened (disk full)
        self._sync_full = True
        self._depth = 0
        self._dropped = 0
        # Disk-full state: events waiting for a seq, drops not yet persisted.
        self._held: deque[tuple[str, int, dict[str, Any]]] = deque()
        self._unpersisted_drops = 0
        self._write_failures = 0
        self._disk_full = False
        self._closed = False
        self._expired = 0
        self._recovered = 0
        self._drops_unlogged = 0
        self._drop_logged_at: float | None = None  # monotonic
        try:
            self._db_locked()
        except (sqlite3.Error, OSError) as exc:
            if not _disk_trouble(exc):
                raise
            self._write_failed_locked(exc)

    # -- writing ---------------------------------------------------------------------

    def put(self, stream: str, payload: Mapping[str, Any], qos: int = 1) -> int | None:
        """Store ``payload`` on ``stream`` and return its new ``seq``.

        Returns None when the disk is full and the event is held in memory instead (it
        gets a seq once it can be written; see the module notes).  Never raises for
        disk-full or I/O errors; raises ValueError for a payload that is not JSON.
        """
        if not stream or "/" in stream:
            raise ValueError(f"stream: {stream!r} must be one topic level")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos: must be 0, 1 or 2, got {qos!r}")
        record = dict(payload)
        to_json(record)  # fail fast, in the caller, on NaN or unserialisable values
        with self._lock:
            self._check_open()
            if self._held and not self._flush_held_locked():
                self._hold_locked(stream, qos, record)
                return None
            try:
                return self._insert_locked(stream, qos, record)
            except (sqlite3.Error, OSError) as exc:
                self._write_failed_locked(exc)
                self._hold_locked(stream, qos, record)
                return None

    def flush_held(self) -> bool:
        """Try to write events held in memory; True when none are left held."""
        with self._lock:
            self._check_open()
            return self._flush_held_locked()

    def ack(self, ids: int | Iterable[int]) -> int:
        """Delete the entries with these row ids (delivered); returns how many existed.

        Unknown ids are ignored, so acking twice is harmless.  A failed delete is
        logged and leaves the rows in place: they are sent again (a duplicate, never a
        gap).
        """
        id_list = [ids] if isinstance(ids, int) else list(ids)
        if not id_list:
            return 0
        with self._lock:
            self._check_open()
            conn = self._conn
            if conn is None:
                return 0  # never opened: nothing was ever handed out
            try:
                self._set_sync_full_locked(False)
                conn.execute("BEGIN IMMEDIATE")
                deleted = 0
                for start in range(0, len(id_list), 500):  # SQLite's variable limit
                    chunk = id_list[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    cur = conn.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk)
                    deleted += cur.rowcount
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_locked()
                self._write_failed_locked(exc)
                return 0
            self._depth -= deleted
            return deleted

    def ack_through(self, last_id: int) -> int:
        """Delete every entry with row id <= ``last_id``; returns how many."""
        with self._lock:
            self._check_open()
            conn = self._conn
            if conn is None:
                return 0
            try:
                self._set_sync_full_locked(False)
                cur = conn.execute("DELETE FROM events WHERE id <= ?", (last_id,))
            except sqlite3.Error as exc:
                self._write_failed_locked(exc)
                return 0
            self._depth -= cur.rowcount
            return cur.rowcount

    # -- reading ---------------------------------------------------------------------

    def peek(self, limit: int, after_id: int = 0) -> list[SpoolEntry]:
        """Up to ``limit`` oldest entries with row id > ``after_id``, oldest first."""
        with self._lock:
            self._check_open()
            try:
                conn = self._db_locked()
            except (sqlite3.Error, OSError):
                return []  # not open yet (disk full): nothing on disk to hand out
            rows = conn.execute(
                "SELECT id, stream, seq, qos, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolEntry(*row) for row in rows]

    def depth(self) -> int:
        """Events on disk awaiting delivery (held-in-memory ones not included)."""
        with self._lock:
            return self._depth

    def dropped(self) -> int:
        """Events dropped because the spool (or the disk-full memory hold) was full."""
        with self._lock:
            return self._dropped + self._unpersisted_drops

    def last_seq(self, stream: str) -> int:
        """The last seq handed out on ``stream`` (0 if none yet)."""
        with self._lock:
            self._check_open()
            return self._counter(_SEQ_PREFIX + stream)

    def stats(self) -> SpoolStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SpoolStats(
                depth=self._depth,
                dropped=self._dropped + self._unpersisted_drops,
                held_in_memory=len(self._held),
                write_failures=self._write_failures,
                expired=self._expired,
                recovered=self._recovered,
            )

    def expire(self, max_age_seconds: float, now_epoch_seconds: float | None = None) -> int:
        """Delete undelivered events spooled more than ``max_age_seconds`` ago (and
        moved-aside damaged spools as old); returns how many events.

        Events spooled in this boot age by the boot clock, not the wall clock: a Pi
        without a real-time clock boots with the time it saved at shutdown, and NTP's
        first sync steps it forward by however long it was off, which made events
        spooled before the sync (broker not yet reachable) look that old.  Events from
        earlier boots, and a given ``now_epoch_seconds`` (a simulated clock), use the
        wall clock.
        """
        now = time.time() if now_epoch_seconds is None else now_epoch_seconds
        cutoff = now - max_age_seconds
        uptime = _uptime() if now_epoch_seconds is None else None
        self._remove_old_damaged(cutoff)
        with self._lock:
            self._check_open()
            conn = self._conn
            if conn is None:
                return 0
            try:
                self._set_sync_full_locked(True)
                conn.execute("BEGIN IMMEDIATE")
                if uptime is not None and _BOOT_ID is not None:
                    gone = conn.execute(
                        "DELETE FROM events WHERE CASE WHEN boot = ? AND uptime IS NOT NULL "
                        "THEN uptime < ? ELSE created < ? END",
                        (_BOOT_ID, uptime - max_age_seconds, cutoff)).rowcount
                else:
                    gone = conn.execute("DELETE FROM events WHERE created < ?",
                                        (cutoff,)).rowcount
                if gone:
                    self._add_counter_locked(_EXPIRED, gone)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_locked()
                self._write_failed_locked(exc)
                return 0
            if gone:
                self._depth -= gone
                self._expired += gone
                _LOGGER.warning(
                    "dropped %d undelivered events spooled more than %g s ago "
                    "(mqtt.spool_max_age_seconds); %d expired in total",
                    gone, max_age_seconds, self._expired,
                )
            self._scrub_locked()
            return gone

    def scrub(self) -> None:
        """Checkpoint and truncate the WAL: the text of delivered and expired events,
        already zeroed in the database's pages (``secure_delete``), also leaves the WAL.

        SQLite checkpoints on its own only when the WAL reaches 1000 pages, which a quiet
        desk takes days to write: until then every event it delivered stays readable in
        ``spool.sqlite3-wal``.  The publisher calls this (through :meth:`expire`) every
        minute.
        """
        with self._lock:
            self._check_open()
            self._scrub_locked()

    def _scrub_locked(self) -> None:
        if self._conn is None or self._conn.in_transaction:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:  # busy or disk trouble: the next minute tries again
            _LOGGER.debug("WAL checkpoint failed: %s", exc)

    def _remove_old_damaged(self, cutoff: float) -> None:
        for old in self.path.parent.glob(self.path.name + _DAMAGED_INFIX + "*"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
                    _LOGGER.info("deleted %s: older than the retention age", old)
            except OSError as exc:
                _LOGGER.debug("cannot delete %s: %s", old, exc)

    def close(self) -> None:
        """Close the database; held-in-memory events are lost (and were never numbered)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._held:
                _LOGGER.warning(
                    "spool closed with %d events still held in memory (disk full); they are lost",
                    len(self._held),
                )
            if self._conn is not None:
                self._conn.close()

    # -- internals (call with self._lock held) ---------------------------------------

    def _counter(self, name: str) -> int:
        row = self._db_locked().execute(
            "SELECT value FROM counters WHERE name = ?", (name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _db_locked(self) -> sqlite3.Connection:
        """The open connection; opens the database first if that has not worked yet.
        Raises sqlite3.Error (or OSError for the folder) when it still cannot."""
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir() or (self.path.is_symlink() and not self.path.exists()):
            salvaged = self._move_aside_locked(
                "a folder" if self.path.is_dir() else "a dangling symlink")
        elif _not_a_file(self.path):
            # A FIFO, socket or device node (or a symlink to one): SQLite's open fails
            # with a "disk I/O error" that would otherwise hold every event in memory
            # for ever, never delivered.
            salvaged = self._move_aside_locked("not a regular file")
        elif _not_a_file(Path(f"{self.path}-wal")) or _not_a_file(Path(f"{self.path}-shm")):
            # The same "disk I/O error" when its WAL or shared-memory file is a folder.
            salvaged = self._move_aside_locked("its -wal or -shm file is not a regular file")
        else:
            try:
                return self._open_locked()
            except sqlite3.DatabaseError as exc:
                if _disk_trouble(exc) or isinstance(exc, sqlite3.OperationalError):
                    raise  # full, failing or read-only: not the file's fault
                salvaged = self._move_aside_locked(str(exc))
        conn = self._open_locked()
        self._restore_locked(conn, salvaged)
        return conn

    def _open_locked(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves so every put
        # is exactly one transaction, and a failed one is rolled back explicitly.
        conn = sqlite3.connect(
            str(self.path),
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # Nothing about a delivered event stays behind in free pages or the WAL.
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA journal_size_limit=0")
            # Finds a garbage or truncated file here, not at the first write.
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
            conn.executescript(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
            kept = {r[1] for r in conn.execute("PRAGMA table_info(counters)")}
            if not (columns | {"created"} >= _EVENT_COLUMNS and {"name", "value"} <= kept):
                # Another program's database (or another layout): every query would fail,
                # a traceback a second for ever.  Not an OperationalError: moved aside.
                raise sqlite3.DatabaseError(
                    f"not serd's tables (events: {', '.join(sorted(columns))}; counters: "
                    f"{', '.join(sorted(kept))})")
            if "created" not in columns:  # a spool from before retention existed
                conn.execute("ALTER TABLE events ADD COLUMN created REAL")
                conn.execute("UPDATE events SET created = ?", (time.time(),))
            for name, kind in (("boot", "TEXT"), ("uptime", "REAL")):
                if name not in columns:  # rows without them age by the wall clock
                    conn.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
            depth = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._sync_full = True
        self._depth = depth
        self._dropped = int(counters.get(_DROPPED, 0))
        self._expired = int(counters.get(_EXPIRED, 0))
        self._recovered = int(counters.get(_RECOVERED, 0))
        return conn

    def _move_aside_locked(self, why: str) -> _Salvage:
        """Rename the damaged file (and its WAL) aside; what could still be read from it."""
        salvage = _salvage(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}{_DAMAGED_INFIX}{stamp}")
        n = 1
        while aside.exists() or aside.is_symlink():
            n += 1
            aside = self.path.with_name(f"{self.path.name}{_DAMAGED_INFIX}{stamp}.{n}")
        if not salvage.counters:
            # The counters are unreadable, so the last seq handed out is unknown: continue
            # from the wall clock in milliseconds, above any count this device can have
            # reached, so no consumer mistakes a new event for a duplicate.
            floor = int(time.time() * 1000)
            for stream in _STREAMS:
                salvage.seqs[stream] = max(salvage.seqs.get(stream, 0), floor)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.is_dir() and not suffix:
                # A folder where the spool belongs: move it aside the same way.
                src.rename(aside)
            elif src.exists() or src.is_symlink():
                src.rename(Path(str(aside) + suffix))
        _LOGGER.error(
            "spool %s is damaged (%s): moved aside to %s, started a fresh one with the %d "
            "readable events; seq numbers continue above %s",
            self.path, why, aside.name, len(salvage.rows),
            max(salvage.seqs.values(), default=0),
        )
        return salvage

    def _restore_locked(self, conn: sqlite3.Connection, salvage: _Salvage) -> None:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for stream, seq, qos, payload in salvage.rows:
            conn.execute(
                "INSERT INTO events(stream, seq, qos, payload, created) VALUES (?, ?, ?, ?, ?)",
                (stream, seq, qos, payload, now),
            )
        for name, value in salvage.counters.items():
            conn.execute("INSERT OR REPLACE INTO counters(name, value) VALUES (?, ?)",
                         (name, value))
        for stream, seq in salvage.seqs.items():
            # Never hand out a seq a consumer may already have seen: a gap is honest, a
            # reused number would be dropped as a duplicate.
            conn.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)",
                (_SEQ_PREFIX + stream, seq),
            )
        self._add_counter_locked(_RECOVERED, 1)
        conn.execute("COMMIT")
        self._depth = len(salvage.rows)
        self._recovered = int(salvage.counters.get(_RECOVERED, 0)) + 1
        self._dropped = int(salvage.counters.get(_DROPPED, 0))
        self._expired = int(salvage.counters.get(_EXPIRED, 0))

    def _add_counter_locked(self, name: str, value: int) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, value),
        )

    def _insert_locked(self, stream: str, qos: int, record: dict[str, Any]) -> int:
        name = _SEQ_PREFIX + stream
        conn = self._db_locked()
        try:
            self._set_sync_full_locked(True)
            conn.execute("BEGIN IMMEDIATE")
            self._add_counter_locked(name, 1)
            seq = self._counter(name)
            record["seq"] = seq
            conn.execute(
                "INSERT INTO events(stream, seq, qos, payload, created, boot, uptime) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream, seq, qos, to_json(record), time.time(), _BOOT_ID, _uptime()),
            )
            overflow = max(0, self._depth + 1 - self.max_events)
            new_drops = overflow + self._unpersisted_drops
            if overflow:
                conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                    (overflow,),
                )
            if new_drops:
                self._add_counter_locked(_DROPPED, new_drops)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback_locked()
            record["seq"] = None
            raise
        self._depth += 1 - overflow
        self._dropped += new_drops
        self._unpersisted_drops = 0
        if overflow:
            self._log_drops_locked(overflow)
        if self._disk_full:
            self._disk_full = False
            _LOGGER.warning("spool writable again after %d failed writes", self._write_failures)
        return seq

    def _log_drops_locked(self, count: int) -> None:
        """The first drop at once, then at most one line per _DROP_LOG_SECONDS."""
        self._drops_unlogged += count
        now = time.monotonic()
        if self._drop_logged_at is not None and now - self._drop_logged_at < _DROP_LOG_SECONDS:
            return
        _LOGGER.warning(
            "spool full (%d events): dropped the %d oldest%s; %d dropped in total",
            self.max_events,
            self._drops_unlogged,
            "" if self._drop_logged_at is None else f" in the last {_DROP_LOG_SECONDS:g} s",
            self._dropped,
        )
        self._drop_logged_at = now
        self._drops_unlogged = 0

    def _flush_held_locked(self) -> bool:
        while self._held:
            stream, qos, record = self._held[0]
            try:
                self._insert_locked(stream, qos, record)
            except (sqlite3.Error, OSError) as exc:
                self._write_failed_locked(exc)
                return False
            self._held.popleft()
        return True

    def _hold_locked(self, stream: str, qos: int, record: dict[str, Any]) -> None:
        if self.memory_max_events == 0:
            self._unpersisted_drops += 1
            return
        if len(self._held) >= self.memory_max_events:
            self._held.popleft()
            self._unpersisted_drops += 1
        self._held.append((stream, qos, record))

    def _write_failed_locked(self, exc: sqlite3.Error | OSError) -> None:
        self._write_failures += 1
        if not self._disk_full:
            self._disk_full = True
            # One line, no traceback: this is an operating condition, not a bug.
            _LOGGER.error(
                "spool write failed (%s): new events are held in memory (up to %d) "
                "until %s is writable again; unacked events may be sent twice",
                exc,
                self.memory_max_events,
                self.path,
            )

    def _set_sync_full_locked(self, full: bool) -> None:
        # A connection-level setting, read at each commit; switching costs no I/O.
        if full != self._sync_full and self._conn is not None:
            self._conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def _rollback_locked(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                _LOGGER.debug("rollback failed", exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("spool is closed")


def _not_a_file(path: Path) -> bool:
    """Something is at ``path`` (a link included) and it is not a regular file."""
    return (path.exists() or path.is_symlink()) and not path.is_file()


def _disk_trouble(exc: BaseException) -> bool:
    """True for "disk full" / "disk I/O error": conditions that may pass."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return (int(code) & 0xFF) in (_SQLITE_FULL, _SQLITE_IOERR)
    text = str(exc)
    return "disk is full" in text or "disk I/O error" in text


@dataclass
class _Salvage:
    """What could be read from a damaged spool."""

    rows: list[tuple[str, int, int, str]]
    counters: dict[str, int]
    seqs: dict[str, int]  # highest seq seen per stream, counters and rows together


def _salvage(path: Path) -> _Salvage:
    """Best effort: rows and counters still readable from a damaged spool, read-only."""
    out = _Salvage([], {}, {})
    if not path.is_file():
        return out
    copy = path.with_name(path.name + ".salvage")
    try:
        _padded_copy(path, copy)
        db = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    except (sqlite3.Error, OSError):
        copy.unlink(missing_ok=True)
        return out
    try:
        try:
            for name, value in db.execute("SELECT name, value FROM counters"):
                if isinstance(name, str) and isinstance(value, int):
                    out.counters[name] = value
        except sqlite3.Error:
            pass
        try:
            cur = db.execute("SELECT stream, seq, qos, payload FROM events ORDER BY id")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.Error:
                    break
                if row is None:
                    break
                stream, seq, qos, payload = row
                if (isinstance(stream, str) and isinstance(seq, int) and qos in (0, 1, 2)
                        and isinstance(payload, str)):
                    out.rows.append((stream, seq, qos, payload))
        except sqlite3.Error:
            pass
    finally:
        db.close()
        copy.unlink(missing_ok=True)
    for name, value in out.counters.items():
        if name.startswith(_SEQ_PREFIX):
            stream = name[len(_SEQ_PREFIX):]
            out.seqs[stream] = max(out.seqs.get(stream, 0), value)
    for stream, seq, _qos, _payload in out.rows:
        out.seqs[stream] = max(out.seqs.get(stream, 0), seq)
    return out


def _padded_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, zero-padded to the size its header claims.

    SQLite refuses every query on a file shorter than its header says (a truncated
    spool), even for pages that are all there; padded, only the missing pages fail.
    """
    data = src.read_bytes()
    if len(data) >= 100 and data.startswith(b"SQLite format 3\0"):
        page_size = int.from_bytes(data[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(data[28:32], "big")
        data += b"\0" * max(0, pages * page_size - len(data))
    dst.write_bytes(data)


def inspect(path: Path) -> str | None:
    """For ``serd --check-config``: what is wrong with the spool file, or None.

    Read-only; a missing file is fine (it is created at start).
    """
    for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        if _not_a_file(side):
            return f"{side} is not a regular file; serd will move the spool aside"
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        return f"{path} is a folder; serd will move it aside and start a fresh spool"
    if not path.is_file():
        return f"{path} is not a regular file; serd will move it aside"
    if path.stat().st_size == 0:
        return None  # an empty database: the daemon creates its tables in it
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            # The daemon's own test (Spool._open_locked): tables it would create are
            # fine, tables of another layout are not.
            columns = {r[1] for r in db.execute("PRAGMA table_info(events)")}
            kept = {r[1] for r in db.execute("PRAGMA table_info(counters)")}
            if check == "ok" and ((columns and not columns | {"created"} >= _EVENT_COLUMNS)
                                  or (kept and not {"name", "value"} <= kept)):
                check = "not serd's tables"
        finally:
            db.close()
    except sqlite3.Error as exc:
        check = str(exc)
    if check != "ok":
        return (f"spool {path} is damaged ({check}); serd will move it aside and start a "
                "fresh one with the readable events")
    if not os.access(path, os.R_OK | os.W_OK):
        return f"spool {path} is not readable and writable by this user"
    return None
