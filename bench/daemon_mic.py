"""The real daemon on a virtual microphone: steady-state CPU and RSS, and event latency.

The daemon runs as its own process, exactly as systemd starts it (``python -m serd.cli
--config FILE``), recording the default input of a private PulseAudio server whose null
sink is fed by ``paplay`` (48 kHz stereo in the sink; the daemon captures, downmixes and
resamples to 16 kHz itself).  It publishes to a private Mosquitto on loopback.

* CPU: utime+stime of the daemon process (all its threads: PortAudio callback, the
  processing loop, the MQTT network thread and the spool sender) from /proc/PID/stat
  over the measured stretch, as a percentage of one core.  paplay and PulseAudio are
  other processes and are not counted.
* RSS: /proc/PID/status VmRSS sampled every second (median and max) and VmHWM (peak).
* Latency: for every emotion event, the subscriber's ``time.time()`` on arrival minus the
  event's ``end`` (the wall time the window's last sample was captured: the daemon
  anchors stream time to the time each block is read from the capture queue).  Window
  events are the figure that matters; utterance events include the gate's hangover (the
  utterance is only over after ``hangover_seconds`` of silence), so they are listed apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import (
    RESULTS,
    bench_broker,
    log,
    median,
    percentile,
    proc_cpu_seconds,
    proc_status_kb,
    user_env,
)
from bench.signals import write_wav
from serd_testkit import Subscriber, VirtualMic

SETTLE_S = 3.0  # after "ready", before anything is measured
WARMUP_S = 2.0  # after playback starts, before the phase is measured


def latency_stats(events: list[Any], kind: str) -> dict[str, Any]:
    from serd.events import parse_iso_utc  # noqa: PLC0415

    lat = [(m.received_epoch - parse_iso_utc(m.fields["end"])) * 1000
           for m in events if m.fields.get("type") == kind]
    return {
        "n": len(lat),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"),
    }


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread (tid) of a process."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = proc_cpu_seconds(pid, int(tid))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _phase(pid: int, mic: VirtualMic, wav: Path, seconds: float, *, sub: Subscriber,
           device: str) -> dict[str, Any]:
    mic.play(wav, wait=False)
    time.sleep(WARMUP_S)
    sub.clear()
    rss: list[int] = []
    threads0 = _thread_cpu(pid)
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(proc_status_kb(pid)["VmRSS"])
    cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
    threads1 = _thread_cpu(pid)
    time.sleep(1.0)  # events of the last windows are in flight
    msgs = sub.snapshot()
    mic.stop()
    events = [m for m in msgs if m.topic == f"serd/{device}/emotion"]
    health = [m.fields for m in msgs if m.topic == f"serd/{device}/health"]
    per_thread = sorted(
        (100.0 * (v - threads0.get(tid, 0.0)) / (t1 - t0) for tid, v in threads1.items()
         if tid != pid), reverse=True)
    main = 100.0 * (threads1.get(pid, 0.0) - threads0.get(pid, 0.0)) / (t1 - t0)
    return {
        "seconds": t1 - t0,
        "cpu_pct_of_one_core": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        # The processing loop runs on the main thread; the others are PortAudio's
        # callback thread, PulseAudio's client thread, paho's network thread, the
        # spool sender and BLAS workers (unnamed, so listed by cost only).
        "cpu_pct_main_thread": main,
        "cpu_pct_other_threads": [round(v, 3) for v in per_thread if v > 0.005],
        "rss_mb_median": median(rss) / 1024,
        "rss_mb_max": max(rss) / 1024,
        "events": len(events),
        "latency_window": latency_stats(events, "window"),
        "latency_utterance": latency_stats(events, "utterance"),
        "daemon_health_rtf": health[-1].get("rtf") if health else None,
    }


def run(model: Path, speech: np.ndarray, silence: np.ndarray, seconds: float) -> dict[str, Any]:
    work = RESULTS / "tmp" / "daemon_mic"
    work.mkdir(parents=True, exist_ok=True)
    total = int((seconds + WARMUP_S + 5) * 16000)
    reps = -(-total // max(speech.size, 1))
    speech_wav = write_wav(work / "speech.wav", np.tile(speech, reps)[:total])
    reps = -(-total // max(silence.size, 1))
    silence_wav = write_wav(work / "room.wav", np.tile(silence, reps)[:total])
    device = "bench-mic"
    with VirtualMic() as mic, bench_broker(work / "broker") as broker:
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "device_id": device,
            "state_dir": str(work / "state"),
            "health_interval_seconds": 5.0,
            "model": {"path": str(model)},
            "mqtt": {"host": broker.host, "port": broker.port},
        }))
        sub = Subscriber(broker, f"serd/{device}/#", persistent=False).connect()
        log_path = work / "daemon.log"
        env = {**user_env(), **mic.settings, "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serd.cli", "--config", str(config)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while "ready: input" not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("daemon did not get ready: "
                                       + log_path.read_text(errors="replace")[-2000:])
                time.sleep(0.1)
            startup_rss = proc_status_kb(proc.pid)
            time.sleep(SETTLE_S)
            out: dict[str, Any] = {"seconds_per_phase": seconds}
            log(f"daemon_mic: silence ({seconds:.0f} s)")
            out["silence"] = _phase(proc.pid, mic, silence_wav, seconds, sub=sub, device=device)
            log(f"daemon_mic: speech ({seconds:.0f} s)")
            out["speech"] = _phase(proc.pid, mic, speech_wav, seconds, sub=sub, device=device)
            out["peak_rss_mb"] = proc_status_kb(proc.pid)["VmHWM"] / 1024
            out["rss_mb_after_start"] = startup_rss["VmRSS"] / 1024
        finally:
            sub.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        out["exit_code"] = proc.returncode
        text = log_path.read_text(errors="replace")
        out["tracebacks_in_log"] = text.count("Traceback")
    return out
