"""The daemon: capture -> (per channel) pipeline -> events -> publisher, under systemd.

One processing loop on the main thread reads blocks from the audio source, runs each
channel's :class:`~serd.pipeline.Pipeline`, turns decisions into events and hands them to
the publisher (which spools them on disk and delivers them from its own thread).  The loop
feeds systemd's watchdog itself, so a stalled pipeline trips it; every I/O problem it can
survive (microphone gone, broker down) is logged in one line and retried, and systemd's
``Restart=always`` is the outer guard.

SIGTERM/SIGINT stop capture, close open utterances, flush what can be sent, publish
``offline`` and exit 0 within a few seconds.  SIGHUP is logged and ignored (the
configuration is read at start only: ``systemctl restart serd`` applies a change), SIGUSR1
logs one status line; neither stops the daemon.

Every timer (health period, alert clearing, stall and reconnect waits) runs on the
monotonic clock, so a wall-clock step (NTP's first sync on a Pi without a real-time
clock) delays nothing; events keep wall-clock timestamps.

The state directory is checked and locked before anything is spooled (serd.statedir): an
unusable one, or one held by another serd, ends the daemon in one line with an exit code
systemd does not loop on.  Each analysed line's voice reference is kept there across
restarts (serd.linestate): restored at start, saved every few minutes and at stop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from serd import __version__, notify
from serd.alerts import AlertEngine
from serd.config import EXIT_STATE, EXIT_TEMPFAIL, Config
from serd.decisions import Decision
from serd.discovery import Discovery
from serd.events import STATUS_SUFFIX, EmotionResult, emotion_event, status_event
from serd.linestate import LineKeeper
from serd.model import Classifier, load_classifier
from serd.pipeline import ChannelSet
from serd.publisher import EventPublisher, make_publisher
from serd.roles import LAWFUL_USE_DOC, UNSPECIFIED, describe
from serd.state import STATE_SUFFIX, Availability, LiveState
from serd.statedir import StateDirBusyError, StateDirError, StateLock, prepare

_LOGGER = logging.getLogger(__name__)

READY_GRACE_SECONDS = 10.0


class AudioSource(Protocol):
    """What the loop needs from the microphone (``serd.capture.Capture`` or a file replay)."""

    def open(self) -> None: ...
    def read(self, timeout_seconds: float) -> npt.NDArray[np.float32] | None: ...
    def close(self) -> None: ...
    @property
    def is_open(self) -> bool: ...
    @property
    def device_name(self) -> str | None: ...
    @property
    def overflows(self) -> int: ...
    @property
    def reopens(self) -> int: ...


@dataclass
class Counters:
    started_monotonic: float
    audio_seconds: float = 0.0
    busy_seconds: float = 0.0
    windows: int = 0
    utterances: int = 0
    events: int = 0
    """Emotion events published (window and utterance)."""
    alerts: int = 0
    """Alert events published (a rule starting or clearing; serd.alerts)."""
    loop_errors: int = 0


class Daemon:
    """Wires the stages together; :meth:`run` is the processing loop."""

    def __init__(
        self,
        cfg: Config,
        *,
        source: AudioSource | None = None,
        publisher: EventPublisher | None = None,
        classifier: Classifier | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.device_id = cfg.resolved_device_id
        self.classifier = classifier or load_classifier(cfg.model)
        self.rate = self.classifier.card.features.sample_rate
        if source is None:
            from serd.capture import Capture  # noqa: PLC0415  (sounddevice only when needed)

            source = Capture(cfg.audio, target_rate=self.rate)
        self.source = source
        # Only channels whose role is analysed get a pipeline (serd.roles): an agent
        # channel feeds the bleed muting and nothing else, so it never reaches events,
        # health, state, discovery or alerts (they all see self.channels).
        self.channel_set = ChannelSet(self.classifier, cfg.audio.resolved_channels,
                                      vad=cfg.vad, decisions=cfg.decisions,
                                      crosstalk=cfg.audio.bleed_mute)
        self.pipelines = self.channel_set.pipelines
        self.channels = tuple(c.name for c in self.channel_set.analysed)
        self.roles = {c.name: c.role for c in self.channel_set.analysed}
        """Role of each analysed channel (customer, unspecified, ...); never agent."""
        self.publisher = publisher or make_publisher(
            cfg.mqtt, self.device_id, cfg.resolved_state_dir
        )
        self.clock = clock
        # Timers; a simulated wall clock (bench.soak) is monotonic by construction.
        self.monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self.stop_event = threading.Event()
        self.counters = Counters(time.monotonic())
        self._samples = 0  # samples per channel since start, at the model rate
        self._anchor: tuple[int, float] | None = None  # (sample count, epoch seconds)
        self._reopens_seen = 0
        self._ready = False
        self._last_health: float | None = None  # monotonic
        self._signals: list[int] = []  # SIGHUP/SIGUSR1 seen by the handler, for the loop
        self._state_lock: StateLock | None = None
        self._interval_audio = 0.0
        self._interval_busy = 0.0
        self._rtf = 0.0
        self.on_decision: Callable[[Decision, dict[str, Any]], None] | None = None
        # Alert rules (serd.alerts; a no-op unless alerts.enabled) and Home Assistant
        # discovery (its own small MQTT connection; None unless discovery.enabled).
        self.alerts = AlertEngine(cfg.alerts, device_id=self.device_id,
                                  model=self.classifier.name, labels=self.classifier.labels,
                                  roles=self.roles)
        self.discovery = Discovery(
            cfg.discovery, cfg.mqtt, device_id=self.device_id, channels=self.channels,
            labels=self.classifier.labels, model=self.classifier.name,
            rules=[r.name for r in cfg.alerts.rules] if cfg.alerts.enabled else (),
        ) if cfg.discovery.enabled else None
        # Retained current state and degraded/online status for late joiners (serd.state).
        self.live = LiveState(self.device_id, self.classifier.name, self.channels, roles=self.roles)
        self.availability = Availability()
        # Each line's voice reference outlives a restart (serd.linestate); None when the
        # model has none or it is frozen (model.adapt: false).
        voice = self.classifier.card.voice
        self.lines = LineKeeper.for_streams(
            cfg.resolved_state_dir, voice.head_sha256 if voice is not None else None,
            {name: getattr(p.model, "reference", None)
             for name, p in zip(self.channels, self.pipelines, strict=True)})

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            _LOGGER.info("received %s: stopping", signal.Signals(signum).name)
            self.stop_event.set()

        def later(signum: int, _frame: FrameType | None) -> None:
            # Only note it: the loop logs it (a handler interrupts arbitrary code).
            self._signals.append(signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        # Their default action kills the process without a flush, and systemd counts
        # death by SIGHUP as clean (no restart): neither may stop the daemon.
        signal.signal(signal.SIGHUP, later)
        signal.signal(signal.SIGUSR1, later)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                _LOGGER.warning("received SIGHUP: ignored; the configuration is read at start "
                                "only (systemctl restart serd applies a change)")
            else:
                h = self.health()
                _LOGGER.info(
                    "received SIGUSR1: %s; %d events, spool %d, %s, input %s",
                    "running", h["events"], h["spool_depth"],
                    "connected" if h["connected"] else "broker unreachable",
                    "open" if h["input_open"] else "missing",
                )

    def run(self) -> int:
        """Run until :meth:`request_stop` (or a signal); returns the exit code."""
        if self._state_lock is None:
            self._state_lock, refused = take_state_dir(self.cfg)
            if self._state_lock is None:
                return refused
        try:
            self.publisher.start()
        except StateDirError as exc:
            _LOGGER.error("%s", exc)
            self._unlock_state_dir()
            return EXIT_STATE
        if self.lines is not None:
            self.lines.restore()  # the state directory is ours now
        # State only: the microphone is opened below, so health is judged from the loop.
        self._publish_live(self.clock(), force=True, health=False)
        if self.discovery is not None:
            self.discovery.start()
        self._log_roles()
        notify.status(f"opening input device {self.cfg.audio.device or '(default)'}")
        self._open_source()
        watchdog = notify.watchdog_interval_seconds()
        # Feed the watchdog at least twice per interval, from this loop only.
        read_timeout = min(0.5, watchdog / 4) if watchdog else 0.5
        try:
            while not self.stop_event.is_set():
                try:
                    self._step(read_timeout)
                except Exception:
                    # Keep the device alive through a bug in one block; systemd's watchdog
                    # and Restart= remain the outer guard if it keeps failing.
                    self.counters.loop_errors += 1
                    _LOGGER.exception("processing failed; continuing with the next block")
                    time.sleep(min(1.0, 0.05 * self.counters.loop_errors))
                notify.watchdog()
        finally:
            self._shutdown()
        return 0

    def _log_roles(self) -> None:
        """Once at start: whose voice is analysed, and a pointer where it is not declared."""
        _LOGGER.info("%s", describe(self.cfg.audio.resolved_channels))
        unspecified = [c for c in self.channel_set.analysed if c.role == UNSPECIFIED]
        if unspecified:
            _LOGGER.warning(
                "channel %s has no declared role and is analysed as 'unspecified': in the EU "
                "an employee's (agent's) voice must not be analysed; declare the caller's "
                "channel as customer and the agent's as agent, see %s",
                ", ".join(c.name for c in unspecified), LAWFUL_USE_DOC)

    def _open_source(self) -> None:
        try:
            self.source.open()
        except Exception as exc:  # a missing mic is not fatal: read() keeps retrying
            _LOGGER.warning("cannot open the input device yet: %s (will keep retrying)", exc)
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self._ready:
            return
        waited = time.monotonic() - self.counters.started_monotonic
        if not self.source.is_open and waited >= READY_GRACE_SECONDS:
            # A microphone missing at boot must not make systemd kill and restart us in a
            # loop: report ready-but-degraded and keep retrying the device.
            self._ready = True
            notify.ready("input device missing: retrying (check audio.device)")
            _LOGGER.warning("no input device after %.0f s; running and retrying", waited)
            return
        if self.source.is_open:
            self._ready = True
            notify.ready(f"listening on {self.source.device_name} ({len(self.channels)} ch), "
                         f"model {self.classifier.name}")
            _LOGGER.info("ready: input %s, channels %s, model %s, publishing to %s",
                         self.source.device_name, ",".join(self.channels), self.classifier.name,
                         self.cfg.mqtt.host or "stdout")

    def _shutdown(self) -> None:
        notify.stopping("stopping: flushing events")
        try:
            self.source.close()
        except Exception:
            _LOGGER.exception("closing the input device failed")
        try:
            # Every analysed channel, with what bleed muting still holds.
            self._publish(self.channel_set.flush())
        except Exception:
            _LOGGER.exception("flushing the channels failed")
        try:
            self._publish_alerts(self.alerts.close(self.clock()))
        except Exception:
            _LOGGER.exception("clearing alerts failed")
        try:
            self._publish_live(self.clock(), force=True, health=False)
        except Exception:
            _LOGGER.exception("publishing the final state failed")
        if self.lines is not None:
            try:
                self.lines.close()  # after the flush: the lines' last windows included
            except Exception:
                _LOGGER.exception("saving the line references failed")
        if self.discovery is not None:
            self.discovery.stop()
        self.publisher.close(timeout_seconds=3.0)
        self._unlock_state_dir()
        _LOGGER.info("stopped")

    def _unlock_state_dir(self) -> None:
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    # -- the loop --------------------------------------------------------------------

    def _step(self, timeout: float) -> None:
        block = self.source.read(timeout)
        now = self.clock()
        if self.source.reopens != self._reopens_seen:
            # The device came back: audio before and after the gap must not share a window.
            self._reopens_seen = self.source.reopens
            self._publish(self.channel_set.flush())
            self.channel_set.reset()
            self._anchor = None
        self._maybe_ready()
        if self._signals:
            self._handle_signals()
        if block is not None and block.size:
            self.process_block(block, now)
        self._publish_alerts(self.alerts.tick(now, self.monotonic()))
        self._publish_live(now)
        self._maybe_health(now)
        if self.lines is not None:
            self.lines.tick(self.monotonic())

    def process_block(self, block: npt.NDArray[np.float32], now: float) -> list[Decision]:
        """Run one (frames, channels) block through every channel; publish its events."""
        t0 = time.perf_counter()
        frames = block.shape[0]
        self._samples += frames
        # The block's last sample was captured (about) now: anchor stream time to wall time.
        self._anchor = (self._samples, now)
        out: list[Decision] = []
        out.extend(self.channel_set(block))
        self._publish(out)
        busy = time.perf_counter() - t0
        audio = frames / self.rate
        self.counters.audio_seconds += audio
        self.counters.busy_seconds += busy
        self._interval_audio += audio
        self._interval_busy += busy
        return out

    def epoch_of(self, stream_seconds: float) -> float:
        if self._anchor is None:
            return self.clock()
        samples, epoch = self._anchor
        return epoch - (samples / self.rate - stream_seconds)

    def _publish(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.type == "window":
                self.counters.windows += 1
            else:
                self.counters.utterances += 1
            if not d.probs:
                continue
            start = self.epoch_of(d.start_s)
            end = max(self.epoch_of(d.end_s), start)
            payload = emotion_event(
                self.device_id,
                EmotionResult(
                    type=d.type,
                    channel=d.channel,
                    role=self.roles.get(d.channel, UNSPECIFIED),
                    start_epoch_seconds=start,
                    end_epoch_seconds=end,
                    label=d.label,
                    confidence=min(1.0, max(0.0, d.confidence)),
                    probs=d.probs,
                    model=self.classifier.name,
                ),
                now_epoch_seconds=self.clock(),
            )
            self.publisher.publish_event("emotion", payload)
            self.counters.events += 1
            self.live(payload)
            if self.on_decision is not None:
                self.on_decision(d, payload)
            self._publish_alerts(
                self.alerts.observe(d, start, end, self.clock(), self.monotonic()))

    def _publish_alerts(self, alerts: list[dict[str, Any]]) -> None:
        for payload in alerts:
            self.publisher.publish_event("alert", payload)
            self.counters.alerts += 1
            self.live(payload)

    def _publish_live(self, now: float, *, force: bool = False, health: bool = True) -> None:
        """Retained status (degraded/online) and state, when they changed (serd.state)."""
        if health:
            change = self.availability(input_open=self.source.is_open,
                                       spool_depth=self.publisher.stats().spool_depth,
                                       now_monotonic=self.monotonic())
            if change is not None:
                self.publisher.publish_retained(STATUS_SUFFIX, status_event(
                    self.device_id, change.state, change.reason, version=__version__,
                    now_epoch_seconds=now))
        payload = self.live.due(self.monotonic(), now, force=force)
        if payload is not None:
            self.publisher.publish_retained(STATE_SUFFIX, payload)

    def health(self) -> dict[str, Any]:
        stats = self.publisher.stats()
        times = [p.times for p in self.pipelines]
        return {
            "uptime_s": round(time.monotonic() - self.counters.started_monotonic, 1),
            "rtf": round(self._rtf, 5),
            "audio_s": round(self.counters.audio_seconds, 1),
            "busy_s": round(self.counters.busy_seconds, 3),
            "overflows": int(self.source.overflows),
            # Blocks the capture queue dropped because this loop fell behind (CPU
            # starvation): audio lost just like an overflow, but counted by serd itself.
            "input_dropped_blocks": int(getattr(self.source, "dropped_blocks", 0)),
            "input_device": self.source.device_name,
            "input_open": bool(self.source.is_open),
            "input_reopens": int(self.source.reopens),
            "channels": list(self.channels),
            "roles": [self.roles[c] for c in self.channels],
            "in_speech": [p.in_speech for p in self.pipelines],
            # Seconds of analysed channels muted because the agent was speaking.
            "muted_s": round(self.channel_set.muted_seconds, 1),
            "windows": self.counters.windows,
            "utterances": self.counters.utterances,
            "events": self.counters.events,
            "spool_depth": stats.spool_depth,
            "spool_dropped": stats.dropped,
            "connected": stats.connected,
            "model": self.classifier.name,
            "model_sha256": self.classifier.sha256,
            "stage_seconds": {
                "gate": round(sum(t.gate for t in times), 3),
                "features": round(sum(t.features for t in times), 3),
                "inference": round(sum(t.inference for t in times), 3),
                "decisions": round(sum(t.decisions for t in times), 3),
            },
            "loop_errors": self.counters.loop_errors,
        }

    def _maybe_health(self, now: float) -> None:
        mono = self.monotonic()
        if (self._last_health is not None
                and mono - self._last_health < self.cfg.health_interval_seconds):
            return
        self._last_health = mono
        if self._interval_audio > 0:
            self._rtf = self._interval_busy / self._interval_audio
        self._interval_audio = self._interval_busy = 0.0
        h = self.health()
        try:
            self.publisher.publish_health(h)
        except Exception:
            _LOGGER.exception("publishing health failed")
        state = "listening" if h["input_open"] else "input device missing"
        notify.status(
            f"{state}; {h['utterances']} utterances, spool {h['spool_depth']}, "
            f"{'connected' if h['connected'] else 'broker unreachable'}, rtf {h['rtf']:.4f}"
        )


# While another serd holds the state directory, a daemon started by systemd polls for the
# lock this often, and asks systemd for this much more start-up time on each poll.
_LOCK_POLL_SECONDS = 2.0
_LOCK_EXTEND_USEC = 10_000_000


def take_state_dir(cfg: Config, *, wait: bool = False) -> tuple[StateLock | None, int]:
    """Check and lock the state directory: the lock, or None and the exit code (the
    reason is logged in one line).

    ``wait``: while another serd holds the lock, wait for it (one line, then quiet) rather
    than exit 75.  The service does this: exiting would be restarted every few seconds
    until systemd's start limit left the unit failed for good, whereas a manual serd run
    beside the service usually ends within minutes, and the service should then take over
    on its own.  Start-up time is extended on each poll (``EXTEND_TIMEOUT_USEC``) so that
    ``Type=notify``'s start timeout does not kill the waiting daemon.
    """
    said = False
    while True:
        try:
            lock = StateLock(prepare(cfg.resolved_state_dir)).acquire()
        except StateDirBusyError as exc:
            if not wait:
                _LOGGER.error("%s", exc)
                return None, EXIT_TEMPFAIL
            if not said:
                _LOGGER.error("%s; waiting for it to stop", exc)
                said = True
            notify.notify(f"EXTEND_TIMEOUT_USEC={_LOCK_EXTEND_USEC}",
                          "STATUS=waiting: another serd holds the state directory")
            time.sleep(_LOCK_POLL_SECONDS)
            continue
        except StateDirError as exc:
            _LOGGER.error("%s", exc)
            return None, EXIT_STATE
        if said:
            _LOGGER.warning("the state directory is free again: starting")
        return lock, 0


def run(cfg: Config) -> int:
    """``serd`` with no --once: the daemon until SIGTERM."""
    # Until the loop's handlers are installed (after the model has loaded, which takes
    # seconds on a small Pi), SIGHUP and SIGUSR1 would kill the daemon with their default
    # action, without a log line: they are ignored meanwhile, as documented.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # The state directory first: its faults end the start in one line, before the model
    # is loaded.
    # Started by systemd (it set NOTIFY_SOCKET for Type=notify): wait for a held state
    # directory; started by hand: say so and exit 75 at once.
    lock, refused = take_state_dir(cfg, wait=bool(os.environ.get("NOTIFY_SOCKET")))
    if lock is None:
        return refused
    try:
        daemon = Daemon(cfg)
    except BaseException:
        lock.release()
        raise
    daemon._state_lock = lock
    daemon.install_signal_handlers()
    return daemon.run()
