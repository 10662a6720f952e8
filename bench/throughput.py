"""Streaming throughput: CPU seconds per second of audio through ``Daemon.process_block``.

The audio is fed from memory, faster than real time, in 50 ms blocks (the daemon's
default capture block), through the daemon's own processing path: every channel's
:class:`~serd.pipeline.Pipeline` (gate, features, inference, decisions) and the emotion
event payloads, handed to a publisher that only counts them (the spool and MQTT are
measured with the real daemon, see ``bench.daemon_mic``).  The interpreter runs with one
thread and the bench pins BLAS to one thread, so process CPU time is the cost on one core.

Per-stage seconds come from ``Pipeline.times`` (perf_counter, i.e. wall time inside
each stage; its ``gate`` is the windower's time minus the MFCC time, so it holds the
block levels, the gate and the windowing).  ``other`` is what process_block spends
outside the pipelines (event payloads, block plumbing).  The bench shows each stage's
share of the measured CPU time.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median

BLOCK = 800  # 50 ms at 16 kHz, the daemon's capture block


class CountingPublisher:
    """An :class:`~serd.publisher.EventPublisher` that keeps nothing (counts events)."""

    def __init__(self) -> None:
        self.events = 0

    def start(self) -> None:
        pass

    def publish_event(self, kind: str, payload: Mapping[str, Any]) -> int | None:
        self.events += 1
        return self.events

    def publish_health(self, fields: Mapping[str, Any]) -> None:
        pass

    def publish_retained(self, suffix: str, payload: Mapping[str, Any]) -> None:
        pass

    def stats(self) -> Any:
        from serd.publisher import PublisherStats  # noqa: PLC0415

        return PublisherStats(connected=True, spool_depth=0, dropped=0, held_in_memory=0,
                              sent=self.events, rejected=0, connects=1)

    def close(self, timeout_seconds: float = 5.0) -> None:
        pass


class NoSource:
    is_open = True
    device_name = "bench"
    overflows = 0
    reopens = 0

    def open(self) -> None:
        pass

    def read(self, timeout_seconds: float) -> None:
        return None

    def close(self) -> None:
        pass


def load_model(model: Path, hop_seconds: float | None = None) -> Any:
    """A 1-thread :class:`~serd.model.Classifier`, optionally with another window hop."""
    from serd.model import Classifier, ModelSettings, load_classifier  # noqa: PLC0415

    clf = load_classifier(ModelSettings(path=str(model), num_threads=1))
    if hop_seconds is None or hop_seconds == clf.card.windows.hop_seconds:
        return clf
    card = dataclasses.replace(
        clf.card, windows=dataclasses.replace(clf.card.windows, hop_seconds=hop_seconds)
    )
    return Classifier(clf.path, card, num_threads=1, voice=clf.voice)


def make_daemon(clf: Any, channels: int, state_dir: str) -> Any:
    from serd.capture import AudioSettings  # noqa: PLC0415
    from serd.config import Config  # noqa: PLC0415
    from serd.daemon import Daemon  # noqa: PLC0415
    from serd.model import ModelSettings  # noqa: PLC0415

    names = ("main",) if channels == 1 else tuple(f"ch{i}" for i in range(channels))
    cfg = Config(
        device_id="bench",
        state_dir=state_dir,
        model=ModelSettings(path=str(clf.path)),
        audio=AudioSettings(channels=names),
    )
    return Daemon(cfg, source=NoSource(), publisher=CountingPublisher(), classifier=clf)


def stream_once(clf: Any, audio: np.ndarray, state_dir: str) -> dict[str, Any]:
    """One pass of (samples,) or (samples, channels) audio; CPU, wall and stage seconds."""
    x = audio if audio.ndim == 2 else audio[:, None]
    daemon = make_daemon(clf, x.shape[1], state_dir)
    now = 1.7e9
    blocks = [np.ascontiguousarray(x[i : i + BLOCK]) for i in range(0, x.shape[0], BLOCK)]
    c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    for b in blocks:
        now += b.shape[0] / 16000
        daemon.process_block(b, now)
    for pipe in daemon.pipelines:
        pipe.flush()
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    thread_cpu = time.thread_time() - t0
    seconds = x.shape[0] / 16000
    stages = {"gate": 0.0, "features": 0.0, "inference": 0.0, "decisions": 0.0}
    for pipe in daemon.pipelines:
        t = pipe.times
        for k in stages:
            stages[k] += getattr(t, k)
    return {
        "audio_s": seconds,
        "cpu_s": cpu,
        "thread_cpu_s": thread_cpu,
        "wall_s": wall,
        "stages_s": stages,
        "windows": daemon.counters.windows,
        "utterances": daemon.counters.utterances,
        "events": daemon.counters.events,
    }


def measure(clf: Any, audio: np.ndarray, repeats: int) -> dict[str, Any]:
    """Median over ``repeats`` passes (a fresh daemon each), per second of audio."""
    with tempfile.TemporaryDirectory(prefix="serd-bench-") as tmp:
        stream_once(clf, audio[: 16000 * 2], tmp)  # warm-up: first-call costs out of the way
        runs = [stream_once(clf, audio, tmp) for _ in range(repeats)]
    sec = runs[0]["audio_s"]
    cpu = [r["cpu_s"] / sec for r in runs]
    mid = sorted(runs, key=lambda r: r["cpu_s"])[len(runs) // 2]
    stages = {k: v / sec for k, v in mid["stages_s"].items()}
    stages["other"] = max(0.0, mid["cpu_s"] / sec - sum(stages.values()))
    return {
        "audio_s": sec,
        "repeats": len(runs),
        "cpu_s_per_audio_s": median(cpu),
        "cpu_s_per_audio_s_runs": cpu,
        "thread_cpu_s_per_audio_s": median(r["thread_cpu_s"] / sec for r in runs),
        "wall_s_per_audio_s": median(r["wall_s"] / sec for r in runs),
        "realtime_factor_x": sec / median(r["wall_s"] for r in runs),
        "stages_s_per_audio_s": stages,
        "windows": mid["windows"],
        "utterances": mid["utterances"],
        "events": mid["events"],
    }


def run_streaming(model: Path, signals: Mapping[str, np.ndarray], repeats: int) -> dict[str, Any]:
    clf = load_model(model)
    return {name: measure(clf, audio, repeats) for name, audio in signals.items()}


def run_growth(
    model: Path,
    speech: np.ndarray,
    mixed: np.ndarray,
    repeats: int,
    *,
    channel_counts: Sequence[int] = (1, 2, 4),
    hops: Sequence[float] = (0.25, 0.5, 1.0),
) -> dict[str, Any]:
    """Cost vs analysed channels (mixed audio, each channel a different part of it) and
    vs window hop (continuous speech)."""
    clf = load_model(model)
    out: dict[str, Any] = {"channels": {}, "hop": {}}
    n = mixed.size
    for k in channel_counts:
        # Channel i hears the mix rotated by i/k of its length: different turns per channel.
        multi = np.stack([np.roll(mixed, i * n // max(k, 1)) for i in range(k)], axis=1)
        r = measure(clf, multi, repeats)
        r["cpu_s_per_channel_s"] = r["cpu_s_per_audio_s"] / k
        out["channels"][str(k)] = r
    for hop in hops:
        c = load_model(model, hop)
        out["hop"][str(hop)] = measure(c, speech, repeats)
    return out
