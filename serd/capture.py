"""Microphone capture: PortAudio input stream -> bounded queue -> resampled float32 blocks.

The PortAudio callback runs on PortAudio's own thread with soft real-time deadlines, so
(like python-sounddevice's examples) it only copies the block into a bounded queue and
counts problems: PortAudio's input-overflow flag (the device delivered faster than we
were scheduled) and our own queue-full drops (the consumer fell behind by more than
``queue_seconds``).  It never blocks, logs or resamples.

:meth:`Capture.read` runs on the consumer's thread: it takes blocks from the queue and
resamples them to ``target_rate`` with one streaming ``soxr.ResampleStream`` per stream
(all channels together), so the output does not depend on how PortAudio cut the blocks.

A daemon runs for months while USB microphones get unplugged, re-enumerated with a new
index, or wedged.  :meth:`Capture.read` therefore never raises for device faults: when
the stream stops, PortAudio reports an error, or no callback arrives for
``stall_seconds``, it closes the stream, logs one warning line, and reopens with
exponential backoff, re-resolving ``audio.device`` by name each time.

PortAudio enumerates devices once, in ``Pa_Initialize`` (python-sounddevice calls it at
import), and never notices hot-plugged devices afterwards
(spatialaudio/python-sounddevice#125, #382, #493; PortAudio/portaudio#11, #447).
The way to see a re-plugged microphone is to terminate and re-initialise PortAudio
(``sd._terminate(); sd._initialize()``, the maintainer's advice in #125), which
:func:`refresh_devices` does before every (re)open; on Linux/ALSA that re-reads the ALSA
configuration and card list (tests/test_capture.py checks a device added afterwards
appears; on Windows #516 reports the DLL must be reloaded too).  It also closes every
other PortAudio stream of the process, so serd keeps exactly one: this one.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from serd.crosstalk import CrosstalkSettings
from serd.roles import (
    AGENT,
    DEFAULT_ANALYSED,
    LAWFUL_USE_DOC,
    Channel,
    ChannelSpec,
    check_role,
    resolve,
)
from serd.validate import require

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "AudioSettings",
    "Capture",
    "CaptureError",
    "InputDevice",
    "list_input_devices",
    "refresh_devices",
    "resolve_device",
]

# PortAudio's "high" suggested latency: larger host buffers, fewer wake-ups, and fewer
# overflows on a busy Pi; VAD and emotion windows are far longer than the added ~30 ms.
# (With "low", ALSA's pulse plugin also took ~2 s to deliver the first block.)
_LATENCY = "high"
# Some ALSA plugins deliver the first block late after the device wakes up; allow the
# first callback this many stall periods before calling the device gone.
_FIRST_CALLBACK_STALLS = 2.0
# At most one "audio was lost" warning per this many seconds.
_LOSS_REPORT_SECONDS = 60.0


class CaptureError(RuntimeError):
    """The input device cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class AudioSettings:
    """Microphone capture settings (``audio:`` in config.yaml)."""

    device: str | int | None = None
    """Case-insensitive substring of the input device name (indexes change between boots),
    or a PortAudio device index; None = the system's default input."""
    samplerate: int | None = None
    """Device sample rate in Hz; None = the device's own default (many USB microphones only
    do 44100 or 48000).  Audio is resampled to the pipeline's rate either way."""
    channels: tuple[str | ChannelSpec, ...] = ("main",)
    """The input channels, in device channel order: a name (role inferred: agent, customer
    or caller, else unspecified) or ``{name: ..., role: ...}``; ``[agent, customer]`` opens
    the first two channels, analyses the customer's and uses the agent's only for muting
    (see :mod:`serd.roles`)."""
    analyse_roles: tuple[str, ...] = DEFAULT_ANALYSED
    """Roles whose channels are classified; ``agent`` is refused (docs/lawful-use.md)."""
    bleed_mute: CrosstalkSettings = field(default_factory=CrosstalkSettings)
    """Muting of the analysed channels while an agent channel speaks (serd.crosstalk)."""
    block_seconds: float = 0.05
    """PortAudio block size (callback period) in seconds."""
    queue_seconds: float = 2.0
    """Capacity of the queue between the PortAudio callback and the reader, in seconds of
    audio; when the reader falls further behind, new blocks are dropped and counted."""
    reopen_min_seconds: float = 0.5
    """First wait before reopening a lost device; doubles after each failed attempt."""
    reopen_max_seconds: float = 30.0
    """Longest wait between reopen attempts."""
    stall_seconds: float = 2.0
    """No callback for this long means the device is gone (a wedged USB device often
    stops delivering without reporting any error)."""

    def __post_init__(self) -> None:
        if isinstance(self.device, str):
            require(bool(self.device.strip()), "device", "must be a non-empty name or null")
        elif self.device is not None:
            require(self.device >= 0, "device", "an index must be >= 0")
        if self.samplerate is not None:
            require(
                8000 <= self.samplerate <= 384000, "samplerate", "must be 8000..384000 Hz or null"
            )
        for name in ("block_seconds", "queue_seconds", "reopen_min_seconds",
                     "reopen_max_seconds", "stall_seconds"):
            # .inf / .nan pass YAML and the range checks below, then crash at start.
            value = getattr(self, name)
            require(math.isfinite(value), name, f"must be a finite number, got {value}")
        require(len(self.channels) >= 1, "channels", "name at least one input channel")
        names = self.channel_names
        require(all(c.strip() for c in names), "channels", "names must be non-empty")
        require(len(set(names)) == len(names), "channels", "names must be unique")
        for i, role in enumerate(self.analyse_roles):
            check_role(role, f"analyse_roles[{i}]")
        require(AGENT not in self.analyse_roles, "analyse_roles",
                "'agent' is never analysed: inferring an employee's emotions at work is "
                f"prohibited in the EU (AI Act Art. 5(1)(f)); see {LAWFUL_USE_DOC}")
        require(any(c.analysed for c in self.resolved_channels), "channels",
                "no channel has a role listed in audio.analyse_roles "
                f"({', '.join(self.analyse_roles) or 'none'}): nothing would be analysed")
        require(0.005 <= self.block_seconds <= 0.5, "block_seconds", "must be 0.005..0.5 s")
        require(
            self.queue_seconds >= 2 * self.block_seconds,
            "queue_seconds",
            "must hold at least two blocks (2 x block_seconds)",
        )
        require(self.reopen_min_seconds > 0, "reopen_min_seconds", "must be > 0")
        require(
            self.reopen_max_seconds >= self.reopen_min_seconds,
            "reopen_max_seconds",
            "must be >= reopen_min_seconds",
        )
        require(
            self.stall_seconds >= max(0.5, 4 * self.block_seconds),
            "stall_seconds",
            "must be >= 0.5 s and >= 4 x block_seconds",
        )

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Every channel's name, in device channel order (analysed or not)."""
        return tuple(c if isinstance(c, str) else c.name for c in self.channels)

    @property
    def analysed_names(self) -> tuple[str, ...]:
        """Names of the channels that are classified (their role is analysed)."""
        return tuple(c.name for c in self.resolved_channels if c.analysed)

    @property
    def resolved_channels(self) -> list[Channel]:
        """Every channel with its role and whether it is analysed (:func:`serd.roles.resolve`)."""
        return resolve(self.channels, self.analyse_roles)


@dataclass(frozen=True)
class InputDevice:
    """An input-capable device as PortAudio enumerated it."""

    index: int
    """PortAudio index; valid until the next :func:`refresh_devices`."""
    name: str
    """Device name, e.g. ``USB PnP Sound Device: Audio (hw:1,0)``."""
    hostapi: str
    """Host API name (ALSA on a Pi)."""
    max_input_channels: int
    """How many input channels the device offers."""
    default_samplerate: float
    """The device's default sample rate in Hz."""


def _sd() -> Any:
    """python-sounddevice, imported on first use.

    Importing it initialises PortAudio (enumerating every ALSA device) and raises OSError
    where libportaudio2 is missing; ``serd.config`` imports this module for
    :class:`AudioSettings`, and loading a config must do neither.
    """
    try:
        import sounddevice  # noqa: PLC0415
    except OSError as exc:
        raise CaptureError(
            f"cannot load PortAudio ({_one_line(exc)}); install libportaudio2"
        ) from None
    return sounddevice


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def refresh_devices() -> None:
    """Make PortAudio enumerate devices again, so plugged/unplugged devices show up.

    PortAudio only scans when its initialisation count goes from 0 to 1, and
    python-sounddevice counts its own calls, so terminate as many times as it initialised
    and initialise as many times again.  This closes every open PortAudio stream of the
    process.  Raises :class:`CaptureError` if PortAudio cannot be initialised.
    """
    sd = _sd()
    count = int(getattr(sd, "_initialized", 1))
    try:
        for _ in range(count):
            sd._terminate()
        for _ in range(max(count, 1)):
            sd._initialize()
    except sd.PortAudioError as exc:
        raise CaptureError(f"cannot initialise PortAudio: {_one_line(exc)}") from None


def list_input_devices() -> list[InputDevice]:
    """Input-capable devices as PortAudio currently knows them.

    PortAudio's list is a snapshot: call :func:`refresh_devices` first to see devices
    plugged in since.
    """
    sd = _sd()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise CaptureError(f"cannot list audio devices: {_one_line(exc)}") from None
    result = []
    for info in devices:
        if int(info["max_input_channels"]) <= 0:
            continue
        result.append(
            InputDevice(
                index=int(info["index"]),
                name=str(info["name"]),
                hostapi=str(hostapis[info["hostapi"]]["name"]),
                max_input_channels=int(info["max_input_channels"]),
                default_samplerate=float(info["default_samplerate"]),
            )
        )
    return result


def _describe(devices: list[InputDevice]) -> str:
    if not devices:
        return (
            "no input devices at all (is the microphone plugged in and the service "
            "in the audio group?)"
        )
    return "available input devices: " + ", ".join(f"{d.index} {d.name!r}" for d in devices)


def resolve_device(spec: str | int | None, *, min_channels: int = 1) -> tuple[int, str]:
    """Find the input device for ``audio.device``; returns ``(index, name)``.

    A string is a case-insensitive substring of the device name (an exact name wins over
    substring matches; several substring matches are an error, so the choice never
    depends on enumeration order).  An int is a device index; None is the default input.
    The device must offer at least ``min_channels`` input channels.  Raises
    :class:`CaptureError` with a one-line message naming the available input devices.
    """
    devices = list_input_devices()
    sd = _sd()
    if spec is None:
        try:
            info = sd.query_devices(kind="input")
        except (sd.PortAudioError, ValueError):
            raise CaptureError(f"there is no default input device; {_describe(devices)}") from None
        found = [d for d in devices if d.index == int(info["index"])]
    elif isinstance(spec, int):
        found = [d for d in devices if d.index == spec]
        if not found:
            raise CaptureError(f"audio.device={spec} is not an input device; {_describe(devices)}")
    else:
        wanted = spec.strip().casefold()
        found = [d for d in devices if d.name.casefold() == wanted] or [
            d for d in devices if wanted in d.name.casefold()
        ]
        if not found:
            raise CaptureError(
                f"no input device name contains audio.device={spec!r}; {_describe(devices)}"
            )
        if len(found) > 1:
            names = ", ".join(f"{d.index} {d.name!r}" for d in found)
            raise CaptureError(
                f"audio.device={spec!r} matches several input devices ({names}); "
                "use a longer part of the name"
            )
    if not found:
        raise CaptureError(f"the default input device is unusable; {_describe(devices)}")
    device = found[0]
    if device.max_input_channels < min_channels:
        raise CaptureError(
            f"input device {device.name!r} has {device.max_input_channels} input channel(s) "
            f"but audio.channels names {min_channels}"
        )
    return device.index, device.name


class Capture:
    """One microphone stream with automatic recovery; see the module docstring.

    Use from one thread: :meth:`open`, then :meth:`read` in a loop, then :meth:`close`.
    """

    def __init__(self, settings: AudioSettings, target_rate: int = 16000) -> None:
        require(target_rate > 0, "target_rate", "must be > 0 Hz")
        self._settings = settings
        self._target_rate = target_rate
        self._n_channels = len(settings.channels)
        capacity = max(2, math.ceil(settings.queue_seconds / settings.block_seconds))
        self._queue: queue.Queue[npt.NDArray[np.float32]] = queue.Queue(maxsize=capacity)
        self._stream: Any = None
        self._resampler: soxr.ResampleStream | None = None
        self._wanted = False  # between open() and close(): read() keeps the device open
        self._failures = 0  # consecutive failed opens/losses, for the backoff
        self._next_attempt = 0.0  # monotonic time of the next reopen attempt
        self._lost_since: float | None = None
        self._opened_at = 0.0
        self._flow_since: float | None = None  # first block of the current stream
        # Written by the PortAudio thread only; plain int/float stores are atomic under
        # the GIL and the reader tolerates a value one block old.
        self._callbacks = 0
        self._last_callback = 0.0
        self._overflows = 0
        self._dropped = 0
        self._reopens = 0
        self._device_name: str | None = None
        self._device_rate: int | None = None
        self._last_error: str | None = None
        self._reported_loss = (0, 0)
        self._reported_at = 0.0

    # -- public state ------------------------------------------------------------------

    @property
    def settings(self) -> AudioSettings:
        """The settings this capture was made with."""
        return self._settings

    @property
    def target_rate(self) -> int:
        """Sample rate of the blocks :meth:`read` returns, in Hz."""
        return self._target_rate

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Names of the columns of the blocks :meth:`read` returns."""
        return self._settings.channel_names

    @property
    def is_open(self) -> bool:
        """True while a PortAudio stream is open (False while waiting to reopen)."""
        return self._stream is not None

    @property
    def device_name(self) -> str | None:
        """Name of the device in use (or last used); None before the first open."""
        return self._device_name

    @property
    def device_rate(self) -> int | None:
        """Sample rate the device runs at, in Hz; None before the first open."""
        return self._device_rate

    @property
    def overflows(self) -> int:
        """Blocks PortAudio flagged as input overflow (audio lost before we saw it)."""
        return self._overflows

    @property
    def dropped_blocks(self) -> int:
        """Blocks dropped because the queue was full (the reader fell behind)."""
        return self._dropped

    @property
    def reopens(self) -> int:
        """Streams :meth:`read` reopened after a loss or a failed :meth:`open`.

        Incremented before the first block of the new stream is returned: audio before
        and after an increment is not contiguous (windows must not span it).
        """
        return self._reopens

    @property
    def last_error(self) -> str | None:
        """Why the device was last lost or could not be opened (for a status line)."""
        return self._last_error

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Open the device and start capturing.

        Raises :class:`CaptureError` (one line) if the device cannot be found or opened.
        Even then the capture stays armed: :meth:`read` keeps retrying with backoff, so a
        daemon may log the error and carry on (the microphone may be plugged in later).
        """
        self._wanted = True
        if self._stream is not None:
            return
        try:
            self._open_stream()
        except CaptureError as exc:
            self._last_error = str(exc)
            self._lost_since = time.monotonic()
            self._schedule_retry()
            raise

    def close(self) -> None:
        """Stop capturing and release the device; :meth:`read` is invalid until open()."""
        self._wanted = False
        self._close_stream()

    def __enter__(self) -> Capture:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------

    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None:
        """Next block, float32 ``(frames, channels)`` at ``target_rate``; None on timeout.

        Never raises for device faults: a lost device is closed, reported once and
        reopened with backoff while this returns None.  Raises RuntimeError if called
        before :meth:`open` or after :meth:`close` (a programming error).
        """
        if not self._wanted:
            raise RuntimeError("Capture.read() called before open() or after close()")
        deadline = time.monotonic() + max(0.0, timeout_seconds)
        while True:
            now = time.monotonic()
            if self._stream is None:
                if now >= self._next_attempt:
                    self._try_reopen()
                    if self._stream is not None:
                        continue
                    now = time.monotonic()
                wait = min(self._next_attempt, deadline) - now
                if wait <= 0:
                    return None
                time.sleep(wait)
                continue
            try:
                block = self._queue.get_nowait()
            except queue.Empty:
                problem = self._health_problem(now)
                if problem is not None:
                    self._lose(problem)
                    continue
                remaining = deadline - now
                if remaining <= 0:
                    return None
                # Wake up at least every quarter stall period to check the stream's health.
                try:
                    block = self._queue.get(
                        timeout=min(remaining, self._settings.stall_seconds / 4)
                    )
                except queue.Empty:
                    continue
            out = self._convert(block)
            self._report_loss(now)
            if out.shape[0] == 0:
                continue  # the resampler is still filling its filter; nothing to hand out
            if self._lost_since is not None:
                # Back only once audio has flowed for a stall period: a flapping USB
                # connection stays one outage (one warning, growing backoff), not a
                # warning and a reset backoff every time it blinks.
                if self._flow_since is None:
                    self._flow_since = now
                elif now - self._flow_since >= self._settings.stall_seconds:
                    self._recovered()
            return out

    # -- internals ---------------------------------------------------------------------

    def _callback(
        self, indata: npt.NDArray[np.float32], frames: int, time_info: Any, status: Any
    ) -> None:
        """PortAudio thread: copy into the queue and count problems; nothing else."""
        self._last_callback = time.monotonic()
        self._callbacks += 1
        if status and status.input_overflow:
            self._overflows += 1
        try:
            # PortAudio reuses indata's memory after we return, hence the copy.
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self._dropped += 1

    def _open_stream(self) -> None:
        settings = self._settings
        sd = _sd()
        # Device indexes and the device list change with hot-plug: always look again.
        refresh_devices()
        index, name = resolve_device(settings.device, min_channels=self._n_channels)
        try:
            info = sd.query_devices(index)
        except sd.PortAudioError as exc:
            raise CaptureError(f"cannot query input device {name!r}: {_one_line(exc)}") from None
        rate = settings.samplerate or round(float(info["default_samplerate"]))
        blocksize = max(1, round(settings.block_seconds * rate))
        stream = None
        try:
            stream = sd.InputStream(
                device=index,
                samplerate=rate,
                channels=self._n_channels,
                dtype="float32",
                blocksize=blocksize,
                latency=_LATENCY,
                callback=self._callback,
            )
            self._opened_at = self._last_callback = time.monotonic()
            self._callbacks = 0
            self._flow_since = None
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            if stream is not None:
                stream.close(ignore_errors=True)
            raise CaptureError(
                f"cannot open input device {name!r} at {rate} Hz with {self._n_channels} "
                f"channel(s): {_one_line(exc)} (check audio.device, audio.samplerate, "
                "audio.channels)"
            ) from None
        self._stream = stream
        self._device_name = name
        self._device_rate = rate
        self._resampler = (
            None
            if rate == self._target_rate
            else soxr.ResampleStream(rate, self._target_rate, self._n_channels, dtype="float32")
        )
        # During an outage "is back" is logged once audio flows; attempts are debug only.
        _LOGGER.log(
            logging.INFO if self._lost_since is None else logging.DEBUG,
            "capturing from input device %r (index %d) at %d Hz, channels %s, resampled to %d Hz",
            name,
            index,
            rate,
            ", ".join(settings.channel_names),
            self._target_rate,
        )

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                # abort, not stop: stop waits for buffers to drain, which a vanished
                # device may never do.
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception:
                _LOGGER.exception("error closing input device %r", self._device_name)
        # Blocks of the old stream are at its rate and resampler state: discard them.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._resampler = None

    def _health_problem(self, now: float) -> str | None:
        """Why the open stream is unusable, or None if it looks healthy."""
        sd = _sd()
        try:
            active = bool(self._stream.active)
        except sd.PortAudioError as exc:
            return f"PortAudio error: {_one_line(exc)}"
        if not active:
            return "the stream stopped"
        stall = self._settings.stall_seconds
        if self._callbacks == 0:
            if now - self._opened_at > stall * _FIRST_CALLBACK_STALLS:
                return f"no audio for {now - self._opened_at:.1f} s after opening"
        elif now - self._last_callback > stall:
            return f"no audio for {now - self._last_callback:.1f} s"
        return None

    def _schedule_retry(self) -> float:
        settings = self._settings
        delay = min(
            settings.reopen_max_seconds,
            settings.reopen_min_seconds * 2.0 ** min(self._failures, 30),
        )
        self._failures += 1
        self._next_attempt = time.monotonic() + delay
        return delay

    def _lose(self, reason: str) -> None:
        name = self._device_name
        self._close_stream()
        self._last_error = f"input device {name!r} is gone: {reason}"
        delay = self._schedule_retry()
        if self._lost_since is not None:
            # A reopened stream that never delivered: still the same outage, already
            # reported; one warning per outage, not per attempt.
            _LOGGER.debug(
                "input device %r still unusable (%s); retrying in %.1f s", name, reason, delay
            )
            return
        self._lost_since = time.monotonic()
        _LOGGER.warning(
            "input device %r is gone (%s); retrying in %.1f s — check the USB microphone "
            "/ audio.device",
            name,
            reason,
            delay,
        )

    def _try_reopen(self) -> None:
        try:
            self._open_stream()
        except CaptureError as exc:
            self._last_error = str(exc)
            delay = self._schedule_retry()
            # The loss was reported once already; repeating it every attempt floods logs.
            _LOGGER.debug("reopening the input device failed: %s; next try in %.1f s", exc, delay)
        except Exception:
            self._last_error = "unexpected error reopening the input device"
            delay = self._schedule_retry()
            _LOGGER.exception(
                "unexpected error reopening the input device; next try in %.1f s", delay
            )
        else:
            # Counted now, before the new stream's first block is handed out, so a reader
            # can tell that audio before and after this point is not contiguous.
            self._reopens += 1

    def _recovered(self) -> None:
        """Audio has flowed for a stall period after a loss or a failed first open (an
        open that never delivers, like a wedged device, is no recovery)."""
        now = time.monotonic()
        away = now - (self._lost_since if self._lost_since is not None else now)
        self._failures = 0
        self._lost_since = None
        self._last_error = None
        _LOGGER.info(
            "input device %r is back after %.1f s (reopen #%d)",
            self._device_name,
            away,
            self._reopens,
        )

    def _convert(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._resampler is None:
            return block
        out: npt.NDArray[np.float32] = self._resampler.resample_chunk(block)
        return out

    def _report_loss(self, now: float) -> None:
        """Warn (at most once a minute) when blocks were lost since the last report."""
        current = (self._overflows, self._dropped)
        if current == self._reported_loss or now - self._reported_at < _LOSS_REPORT_SECONDS:
            return
        overflows = current[0] - self._reported_loss[0]
        dropped = current[1] - self._reported_loss[1]
        self._reported_loss = current
        self._reported_at = now
        _LOGGER.warning(
            "audio lost: %d input overflow(s) and %d dropped block(s) since the last report; "
            "the reader is too slow or the system is overloaded",
            overflows,
            dropped,
        )
