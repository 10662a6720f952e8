"""Soak: hours of mixed audio through the daemon's streaming path, as fast as it goes.

    python -m bench.soak                       # 2 audio-hours, stdout publisher to /dev/null
    python -m bench.soak --hours 0.2 --model my-models/serd-emotion-6.tflite
    python -m bench.soak --publisher mqtt      # a private Mosquitto on a free port

What runs is the daemon's own loop body, ``Daemon._step``: a looping
:class:`~serd.replay.ReplaySource` at ``speed=0`` (files decoded and resampled block by
block, a new decoder and resampler for every file on every pass), every channel's
pipeline (VAD, MFCC, windows, the TFLite model, smoothing), the alert rules (enabled),
events through the real spool (SQLite WAL, one fsync per event) and publisher, health
reports.  The daemon's clock is simulated (it advances with the audio), so timestamps,
alert timing and the health interval behave as in real time.

The mix (written to a temporary folder): speech clips with pauses (CREMA-D from
tests/data), full-scale clipped speech, pink-ish noise, silence, a tone with vibrato, an
8 kHz file, a 44.1 kHz stereo file.

Measured every ``--sample-minutes`` of audio: resident memory (VmRSS), open file
descriptors (/proc/self/fd), threads.  After a warm-up (10 % of the run, at most 10
audio-minutes) the run passes when RSS grew by less than ``--max-rss-growth-mb`` (5 MB)
and the fd and thread counts are where they were.  It prints a summary, writes JSON
(``--out``, default bench/results/soak.json) and exits 1 on failure.  This is not part of
CI (it takes minutes); docs/reliability.md records its numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from bench.common import ROOT, bench_broker, default_model

if TYPE_CHECKING:
    from serd_testkit import Broker

DATA = ROOT / "tests" / "data"
RATE = 16000


# -- measurements ---------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def sample(audio_s: float, wall_s: float, daemon: Any) -> dict[str, Any]:
    stats = daemon.publisher.stats()
    return {
        "audio_min": round(audio_s / 60, 2),
        "wall_s": round(wall_s, 2),
        "rss_mb": round(_status_kb("VmRSS") / 1024, 2),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": _status_kb("Threads"),
        "py_threads": threading.active_count(),
        "events": daemon.counters.events,
        "utterances": daemon.counters.utterances,
        "spool_depth": stats.spool_depth,
        "gc_objects": len(gc.get_objects()),
    }


# -- the mix --------------------------------------------------------------------------------


def write_mix(d: Path) -> list[Path]:
    from serd.decode import load  # noqa: PLC0415

    rng = np.random.default_rng(1)
    clips = [load(p, RATE) for p in sorted(DATA.glob("*.flac"))]
    if not clips:
        raise SystemExit(f"no clips in {DATA}")
    files: list[Path] = []

    def out(name: str, x: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> None:
        p = d / name
        sf.write(p, x, rate, subtype=subtype)
        files.append(p)

    speech = []
    for _ in range(3):
        for c in clips:
            speech += [c, np.zeros(int(rng.integers(RATE // 3, 2 * RATE)), np.float32)]
    out("speech.wav", np.concatenate(speech))
    out("clipped.wav", np.clip(np.concatenate(clips[:4]) * 25, -1, 1))
    white = rng.normal(0, 1, 20 * RATE)
    pinkish = np.cumsum(white) * 0.002
    pinkish -= np.convolve(pinkish, np.ones(400) / 400, mode="same")
    out("noise.wav", (0.03 * pinkish / (np.abs(pinkish).max() + 1e-9)).astype(np.float32))
    out("silence.wav", np.zeros(10 * RATE, np.float32))
    t = np.arange(8 * RATE) / RATE
    out("tone.wav", (0.3 * np.sin(2 * np.pi * (220 + 15 * np.sin(2 * np.pi * 5 * t)) * t))
        .astype(np.float32))
    from serd.decode import Resampler  # noqa: PLC0415

    mix8 = np.concatenate(clips[4:8])
    out("narrowband_8k.wav", Resampler(RATE, 8000)(mix8, last=True), 8000)
    mix44 = Resampler(RATE, 44100)(np.concatenate(clips[::-1]), last=True)
    out("stereo_44k.wav", np.stack([mix44, 0.5 * mix44], axis=1), 44100, "PCM_24")
    return files


# -- publishers -----------------------------------------------------------------------------


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from serd.config import parse  # noqa: PLC0415
    from serd.daemon import Daemon  # noqa: PLC0415
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415
    from serd.publisher import StdoutPublisher  # noqa: PLC0415
    from serd.replay import ReplaySource  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="serd-soak-"))
    broker: Broker | None = None
    try:
        files = write_mix(work)
        clf = load_classifier(ModelSettings(path=args.model))
        doc: dict[str, Any] = {
            "device_id": "soak", "state_dir": str(work / "state"),
            "health_interval_seconds": 30.0, "model": {"path": args.model},
            "alerts": {"enabled": True},
        }
        if args.publisher == "mqtt":
            broker = bench_broker(work / "broker").start()
            doc["mqtt"] = {"host": broker.host, "port": broker.port}
        cfg = parse(doc)
        audio_s = 0.0
        t0_epoch = time.time()

        def clock() -> float:
            return t0_epoch + audio_s

        devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        publisher = (StdoutPublisher("soak", work / "state", stream=devnull)
                     if args.publisher == "stdout" else None)
        source = ReplaySource(files, clf.card.features.sample_rate, speed=0, loop=True,
                              gap_seconds=0.5)
        daemon = Daemon(cfg, source=source, publisher=publisher, classifier=clf, clock=clock)
        daemon.publisher.start()
        source.open()
        if args.publisher == "mqtt":
            deadline = time.monotonic() + 15
            while not daemon.publisher.stats().connected and time.monotonic() < deadline:
                time.sleep(0.05)

        total_s = args.hours * 3600
        warmup_s = min(600.0, 0.1 * total_s)
        every_s = args.sample_minutes * 60
        samples: list[dict[str, Any]] = []
        baseline: dict[str, Any] | None = None
        next_sample = 0.0
        rate = float(daemon.rate)
        started = time.monotonic()
        gc.collect()
        print(f"soak: {args.hours:g} audio-hours of {len(files)} looping files through "
              f"Daemon._step (model {clf.name}, {args.publisher} publisher)", flush=True)
        while audio_s < total_s:
            before = daemon._samples
            daemon._step(0.0)
            audio_s += (daemon._samples - before) / rate
            if audio_s >= next_sample:
                s = sample(audio_s, time.monotonic() - started, daemon)
                samples.append(s)
                if baseline is None and audio_s >= warmup_s:
                    gc.collect()
                    baseline = sample(audio_s, time.monotonic() - started, daemon)
                    baseline["baseline"] = True
                    samples.append(baseline)
                print(f"  {s['audio_min']:7.1f} audio-min  {s['wall_s']:7.1f} s  "
                      f"RSS {s['rss_mb']:6.1f} MB  fds {s['fds']:3d}  threads "
                      f"{s['threads']:2d}  events {s['events']:6d}  "
                      f"spool {s['spool_depth']}", flush=True)
                next_sample += every_s
        wall = time.monotonic() - started
        if args.publisher == "mqtt":  # let the broker catch up before the final sample
            deadline = time.monotonic() + 30
            while daemon.publisher.stats().spool_depth and time.monotonic() < deadline:
                time.sleep(0.1)
        gc.collect()
        final = sample(audio_s, wall, daemon)
        samples.append(final)
        assert baseline is not None
        after = [s for s in samples if s["audio_min"] * 60 >= warmup_s]
        result = {
            "audio_hours": round(audio_s / 3600, 3),
            "wall_seconds": round(wall, 1),
            "speed_x_realtime": round(audio_s / wall, 1),
            "model": clf.name,
            "model_path": args.model,
            "publisher": args.publisher,
            "files": [p.name for p in files],
            "events": daemon.counters.events,
            "alerts": daemon.counters.alerts,
            "utterances": daemon.counters.utterances,
            "windows": daemon.counters.windows,
            "publisher_stats": dataclasses.asdict(daemon.publisher.stats()),
            "loop_errors": daemon.counters.loop_errors,
            "warmup_audio_min": round(warmup_s / 60, 1),
            "rss_baseline_mb": baseline["rss_mb"],
            "rss_final_mb": final["rss_mb"],
            "rss_max_after_warmup_mb": max(s["rss_mb"] for s in after),
            "rss_growth_mb": round(final["rss_mb"] - baseline["rss_mb"], 2),
            # VmHWM is updated lazily by the kernel: take the larger of it and the samples.
            "peak_rss_mb": round(max(_status_kb("VmHWM") / 1024,
                                     *(s["rss_mb"] for s in samples)), 2),
            "fds_baseline": baseline["fds"], "fds_final": final["fds"],
            "fds_max_after_warmup": max(s["fds"] for s in after),
            "threads_baseline": baseline["threads"], "threads_final": final["threads"],
            "threads_max_after_warmup": max(s["threads"] for s in after),
            "limits": {"max_rss_growth_mb": args.max_rss_growth_mb},
            "machine": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count()},
            "samples": samples,
        }
        result["pass"] = bool(
            result["rss_growth_mb"] < args.max_rss_growth_mb
            and result["fds_final"] == result["fds_baseline"]
            and result["threads_final"] == result["threads_baseline"]
            and result["loop_errors"] == 0
        )
        source.close()
        daemon.publisher.close(timeout_seconds=5.0)
        devnull.close()
        return result
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=2.0, help="audio-hours to process (2)")
    p.add_argument("--model", default=None,
                   help="model .tflite (default: the shipped one of the serd installed)")
    p.add_argument("--publisher", choices=("stdout", "mqtt"), default="stdout",
                   help="stdout (to /dev/null, through the spool) or mqtt (private broker)")
    p.add_argument("--sample-minutes", type=float, default=5.0,
                   help="measure every this many audio-minutes (5)")
    p.add_argument("--max-rss-growth-mb", type=float, default=5.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = p.parse_args(argv)
    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.model is None:
        args.model = str(default_model())
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"soak: {result['audio_hours']} audio-hours in {result['wall_seconds']} s "
          f"({result['speed_x_realtime']}x real time), {result['events']} events, "
          f"{result['utterances']} utterances")
    print(f"soak: RSS {result['rss_baseline_mb']} -> {result['rss_final_mb']} MB after "
          f"warm-up (growth {result['rss_growth_mb']} MB, limit {args.max_rss_growth_mb}); "
          f"fds {result['fds_baseline']} -> {result['fds_final']}; threads "
          f"{result['threads_baseline']} -> {result['threads_final']}; "
          f"loop errors {result['loop_errors']}")
    print(f"soak: {'PASS' if result['pass'] else 'FAIL'}; JSON in {out}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
