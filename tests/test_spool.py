"""The durable spool: seq assignment, order, bounds, crash safety, disk full."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import serd
from serd.spool import SPOOL_FILENAME, Spool


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / SPOOL_FILENAME


def event(n: int) -> dict[str, object]:
    return {"schema": 1, "type": "window", "seq": None, "n": n}


def test_put_assigns_seq_and_stores_it_in_the_payload(path: Path) -> None:
    spool = Spool(path)
    assert [spool.put("emotion", event(i)) for i in range(3)] == [1, 2, 3]
    entries = spool.peek(10)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.payload["seq"] for e in entries] == [1, 2, 3]
    assert [e.payload["n"] for e in entries] == [0, 1, 2]
    # The seq key keeps its place in the payload (builders leave a placeholder).
    assert list(entries[0].payload) == ["schema", "type", "seq", "n"]
    assert spool.depth() == 3
    spool.close()


def test_streams_have_their_own_sequences_but_one_order(path: Path) -> None:
    spool = Spool(path)
    spool.put("emotion", event(0))
    spool.put("alert", event(1))
    spool.put("emotion", event(2))
    entries = spool.peek(10)
    assert [(e.stream, e.seq) for e in entries] == [("emotion", 1), ("alert", 1), ("emotion", 2)]
    assert spool.last_seq("emotion") == 2
    assert spool.last_seq("alert") == 1
    spool.close()


def test_peek_is_oldest_first_and_ack_deletes(path: Path) -> None:
    spool = Spool(path)
    for i in range(5):
        spool.put("emotion", event(i))
    first = spool.peek(2)
    assert [e.seq for e in first] == [1, 2]
    assert [e.seq for e in spool.peek(2, after_id=first[-1].id)] == [3, 4]
    assert spool.ack(first[0].id) == 1
    assert spool.ack(first[0].id) == 0  # idempotent
    assert [e.seq for e in spool.peek(10)] == [2, 3, 4, 5]
    assert spool.ack_through(spool.peek(10)[2].id) == 3
    assert [e.seq for e in spool.peek(10)] == [5]
    assert spool.depth() == 1
    spool.close()


def test_seq_persists_across_reopen_even_when_drained(path: Path) -> None:
    spool = Spool(path)
    for i in range(4):
        spool.put("emotion", event(i))
    last_id = spool.peek(10)[-1].id
    spool.ack([e.id for e in spool.peek(10)])
    spool.close()

    spool = Spool(path)
    assert spool.depth() == 0
    assert spool.put("emotion", event(9)) == 5
    # Row ids never go back either (AUTOINCREMENT): a sender's cursor stays valid.
    assert spool.peek(1)[0].id > last_id
    spool.close()


def test_full_spool_drops_oldest_and_counts_persistently(path: Path) -> None:
    spool = Spool(path, max_events=3)
    seqs = [spool.put("emotion", event(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [e.seq for e in spool.peek(10)] == [3, 4, 5]
    assert spool.depth() == 3
    assert spool.dropped() == 2
    spool.close()

    spool = Spool(path, max_events=3)
    assert spool.dropped() == 2
    assert spool.depth() == 3
    spool.put("emotion", event(5))
    assert spool.dropped() == 3
    assert [e.seq for e in spool.peek(10)] == [4, 5, 6]
    spool.close()


def test_concurrent_puts_get_unique_increasing_seqs(path: Path) -> None:
    spool = Spool(path)
    results: list[list[int]] = [[], [], [], []]

    def worker(out: list[int]) -> None:
        for i in range(50):
            seq = spool.put("emotion", event(i))
            assert seq is not None
            out.append(seq)

    threads = [threading.Thread(target=worker, args=(out,)) for out in results]
    reader_stop = threading.Event()

    def reader() -> None:  # the sender thread's side: peek and ack concurrently
        while not reader_stop.is_set():
            spool.ack([e.id for e in spool.peek(7)])

    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader_stop.set()
    r.join()
    everything = sorted(s for out in results for s in out)
    assert everything == list(range(1, 201))
    for out in results:
        assert out == sorted(out)  # increasing within each thread
    spool.close()


_WRITER = """
import sys
from serd.spool import Spool
spool = Spool(sys.argv[1])
i = 0
while True:
    seq = spool.put("emotion", {"seq": None, "n": i})
    i += 1
    if i == 20:
        print("ready", flush=True)
"""


def test_kill_9_during_writes_leaves_a_consistent_spool(path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(serd.__file__).parent.parent,  # so the child imports this checkout
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    spool = Spool(path)
    seqs = [e.seq for e in spool.peek(1_000_000)]
    assert len(seqs) >= 20
    assert seqs == list(range(1, len(seqs) + 1))  # every committed event, no holes
    assert all(e.payload["seq"] == e.seq for e in spool.peek(1_000_000))
    assert spool.put("emotion", event(0)) == len(seqs) + 1
    spool.close()


def _fill_disk(spool: Spool) -> None:
    """Make the database "full" as a full disk would (SQLITE_FULL)."""
    pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]
    spool._conn.execute(f"PRAGMA max_page_count = {pages}")


def _free_disk(spool: Spool) -> None:
    spool._conn.execute("PRAGMA max_page_count = 1073741823")


def test_disk_full_holds_events_in_memory_then_numbers_them(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(path, memory_max_events=3)
    assert spool.put("emotion", event(0)) == 1
    _fill_disk(spool)
    big = "x" * 20000  # bigger than a page: needs new pages
    caplog.set_level(logging.ERROR, logger="serd.spool")
    held = [spool.put("emotion", {**event(i), "pad": big}) for i in range(1, 6)]
    assert held == [None] * 5  # no seq while not on disk
    stats = spool.stats()
    assert stats.held_in_memory == 3  # bounded: the 2 oldest held were dropped
    assert stats.dropped == 2
    assert stats.write_failures >= 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # logged once per episode, not per event
    assert "disk is full" in errors[0].getMessage()
    assert errors[0].exc_info is None  # one line, no traceback

    _free_disk(spool)
    assert spool.put("emotion", event(6)) == 5  # held ones first: seq 2, 3, 4
    entries = spool.peek(10)
    assert [(e.seq, e.payload["n"]) for e in entries] == [(1, 0), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert spool.stats().held_in_memory == 0
    spool.close()
    spool = Spool(path)
    assert spool.dropped() == 2  # the memory drops were persisted once possible
    spool.close()


def test_flush_held_without_new_puts(path: Path) -> None:
    spool = Spool(path)
    _fill_disk(spool)
    assert spool.put("alert", {"seq": None, "pad": "y" * 20000}) is None
    assert not spool.flush_held()
    _free_disk(spool)
    assert spool.flush_held()
    assert [e.seq for e in spool.peek(10)] == [1]
    spool.close()


def test_bad_input_is_refused(path: Path) -> None:
    spool = Spool(path)
    with pytest.raises(ValueError, match="stream"):
        spool.put("a/b", event(0))
    with pytest.raises(ValueError, match="qos"):
        spool.put("emotion", event(0), qos=3)
    with pytest.raises(ValueError, match="JSON compliant"):
        spool.put("emotion", {"x": float("nan")})
    assert spool.depth() == 0
    assert spool.last_seq("emotion") == 0
    spool.close()
    with pytest.raises(RuntimeError, match="closed"):
        spool.put("emotion", event(0))
