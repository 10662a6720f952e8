"""``python -m bench``: serd's performance bench, one command.

Prints a table and writes the same figures as JSON (``bench/results/latest.json`` unless
``--out``); every figure is a median over repeated runs, with the machine and the load
average recorded.  See bench/README.md and docs/performance.md.

    .venv/bin/python -m bench                       # everything, shipped model (the long run)
    .venv/bin/python -m bench --quick               # shorter runs
    .venv/bin/python -m bench --model my-models/serd-emotion-6.tflite --only stream,model
    SERD_CORPORA=../shared/corpora .venv/bin/python -m bench   # speech from CREMA-D there
"""

from __future__ import annotations

import json
import os
import sys

# Pin BLAS/OpenMP pools to one thread *before* numpy is imported: the streaming figures
# are "at 1 thread".  Child processes that stand for what a user runs (serd --once, the
# daemon, the usual pipeline) get the original environment back (common.user_env).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
if "SERD_BENCH_ORIGINAL_THREADS" not in os.environ:
    os.environ["SERD_BENCH_ORIGINAL_THREADS"] = json.dumps(
        {k: os.environ.get(k) for k in _THREAD_VARS})
for _k in _THREAD_VARS:
    os.environ[_k] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.common import (  # noqa: E402
    RESULTS,
    ROOT,
    default_model,
    load_now,
    log,
    machine_info,
    rounded,
)

SECTIONS = ("model", "stream", "growth", "once", "usual", "daemon", "fleet", "gate")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="the .tflite to measure (its card beside it); default: the shipped "
                        "model serd-emotion-6.tflite of the serd installed")
    p.add_argument("--quick", action="store_true",
                   help="shorter audio, fewer repeats, 15 s daemon phases, 20 s fleet")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long run of the in-process parts (for tests; not figures)")
    p.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 5)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="folder of speech clips (default $SERD_CORPORA/cremad or "
                        "/ravdess, else the clips in tests/data)")
    p.add_argument("--mic-seconds", type=float, default=None,
                   help="length of each daemon phase (default 60, quick 15)")
    p.add_argument("--fleet-devices", type=int, default=100)
    p.add_argument("--fleet-procs", type=int, default=4,
                   help="worker processes hosting the fleet's devices (default 4)")
    p.add_argument("--fleet-seconds", type=float, default=None,
                   help="audio per fleet device (default 60, quick 20)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    return p.parse_args(argv)


def _git() -> dict[str, Any]:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_serd": bool(git("status", "--porcelain", "--", "serd"))}


# -- floors ---------------------------------------------------------------------------------

FLOORS: list[tuple[str, tuple[str, ...], str, float]] = [
    # name, path in results, comparison, limit
    ("stream: CPU s / s speech (1 thread)", ("stream", "speech", "cpu_s_per_audio_s"), "<=", 0.005),
    ("stream: CPU s / s silence", ("stream", "silence", "cpu_s_per_audio_s"), "<=", 0.0005),
    ("serd --once 3 s clip: wall s", ("once", "wall_s"), "<=", 0.3),
    ("serd --once 3 s clip: peak RSS MB", ("once", "peak_rss_mb"), "<=", 80),
    ("usual / serd: cold wall", ("usual", "ratios_usual_over_serd", "cold_wall_x"), ">=", 10),
    ("usual / serd: peak memory", ("usual", "ratios_usual_over_serd", "peak_memory_x"), ">=", 5),
    ("daemon: CPU % silence", ("daemon", "silence", "cpu_pct_of_one_core"), "<=", 2),
    ("daemon: CPU % speech", ("daemon", "speech", "cpu_pct_of_one_core"), "<=", 10),
    ("daemon: peak RSS MB", ("daemon", "peak_rss_mb"), "<=", 100),
    ("latency end->subscriber p95 ms", ("daemon", "speech", "latency_window", "p95_ms"), "<=", 250),
    ("fleet: every event accounted for", ("fleet", "all_accounted"), "==", 1),
    ("gate: false utterances / h of office noise",
     ("gate", "gates", "voiced", "noise", "all", "false_utterances_per_hour"), "<=", 6),
    ("gate: speech clips found in office noise",
     ("gate", "gates", "voiced", "scenes", "coverage"), ">=", 0.995),
]


def _get(d: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def check_floors(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, path, op, limit in FLOORS:
        v = _get(results, path)
        if v is None:
            continue
        val = float(v)
        ok = {"<=": val <= limit, ">=": val >= limit, "==": val == limit}[op]
        out.append({"floor": name, "value": val, "limit": f"{op} {limit:g}", "met": ok})
    return out


# -- the table ------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def table(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []

    def sec(title: str) -> None:
        rows.append(("", "", ""))
        rows.append((f"## {title}", "", ""))

    def row(name: str, value: Any, note: str = "") -> None:
        rows.append((name, _fmt(value), note))

    m = res["machine"]
    lines = [
        f"serd bench  {res['date_utc']}  git {res['git']['commit']}"
        f"{' (serd/ modified)' if res['git']['dirty_serd'] else ''}  mode {res['mode']}",
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_mb']} MB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}, numpy {m['numpy']}, "
        f"ai-edge-litert {m['ai_edge_litert']}, tensorflow {m['tensorflow']}, "
        f"librosa {m['librosa']}",
        f"load average at start {m['load_avg_at_start']}, at end {res.get('load_avg_at_end')}",
        f"model: {res['model']['path']}",
    ]
    s = res.get("model_stats")
    if s:
        sec("model")
        row("file size KB", s["file_bytes"] / 1024)
        row("parameters", s["parameters"], "counted from the tflite graph")
        row("MACs per window", s["macs_per_window"], ", ".join(
            f"{k} {v}" for k, v in s["macs_by_op"].items()))
        row("int8 invoke ms / window", s["invoke_ms"], "median, 1 thread")
        row("Classifier call ms / window", s["classifier_call_ms"],
            "normalise + quantise + invoke + dequantise")
        if "voice_branch_cpu_ms_per_speech_s" in s:
            row("voice branch CPU ms / s of speech", s["voice_branch_cpu_ms_per_speech_s"],
                "mel + 2 LSTM layers (100 steps) + regression, "
                f"{s.get('voice_lstm', 'numpy float32')}, 1 thread")
            row("voice trunk file KB", s["voice_trunk_bytes"] / 1024, "models/voice-trunk.npz")
    st = res.get("stream")
    if st:
        sec("streaming, 1 thread, Daemon.process_block, 50 ms blocks (CPU s per s of audio)")
        for name, r in st.items():
            sg = r["stages_cpu_s_per_audio_s"]
            row(f"{name}: CPU s / s", r["cpu_s_per_audio_s"],
                f"{r['audio_s']:.0f} s audio x{r['repeats']}, {r['windows']} windows, "
                f"x{r['realtime_factor_x']:.0f} real time")
            row(f"  {name}: stages CPU s / s", None,
                "gate+windows {gate:.2g}, features {features:.2g}, inference {inference:.2g}, "
                "decisions {decisions:.2g}, other {other:.2g}".format(**sg))
    g = res.get("growth")
    if g:
        sec("growth (mixed call audio per channel; speech for the hop)")
        for k, r in g["channels"].items():
            row(f"{k} channel(s): CPU s / s of audio", r["cpu_s_per_audio_s"],
                f"per channel {r['cpu_s_per_channel_s']:.3g}")
        for h, r in g["hop"].items():
            row(f"hop {h} s: CPU s / s of speech", r["cpu_s_per_audio_s"],
                f"{r['windows']} windows in {r['audio_s']:.0f} s")
    o = res.get("once")
    if o:
        sec("serd --once, 3-second clip, fresh process")
        row("wall s", o["wall_s"], f"median of {o['repeats']}")
        row("CPU s", o["cpu_s"])
        row("peak RSS MB", o["peak_rss_mb"])
        imp = o.get("imports", {})
        row("heavy imports", ", ".join(imp.get("heavy_modules_imported", [])) or "none",
            "of: tensorflow keras librosa scipy paho sounddevice ...")
    u = res.get("usual")
    if u:
        sec("the usual pipeline (librosa + Keras Conv1D/LSTM) vs serd")
        uc, uw = u["usual"]["cold"], u["usual"]["warm"]
        row("usual cold: wall s", uc["wall_s"],
            f"import {uc['import_s']:.2f}, load {uc['model_load_s']:.2f}, "
            f"first clip {uc['first_clip_s']:.2f}")
        row("usual cold: CPU s", uc["cpu_s"])
        row("usual cold: peak RSS MB", uc["peak_rss_mb"])
        row("usual warm: s per clip", uw["per_clip_s"], f"CPU {uw['per_clip_cpu_s']:.3g}")
        row("serd warm: s per clip", u["serd"]["warm"]["per_clip_s"],
            f"CPU {u['serd']['warm']['per_clip_cpu_s']:.3g}")
        r = u["ratios_usual_over_serd"]
        for k, v in r.items():
            row(f"usual / serd {k}", v)
    d = res.get("daemon")
    if d:
        sec(f"daemon on the virtual microphone ({d['seconds_per_phase']:.0f} s per phase)")
        for ph in ("silence", "speech"):
            p = d[ph]
            row(f"{ph}: CPU % of one core", p["cpu_pct_of_one_core"],
                f"RSS median {p['rss_mb_median']:.1f} MB, {p['events']} events; main "
                f"thread {p['cpu_pct_main_thread']:.2f} %, other threads "
                + " ".join(f"{v:.2f}" for v in p["cpu_pct_other_threads"]))
        row("peak RSS MB (VmHWM)", d["peak_rss_mb"])
        lw, lu = d["speech"]["latency_window"], d["speech"]["latency_utterance"]
        row("latency window end->subscriber p50 ms", lw["p50_ms"], f"n={lw['n']}")
        row("latency p95 ms", lw["p95_ms"])
        row("latency p99 ms", lw["p99_ms"])
        row("latency utterance events p95 ms", lu["p95_ms"], f"n={lu['n']}")
    f = res.get("fleet")
    if f:
        sec(f"fleet: {f['devices']} devices in {f['processes']} processes -> one Mosquitto")
        row("all events accounted for", f["all_accounted"],
            f"{f['devices_complete']}/{f['devices']} devices, {f['events_counted']} events, "
            f"{f['duplicates']} duplicates")
        row("events / s", f["events_per_s"])
        row("workers CPU % (steady)", f["workers_cpu_pct_of_one_core"],
            f"{f['workers_cpu_s_per_device_audio_s']:.3g} CPU s per device-second")
        row("broker CPU %", f["broker_cpu_pct_of_one_core"])
        row("latency p50 / p95 / p99 ms", None, "{p50:.0f} / {p95:.0f} / {p99:.0f}".format(
            **f["latency_window_ms"]))
    gt = res.get("gate")
    if gt:
        from bench.gate import CATEGORIES  # noqa: PLC0415

        sec("gate (voiced): speech placed in synthetic office noise; noise alone (bench.gate)")
        for name, r in gt["gates"].items():
            sc, nz, cpu = r["scenes"], r["noise"], r["cpu_s_per_audio_s"]
            row(f"{name}: frame precision / recall", None,
                f"{sc['frame_precision']:.3f} / {sc['frame_recall']:.3f}, "
                f"{sc['clips']} clips at -45..-20 dBFS")
            row(f"{name}: clips found", sc["coverage"])
            row(f"{name}: false utterances / h", nz["all"]["false_utterances_per_hour"],
                ", ".join(f"{c} {nz[c]['false_utterances_per_hour']:.1f}" for c in CATEGORIES)
                + f"; {nz['all']['seconds'] / 3600:.2f} h of noise")
            row(f"{name}: gate CPU s / s", None, ", ".join(
                f"{k} {v:.2g}" for k, v in cpu.items()))
    meta = res.get("sections")
    if meta:
        sec("load average (1 min) at start / end of each section")
        for k, v in meta.items():
            row(k, None, f"{v['load_1m_start_end'][0]} / {v['load_1m_start_end'][1]}, "
                         f"section took {v['wall_s']:.0f} s")
    fl = res.get("floors")
    if fl:
        sec("floors")
        for x in fl:
            row(x["floor"], x["value"], f"{x['limit']}: {'met' if x['met'] else 'NOT MET'}")
    body = [r for r in rows if r[0] and not r[0].startswith("## ")]
    w1 = max(len(r[0]) for r in body)
    w2 = max(len(r[1]) for r in body if r[1] != "None")
    for a, b, c in rows:
        if a.startswith("## ") or not a:
            lines.append(a)
        else:
            lines.append(f"{a:<{w1}}  {'' if b == 'None' else b:>{w2}}  {c}".rstrip())
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    model = (args.model or default_model()).resolve()
    if not model.is_file():
        print(f"bench: model {model} does not exist; pass --model FILE (a .tflite with its "
              "card beside it)", file=sys.stderr)
        return 2
    chosen = [s for s in (args.only.split(",") if args.only else SECTIONS) if s]
    unknown = [s for s in chosen + args.skip.split(",") if s and s not in SECTIONS]
    if unknown:
        print(f"bench: unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    chosen = [s for s in chosen if s not in args.skip.split(",")]
    if args.smoke:
        chosen = [s for s in chosen if s in ("model", "stream", "growth", "once")]
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    repeats = args.repeats or {"smoke": 1, "quick": 3, "full": 5}[mode]
    seconds = {"smoke": (4, 4, 6), "quick": (20, 20, 40), "full": (60, 60, 120)}[mode]
    clip_count = {"smoke": 6, "quick": 30, "full": 60}[mode]

    import numpy as np  # noqa: PLC0415

    from bench import signals  # noqa: PLC0415

    RESULTS.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "repeats": repeats,
        "git": _git(),
        "machine": machine_info(),
        "model": {"path": str(model)},
        "threads": "interpreter num_threads=1; BLAS/OpenMP pinned to 1 thread in-process",
    }
    log(f"model {model}; sections {','.join(chosen)}; mode {mode}")
    try:
        clips = signals.find_clips(args.corpus, clip_count)
    except FileNotFoundError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    audio = [signals.load_clip(c) for c in clips]
    speech = signals.continuous_speech(audio, seconds[0])
    silence = signals.room_noise(seconds[1])
    mixed = signals.mixed_call(audio, seconds[2])
    clip3 = signals.write_wav(RESULTS / "audio" / "clip3s.wav",
                              signals.continuous_speech(audio, 3.0))
    res["audio"] = {
        "source": str(clips[0].parent), "clips": len(clips),
        "speech_s": seconds[0], "silence_s": seconds[1], "mixed_s": seconds[2],
        "mixed_loud_fraction": signals.speech_fraction(mixed),
        "once_clip": str(clip3),
    }

    def section(name: str, fn: Callable[[], Any], key: str | None = None) -> None:
        if name not in chosen:
            return
        log(f"{name} ...")
        l0, t0 = load_now(), time.monotonic()
        try:
            out = fn()
        except Exception as exc:
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            res.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            return
        res.setdefault("sections", {})[name] = {
            "load_1m_start_end": [l0, load_now()], "wall_s": time.monotonic() - t0}
        res[key or name] = out

    def model_section() -> dict[str, Any]:
        from bench import model_stats  # noqa: PLC0415
        from serd.windows import windows_of  # noqa: PLC0415

        wins = windows_of(speech[: 16000 * 4])
        window = wins[0].features if wins else None
        return model_stats.run(model, window, repeats=60 if args.smoke else 300)

    def stream_section() -> dict[str, Any]:
        from bench import throughput  # noqa: PLC0415

        out = throughput.run_streaming(
            model, {"speech": speech, "silence": silence, "mixed": mixed}, repeats)
        for r in out.values():
            _cpu_stages(r)
        return out

    def growth_section() -> dict[str, Any]:
        from bench import throughput  # noqa: PLC0415

        out = throughput.run_growth(model, speech, mixed, repeats)
        for group in out.values():
            for r in group.values():
                _cpu_stages(r)
        return out

    def once_section() -> dict[str, Any]:
        from bench import coldstart  # noqa: PLC0415

        return coldstart.run(model, clip3, 2 if args.smoke else max(repeats, 5))

    def usual_section() -> dict[str, Any]:
        from bench import usual  # noqa: PLC0415

        files = [clip3, *clips[: 10 if mode == "full" else 5]]
        return usual.run(model, clip3, files, max(3, repeats), res.get("once"))

    def daemon_section() -> dict[str, Any]:
        from bench import daemon_mic  # noqa: PLC0415

        secs = args.mic_seconds or (15.0 if args.quick else 60.0)
        return daemon_mic.run(model, speech, silence, secs)

    def fleet_section() -> dict[str, Any]:
        from bench import fleet  # noqa: PLC0415

        secs = args.fleet_seconds or (20.0 if args.quick else 60.0)
        return fleet.run(model, mixed, args.fleet_devices, args.fleet_procs, secs)

    def gate_section() -> dict[str, Any]:
        from bench import gate  # noqa: PLC0415

        sizes = {"smoke": (6, 2, 10.0), "quick": (36, 4, 60.0), "full": (96, 8, 300.0)}[mode]
        return gate.run(args.corpus or gate.corpora_root(None), clips=sizes[0],
                        per_scene=sizes[1], noise_seconds=sizes[2], names=["voiced"], log=log)

    section("model", model_section, "model_stats")
    section("stream", stream_section)
    section("growth", growth_section)
    section("once", once_section)
    section("usual", usual_section)
    section("daemon", daemon_section)
    section("fleet", fleet_section)
    section("gate", gate_section)

    if "model_stats" in res:
        res["model"].update({k: res["model_stats"][k] for k in ("name", "runtime")})
    res["floors"] = check_floors(res)
    res["machine"]["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    res["load_avg_at_end"] = res["machine"]["load_avg_at_end"]
    out = rounded(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(table(out))
    print(f"\nwritten: {args.out}")
    _ = np
    return 1 if res.get("errors") else 0


def _cpu_stages(r: dict[str, Any]) -> None:
    """Stage times are wall (perf_counter); scale their shares to the measured CPU."""
    st = r["stages_s_per_audio_s"]
    wall_total = r["wall_s_per_audio_s"]
    stages = {k: v for k, v in st.items() if k != "other"}
    stages["other"] = max(0.0, wall_total - sum(stages.values()))
    total = sum(stages.values()) or 1.0
    r["stages_cpu_s_per_audio_s"] = {
        k: r["cpu_s_per_audio_s"] * v / total for k, v in stages.items()}
    r["stages_share"] = {k: v / total for k, v in stages.items()}


if __name__ == "__main__":
    raise SystemExit(main())
