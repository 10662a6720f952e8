"""Each analysed channel's line reference, kept in the state directory across restarts.

A model whose voice head was trained with a line reference (:class:`serd.voice.LineReference`)
learns each line's voice statistics over weeks of calls; a restart (an upgrade, a reboot,
systemd's ``Restart=``) would otherwise send every line back to the model's prior.  The
daemon keeps what each line has learnt (its window count and mean statistics, 512 numbers:
averages over many callers' windows, no audio) in ``line-references.json`` in its state
directory, and takes it up again at start:

* **Written** atomically (a temporary file in the same folder, fsync, ``os.replace``, so a
  crash leaves the old file or the new one, never half of one) every
  :data:`SAVE_INTERVAL_SECONDS` of the daemon's monotonic clock, from a thread of its own
  so that a slow SD card never holds up the audio loop, and once more at a clean stop.  A
  crash loses at most that interval's learning.
* **Read** at start only when it was written for the same voice head (its SHA-256 in the
  model card): another model's statistics mean nothing to this one, so a new model starts
  from its prior with one info line.  A channel is restored by its name; a channel not in
  the file starts from the prior.
* **Hostile input**: the file is checked throughout (format version, types, 512 finite
  numbers per channel, a count within ``0..memory_windows``); a damaged, truncated or
  oversized file is one warning line, every line starts from the prior, and the daemon
  runs on.  The next save replaces it.
* **A read-only or full state directory**: one warning line at the first failed save, a
  longer wait before each retry (up to :data:`MAX_BACKOFF`), one info line when a save
  works again; the daemon runs on, it only loses the learning at its next restart.
* ``model.adapt: false`` (the reference frozen at the prior) neither reads nor writes the
  file, so what the lines learnt is still there when adaptation is switched back on.

``serd --once`` neither reads nor writes it: each file it analyses is a new line that
starts from the model's prior, so its result does not depend on what a daemon on the same
machine has heard.  (Training's figures are not for such a cold line: each test corpus is
scored against a line that has heard ``voice.warm_utterances`` of its files,
``train.evaluation.line_relative``.)  ``serd --once --publish`` runs a daemon on a state
directory of its own (``replay/<device>``), so its lines are kept apart from the live
device's, and kept there from one replay to the next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_LOGGER = logging.getLogger(__name__)

FILENAME = "line-references.json"
"""File name inside the state directory."""
FORMAT_VERSION = 1
"""Bump when the file's layout changes; another version is not read."""
SAVE_INTERVAL_SECONDS = 300.0
"""How often a running daemon saves (its monotonic clock); at most this much learning is
lost to a crash."""
MAX_BACKOFF = 8
"""After failed saves the wait doubles, up to this many intervals."""
MAX_FILE_BYTES = 4 << 20
"""A larger file is not read (a few channels take tens of kilobytes)."""
_TEMP_PREFIX = f".{FILENAME}."
# The largest float32 (numpy's finfo(float32).max): this module stores numbers, never
# arrays, so it imports no array library (tests/test_security.py).
_FLOAT32_MAX = 3.4028234663852886e38
_TEMP_SUFFIX = ".tmp"


class _Params(Protocol):
    @property
    def memory_windows(self) -> int: ...


class LineReference(Protocol):
    """What this module needs of :class:`serd.voice.LineReference` (named structurally, so
    that a module that stores imports nothing of the audio path: tests/test_security.py)."""

    adapt: bool
    params: _Params
    prior: Any
    """The prior reference (an array of the statistics' size)."""

    def state(self) -> tuple[int, Any]: ...

    def restore(self, count: int, mean: Any) -> None: ...


def _state(ref: LineReference) -> LineState:
    count, mean = ref.state()
    return LineState(count, tuple(float(v) for v in mean.tolist()))


class LineStateError(Exception):
    """The file cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class LineState:
    """What one line has learnt (:meth:`serd.voice.LineReference.state`)."""

    count: int
    mean: tuple[float, ...]
    """512 statistics averaged over the line's windows (not audio)."""


@dataclass(frozen=True)
class SavedLines:
    """The file's content: the voice head it belongs to and each channel's state."""

    head_sha256: str
    lines: dict[str, LineState]


def encode(saved: SavedLines) -> str:
    # float32 -> float (exact) -> repr: the numbers read back bit for bit.
    channels = {name: {"count": int(s.count), "mean": [float(v) for v in s.mean]}
                for name, s in saved.lines.items()}
    return json.dumps({"version": FORMAT_VERSION, "head_sha256": saved.head_sha256,
                       "channels": channels}, allow_nan=False, separators=(",", ":"))


def _reject_constant(name: str) -> float:
    raise LineStateError(f"{name} is not a number this file may hold")


def decode(text: str, *, dim: int, memory_windows: int) -> SavedLines:
    """The file's content, checked; :class:`LineStateError` (one line) if anything is
    wrong.  ``dim``: numbers per mean; ``memory_windows``: the highest count."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise LineStateError(f"not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise LineStateError("not a JSON object")
    version = data.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise LineStateError(f"format version {str(version)[:20]!r}, expected {FORMAT_VERSION}")
    head = data.get("head_sha256")
    if not isinstance(head, str) or len(head) != 64:
        raise LineStateError("head_sha256 is not a SHA-256 digest")
    channels = data.get("channels")
    if not isinstance(channels, dict):
        raise LineStateError("channels is not an object")
    lines = {name: _line(name, entry, dim, memory_windows) for name, entry in channels.items()}
    return SavedLines(head, lines)


def _line(name: str, entry: Any, dim: int, memory_windows: int) -> LineState:
    where = f"channel {name[:40]!r}"
    if not isinstance(entry, dict):
        raise LineStateError(f"{where} is not an object")
    count = entry.get("count")
    if type(count) is not int or not 0 <= count <= memory_windows:
        raise LineStateError(f"{where}: count {str(count)[:20]!r} is not a whole number "
                             f"from 0 to {memory_windows}")
    values = entry.get("mean")
    if not isinstance(values, list) or len(values) != dim:
        raise LineStateError(f"{where}: mean is not a list of {dim} numbers")
    # An int is checked by size before math.isfinite, which cannot convert a huge one.
    if not all((type(v) is float and math.isfinite(v))
               or (type(v) is int and abs(v) <= _FLOAT32_MAX) for v in values):
        raise LineStateError(f"{where}: mean holds something other than finite numbers")
    if not all(abs(v) <= _FLOAT32_MAX for v in values):
        raise LineStateError(f"{where}: mean holds numbers out of range")
    return LineState(count, tuple(float(v) for v in values))


def read(path: Path, *, dim: int, memory_windows: int) -> SavedLines | None:
    """The file at ``path``, checked; None when there is none; :class:`LineStateError`
    when it cannot be read or used."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LineStateError(f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise LineStateError(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineStateError("not UTF-8 text") from None
    return decode(text, dim=dim, memory_windows=memory_windows)


def write(path: Path, saved: SavedLines) -> None:
    """Replace the file at ``path`` atomically (OSError if that fails; the old file stays)."""
    data = encode(saved).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself durable (best effort: some file systems refuse a folder's fsync).
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class LineKeeper:
    """Keeps the line references of one daemon in ``state_dir``: :meth:`restore` once at
    start (after the state directory is locked), :meth:`tick` from the loop, :meth:`close`
    at a clean stop.  Nothing here raises: every fault is logged and the daemon runs on."""

    def __init__(self, state_dir: Path, head_sha256: str,
                 references: Mapping[str, LineReference],
                 *, interval_seconds: float = SAVE_INTERVAL_SECONDS) -> None:
        self.path = state_dir / FILENAME
        self.head_sha256 = head_sha256
        self.references = dict(references)
        self.interval_seconds = interval_seconds
        self._next_save: float | None = None  # monotonic; None: not started
        self._backoff = 1
        self._failing = False
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()  # one write at a time (writer thread, close)
        self.saves = 0
        """Saves that reached the disk."""
        self.failures = 0

    @classmethod
    def for_streams(cls, state_dir: Path, head_sha256: str | None,
                    references: Mapping[str, LineReference | None]) -> LineKeeper | None:
        """A keeper for the channels that adapt a line reference; None when none does (a
        model without a reference, or ``model.adapt: false``)."""
        live = {name: ref for name, ref in references.items()
                if ref is not None and ref.adapt}
        if not live or not head_sha256:
            return None
        return cls(state_dir, head_sha256, live)

    def restore(self) -> int:
        """Take up the saved lines; returns how many channels were restored."""
        self._remove_leftovers()
        any_ref = next(iter(self.references.values()))
        try:
            saved = read(self.path, dim=any_ref.prior.size,
                         memory_windows=any_ref.params.memory_windows)
        except LineStateError as exc:
            _LOGGER.warning("line references in %s ignored: %s; every line starts from the "
                            "model's prior (the file is replaced at the next save)",
                            self.path, exc)
            return 0
        if saved is None:
            return 0
        if saved.head_sha256 != self.head_sha256:
            _LOGGER.info("line references in %s belong to another voice head (model "
                         "changed): every line starts from this model's prior", self.path)
            return 0
        restored = []
        for name, ref in self.references.items():
            line = saved.lines.get(name)
            if line is None:
                continue
            try:
                ref.restore(line.count, line.mean)
            except ValueError as exc:  # a different reference size or memory: the prior
                _LOGGER.warning("line reference of channel %s not restored: %s", name, exc)
                continue
            restored.append(f"{name} ({line.count} windows)")
        if restored:
            _LOGGER.info("line reference restored from %s: %s", self.path, ", ".join(restored))
        return len(restored)

    def tick(self, now_monotonic: float) -> None:
        """From the loop: start a save in the background when one is due.  Cheap."""
        if self._next_save is None:
            self._next_save = now_monotonic + self.interval_seconds
            return
        if now_monotonic < self._next_save:
            return
        if self._writer is not None and self._writer.is_alive():
            return  # the last one is still at the disk: not a second one beside it
        self._next_save = now_monotonic + self.interval_seconds * self._backoff
        snapshot = self.snapshot()  # taken here: the loop thread owns the references
        self._writer = threading.Thread(target=self._save, args=(snapshot,),
                                        name="serd-linestate", daemon=True)
        self._writer.start()

    def close(self, timeout_seconds: float = 5.0) -> None:
        """At a clean stop: wait for a background save, then save once more."""
        if self._writer is not None:
            self._writer.join(timeout_seconds)
            if self._writer.is_alive():
                _LOGGER.warning("saving the line references is still waiting for the disk; "
                                "not saving them again at stop")
                return
        self._save(self.snapshot())

    def snapshot(self) -> SavedLines:
        return SavedLines(self.head_sha256, {
            name: _state(ref) for name, ref in self.references.items()})

    def _save(self, saved: SavedLines) -> None:
        with self._lock:
            try:
                write(self.path, saved)
            except Exception as exc:  # a save must never stop the daemon
                self._failed(exc)
                return
            self.saves += 1
            self._backoff = 1
            if self._failing:
                self._failing = False
                _LOGGER.info("line references saved to %s again", self.path)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        if self._failing:
            _LOGGER.debug("saving the line references failed again: %s", exc)
            return
        self._failing = True
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _LOGGER.warning("cannot save the line references to %s: %s; running on (the lines "
                        "keep learning, but a restart would start them from the prior); "
                        "check the state directory's disk", self.path, why)

    def _remove_leftovers(self) -> None:
        """Temporary files of a save a crash interrupted."""
        with contextlib.suppress(OSError):
            for p in self.path.parent.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    p.unlink()

