"""What ``serd --once`` says about a run: per-file emotion breakdown, run totals, progress.

A file's verdict is the mean of its windows' probabilities; over a long call that mean says
little (an angry minute inside a calm quarter of an hour averages out to "unsure").
:func:`breakdown` therefore tells, per label, how much of the speech the label held and its
longest uninterrupted stretch.  :class:`RunTotals` is the closing summary of a whole run
(files, speech, verdicts per label, files without speech, unreadable files), and
:class:`Progress` draws a one-line bar on a terminal while many files are analysed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from serd.decisions import Decision
    from serd.once import FileResult

UNSURE = "unsure"
"""The breakdown's and the totals' name for windows and files with no label claimed."""
NO_SPEECH = "no speech found"
"""A file's verdict when the gate found no speech at all (distinct from an unsure verdict)."""
LONG_SPEECH_SECONDS = 30.0
"""Text output adds the per-emotion breakdown to files with at least this much speech; a
single mean is an honest summary of a short clip, not of a call."""
# Windows of one stretch may be separated by at most this much (float rounding of the
# window times, not a pause: a pause ends the segment and with it the stretch).
_TOUCH_SECONDS = 1e-3


@dataclass(frozen=True)
class LabelShare:
    """How much of a file's speech one label (or :data:`UNSURE`) held."""

    label: str
    seconds: float
    share: float
    """Fraction of the analysed speech, 0..1."""
    longest_s: float
    """Longest stretch of consecutive windows carrying this label."""


def _covered(windows: list[Decision]) -> list[tuple[str, float, float, float]]:
    """(label, attributed seconds, start, end) per window: overlapping windows each get
    only the time they add beyond the previous one, so the seconds add up to the speech
    the windows cover instead of counting each moment several times."""
    out = []
    prev_end = -1.0
    for d in windows:
        start = max(d.start_s, prev_end) if prev_end >= 0 else d.start_s
        out.append((d.label or UNSURE, max(0.0, d.end_s - start), d.start_s, d.end_s))
        prev_end = max(prev_end, d.end_s)
    return out


def breakdown(result: FileResult) -> list[LabelShare]:
    """Each label's share of the speech and its longest stretch, largest share first."""
    by_channel: dict[str, list[Decision]] = {}
    for d in result.decisions:
        if d.type == "window":
            by_channel.setdefault(d.channel, []).append(d)
    seconds: dict[str, float] = {}
    longest: dict[str, float] = {}
    for windows in by_channel.values():
        windows.sort(key=lambda d: (d.start_s, d.end_s))
        run_label: str | None = None
        run_start = run_end = 0.0
        for label, secs, start, end in _covered(windows):
            seconds[label] = seconds.get(label, 0.0) + secs
            if label == run_label and start <= run_end + _TOUCH_SECONDS:
                run_end = max(run_end, end)
            else:
                run_label, run_start, run_end = label, start, end
            longest[label] = max(longest.get(label, 0.0), run_end - run_start)
    total = sum(seconds.values())
    if total <= 0:
        return []
    return sorted(
        (LabelShare(lab, round(s, 3), round(s / total, 4), round(longest[lab], 3))
         for lab, s in seconds.items()),
        key=lambda x: (-x.seconds, x.label),
    )


def verdict_name(result: FileResult) -> str:
    """The file's verdict as one word or phrase: a label, :data:`UNSURE` or :data:`NO_SPEECH`."""
    s = result.summary
    if s is None:
        return NO_SPEECH
    return s.label or UNSURE


def breakdown_text(shares: list[LabelShare]) -> str:
    return ", ".join(f"{x.label} {x.share:.0%} (longest {x.longest_s:.1f} s)" for x in shares)


@dataclass
class RunTotals:
    """The closing summary of a ``serd --once`` run."""

    files: int = 0
    """Files analysed (readable); a file analysed channel by channel counts once."""
    unreadable: int = 0
    no_speech: int = 0
    """Results (files, or channels of a file analysed channel by channel) in which the
    gate found no speech."""
    audio_s: float = 0.0
    speech_s: float = 0.0
    verdicts: dict[str, int] = field(default_factory=dict)
    """Verdicts (per file, or per channel) per label, :data:`UNSURE` included, results
    without speech not."""
    line_windows: int | None = None
    """``--line``: windows of speech the shared line heard before judging; None: each file
    was judged as a line's first call."""

    def add(self, result: FileResult, *, new_file: bool) -> None:
        """``new_file``: ``result`` is a file's first (or only) analysed channel; the
        channels of one file share its duration.  (Was: told by the path, so a file named
        twice in a row counted its audio once and its speech twice.)"""
        if new_file:
            self.files += 1
            self.audio_s += result.duration_s
        self.speech_s += result.speech_s
        name = verdict_name(result)
        if name == NO_SPEECH:
            self.no_speech += 1
        else:
            self.verdicts[name] = self.verdicts.get(name, 0) + 1

    def record(self) -> dict[str, Any]:
        """The ``{"type": "total", ...}`` JSON line."""
        return {
            "type": "total", "files": self.files, "unreadable": self.unreadable,
            "no_speech": self.no_speech, "audio_s": round(self.audio_s, 3),
            "speech_s": round(self.speech_s, 3),
            "verdicts": dict(self._ranked()),
            **({} if self.line_windows is None else {"line_windows": self.line_windows}),
        }

    def _ranked(self) -> list[tuple[str, int]]:
        """Verdicts per label, most frequent first (ties by name)."""
        return sorted(self.verdicts.items(), key=lambda kv: (-kv[1], kv[0]))

    def text(self) -> str:
        verdicts = ", ".join(f"{k} {v}" for k, v in self._ranked())
        return (
            f"total: {self.files} file{'' if self.files == 1 else 's'}, "
            f"{_duration(self.speech_s)} of speech in {_duration(self.audio_s)} of audio; "
            f"verdicts: {verdicts or 'none'}; no speech found: {self.no_speech}; "
            f"unreadable: {self.unreadable}"
            + ("" if self.line_windows is None
               else f"; judged as one line ({self.line_windows} windows heard)")
            + "\n"
        )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A one-line progress bar on a terminal (``stream``), redrawn at most every
    ``interval_s``; a no-op when the stream is not a terminal.  Call :meth:`clear` before
    writing anything else to the same terminal, :meth:`close` at the end."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool | None = None,
                 interval_s: float = 0.1) -> None:
        self.total = total
        self.stream = stream
        self.enabled = _is_terminal(stream) if enabled is None else enabled
        self.interval_s = interval_s
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._shown = False
        self._done = 0
        self._failed = 0

    def __call__(self, done: int, failed: int = 0, name: str = "") -> None:
        self._done, self._failed = done, failed
        now = time.monotonic()
        if not self.enabled or (now - self._last_draw < self.interval_s and done < self.total):
            return
        self._last_draw = now
        self.stream.write("\r" + self._line(now, name) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def _line(self, now: float, name: str) -> str:
        width = _columns(self.stream)
        frac = self._done / self.total if self.total else 1.0
        elapsed = now - self._t0
        left = f", ~{_clock(elapsed / frac - elapsed)} left" if 0 < frac < 1 else ""
        bar_width = 20
        n = round(frac * bar_width)
        bad = f", {self._failed} unreadable" if self._failed else ""
        text = (f"[{'#' * n}{'.' * (bar_width - n)}] {self._done}/{self.total} files"
                f"{bad}, {_clock(elapsed)}{left}")
        if name and len(text) + 3 < width:
            text += "  " + name[-(width - len(text) - 3):]
        return text[: max(10, width - 1)]

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        self.clear()


def _clock(seconds: float) -> str:
    m, s = divmod(int(max(0.0, seconds)), 60)
    return f"{m}:{s:02d}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        # A terminal that reports no size (a bare pty) gets the usual 80.
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80
