"""A fleet of simulated devices publishing to one Mosquitto on loopback.

Every device is a real :class:`~serd.daemon.Daemon` (its own Classifier, Pipeline,
:class:`~serd.publisher.MqttPublisher` with its own SQLite spool and MQTT connection,
unique device id and state dir) whose microphone is a :class:`~serd.replay.ReplaySource`
playing the call-like mix in real time (``speed`` 1.0; each device a different rotation
of it, start times staggered over a second).  On a small machine the devices are hosted
by a few worker processes, each running its daemons in threads (``Daemon.run``), rather
than one process per device: 100 Python interpreters would measure the interpreters.

At the end every device's ``seq`` range is checked at the subscriber: each device must
have delivered exactly the events its daemon counted, numbered 1..n without a gap.

    python -m bench.fleet worker SPEC.json     # one worker process (used by run())
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, bench_broker, log, median, percentile, proc_cpu_seconds
from bench.signals import RATE, write_wav
from serd_testkit import Subscriber

VARIANTS = 10


# -- worker process --------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from serd.config import Config  # noqa: PLC0415
    from serd.daemon import Daemon  # noqa: PLC0415
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415
    from serd.publisher import MqttSettings  # noqa: PLC0415
    from serd.replay import ReplaySource  # noqa: PLC0415

    daemons = []
    for dev, audio, delay in zip(spec["devices"], spec["audio"], spec["delays"], strict=True):
        cfg = Config(
            device_id=dev,
            state_dir=str(Path(spec["state_root"]) / dev),
            log_level="warning",
            health_interval_seconds=30.0,
            model=ModelSettings(path=spec["model"], num_threads=1),
            mqtt=MqttSettings(host=spec["host"], port=spec["port"],
                              reconnect_min_seconds=0.2, reconnect_max_seconds=2.0),
        )
        # One interpreter per device: a LiteRT interpreter is not shared between threads.
        clf = load_classifier(cfg.model)
        src = ReplaySource([audio], RATE, block_seconds=0.05, speed=spec["speed"])
        daemons.append((Daemon(cfg, source=src, classifier=clf), delay))

    def run_one(d: Any, delay: float) -> None:
        time.sleep(delay)
        d.run()

    threads = [threading.Thread(target=run_one, args=dt, daemon=True) for dt in daemons]
    setup = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    pending = {id(d): d for d, _ in daemons}
    while pending:
        time.sleep(0.1)
        for key, d in list(pending.items()):
            if getattr(d.source, "finished", False):
                d.request_stop()
                del pending[key]
    for t in threads:
        t.join(timeout=60)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM, not ru_maxrss: a process forked from the bench inherits its high-water mark.
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text()
                  .splitlines() if line.startswith("VmHWM:"))
    return {
        "wall_s": time.monotonic() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "setup_cpu_s": setup.ru_utime + setup.ru_stime,
        "max_rss_mb": hwm_kb / 1024,
        "devices": {
            d.device_id: {
                "events": d.counters.events,
                "windows": d.counters.windows,
                "utterances": d.counters.utterances,
                "audio_s": d.counters.audio_seconds,
                "busy_s": d.counters.busy_seconds,
                "loop_errors": d.counters.loop_errors,
            }
            for d, _ in daemons
        },
    }


# -- driver ------------------------------------------------------------------------------


def run(model: Path, mixed: np.ndarray, devices: int, procs: int, seconds: float, *,
        speed: float = 1.0) -> dict[str, Any]:
    from serd.events import parse_iso_utc  # noqa: PLC0415

    work = RESULTS / "tmp" / "fleet"
    if work.exists():
        import shutil  # noqa: PLC0415

        shutil.rmtree(work)
    work.mkdir(parents=True)
    n = int(seconds * RATE)
    tiled = np.tile(mixed, -(-n // mixed.size) + 1)
    files = [write_wav(work / f"mix{k}.wav", np.roll(tiled, -k * mixed.size // VARIANTS)[:n])
             for k in range(VARIANTS)]
    ids = [f"fleet-{i:03d}" for i in range(devices)]
    rng = np.random.default_rng(1)
    delays = rng.uniform(0, 1.0, devices).tolist()
    procs = max(1, min(procs, devices))
    with bench_broker(work / "broker") as broker:
        sub = Subscriber(broker, "serd/+/emotion", persistent=False).connect()
        broker_cpu0 = proc_cpu_seconds(broker.proc.pid) if broker.proc else 0.0
        workers = []
        t0 = time.monotonic()
        for p in range(procs):
            mine = list(range(p, devices, procs))
            spec = {
                "host": broker.host, "port": broker.port, "model": str(model),
                "state_root": str(work / "state"), "speed": speed,
                "devices": [ids[i] for i in mine],
                "audio": [str(files[i % VARIANTS]) for i in mine],
                "delays": [delays[i] for i in mine],
            }
            spec_path = work / f"worker{p}.json"
            spec_path.write_text(json.dumps(spec))
            out = (work / f"worker{p}.out").open("wb")
            err = (work / f"worker{p}.err").open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "bench.fleet", "worker",
                                     str(spec_path)], stdout=out, stderr=err,
                                    cwd=Path(__file__).resolve().parent.parent)
            workers.append((proc, out, err, p))
        log(f"fleet: {devices} devices in {procs} processes, {seconds:.0f} s of audio each")
        results: list[dict[str, Any]] = []
        child_cpu = 0.0
        for proc, out, err, p in workers:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.close()
            err.close()
            child_cpu += usage.ru_utime + usage.ru_stime
            text = (work / f"worker{p}.out").read_text().strip()
            if proc.returncode != 0 or not text:
                raise RuntimeError(f"fleet worker {p} failed ({proc.returncode}): "
                                   + (work / f"worker{p}.err").read_text()[-1500:])
            results.append(json.loads(text.splitlines()[-1]))
        wall = time.monotonic() - t0
        broker_cpu = (proc_cpu_seconds(broker.proc.pid) if broker.proc else 0.0) - broker_cpu0
        counted = {dev: r for w in results for dev, r in w["devices"].items()}
        expected = sum(r["events"] for r in counted.values())

        def unique_count() -> int:
            return len({(m.fields.get("device_id"), m.fields.get("seq"))
                        for m in sub.snapshot()})

        deadline = time.monotonic() + 30
        while unique_count() < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        msgs = sub.snapshot()
        sub.close()
    seqs: dict[str, list[int]] = defaultdict(list)
    latency: list[float] = []
    for m in msgs:
        seqs[m.fields["device_id"]].append(int(m.fields["seq"]))
        if m.fields.get("type") == "window":
            latency.append((m.received_epoch - parse_iso_utc(m.fields["end"])) * 1000)
    complete, incomplete = 0, []
    duplicates = 0
    for dev in ids:
        want = counted.get(dev, {}).get("events", -1)
        got = seqs.get(dev, [])
        duplicates += len(got) - len(set(got))
        if sorted(set(got)) == list(range(1, want + 1)):
            complete += 1
        else:
            incomplete.append({"device": dev, "counted": want, "received": len(set(got))})
    audio = sum(r["audio_s"] for r in counted.values())
    steady_cpu = sum(w["cpu_s"] - w["setup_cpu_s"] for w in results)
    steady_wall = median(w["wall_s"] for w in results)
    return {
        "devices": devices,
        "processes": procs,
        "devices_per_process": devices / procs,
        "speed": speed,
        "audio_s_per_device": seconds,
        "wall_s": wall,
        "events_counted": expected,
        "events_received_unique": len({(m.fields.get("device_id"), m.fields.get("seq"))
                                       for m in msgs}),
        "duplicates": duplicates,
        "devices_complete": complete,
        "devices_incomplete": incomplete[:10],
        "all_accounted": complete == devices,
        "events_per_s": expected / wall,
        "latency_window_ms": {"n": len(latency), "p50": percentile(latency, 50),
                              "p95": percentile(latency, 95), "p99": percentile(latency, 99)},
        "workers_cpu_s": child_cpu,
        "workers_setup_cpu_s": child_cpu - steady_cpu,
        # Steady state: after the workers' start-up (imports, model loads) was done.
        "workers_cpu_s_per_device_audio_s": steady_cpu / max(audio, 1e-9),
        "workers_cpu_pct_of_one_core": 100 * steady_cpu / steady_wall,
        "worker_peak_rss_mb_median": median(w["max_rss_mb"] for w in results),
        "broker_cpu_pct_of_one_core": 100 * broker_cpu / wall,
        "loop_errors": sum(r["loop_errors"] for r in counted.values()),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        spec = json.loads(Path(sys.argv[2]).read_text())
        result = worker(spec)
        print(json.dumps(result), flush=True)
        return
    raise SystemExit("usage: python -m bench.fleet worker SPEC.json (run by python -m bench)")


if __name__ == "__main__":
    main()
