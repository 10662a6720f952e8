"""serd side by side with the usual pipeline (librosa + Keras), on the same clips.

* cold: a fresh process that imports TensorFlow and librosa, loads the saved Keras model
  and predicts one clip (the same 3-second clip as ``serd --once`` in ``bench.coldstart``);
  wall time spawn to exit, peak RSS and CPU from ``wait4``; median of ``repeats``.
* warm: per-clip time once everything is loaded: ``librosa.load`` + MFCC + ``predict``
  against serd's ``analyse_file`` (decode, resample, gate, features, windows, inference,
  decisions: what ``serd --once`` does per file), same clips, median.

The usual pipeline keeps its default threading (TensorFlow uses every core), as people
run it; CPU seconds are reported next to wall time so the comparison is fair either way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, log, median, python, run_child, user_env

WORKER = Path(__file__).resolve().parent / "usual_worker.py"


def ensure_model() -> tuple[Path, int | None]:
    path = RESULTS / "cache" / "usual-conv1d-lstm.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    params = None
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        r = run_child([python(), str(WORKER), "make", str(path)], env=user_env())
        if r.rc != 0:
            raise RuntimeError(f"building the Keras model failed: {r.stderr[-800:]}")
        meta.write_text(r.stdout.strip().splitlines()[-1])
    params = json.loads(meta.read_text()).get("parameters")
    return path, params


def serd_warm(model: Path, clips: list[Path]) -> dict[str, Any]:
    from serd.config import Config  # noqa: PLC0415
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415
    from serd.once import analyse_file  # noqa: PLC0415

    cfg = Config(model=ModelSettings(path=str(model), num_threads=1))
    clf = load_classifier(cfg.model)
    analyse_file(cfg, clf, clips[0])
    wall, cpu = [], []
    for clip in clips:
        t0, c0 = time.perf_counter(), time.process_time()
        analyse_file(cfg, clf, clip)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"per_clip_s": median(wall), "per_clip_cpu_s": median(cpu), "clips": len(clips)}


def run(model: Path, clip3: Path, clips: list[Path], repeats: int,
        serd_cold: dict[str, Any] | None) -> dict[str, Any]:
    keras_model, params = ensure_model()
    env = user_env()
    cmd = [python(), str(WORKER), "cold", str(keras_model), str(clip3)]
    log("usual: cold starts")
    run_child(cmd, env=env)  # page cache
    runs = [run_child(cmd, env=env) for _ in range(repeats)]
    bad = [r for r in runs if r.rc != 0]
    if bad:
        raise RuntimeError(f"usual pipeline failed: {bad[0].stderr[-800:]}")
    inner = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    cold = {
        "wall_s": median(r.wall_s for r in runs),
        "wall_s_runs": [r.wall_s for r in runs],
        "cpu_s": median(r.cpu_s for r in runs),
        "peak_rss_mb": median(r.max_rss_mb for r in runs),
        "import_s": median(i["import_s"] for i in inner),
        "model_load_s": median(i["load_s"] for i in inner),
        "first_clip_s": median(i["first_clip_s"] for i in inner),
    }
    log("usual: warm per-clip")
    w = run_child([python(), str(WORKER), "warm", str(keras_model), *map(str, clips)], env=env)
    if w.rc != 0:
        raise RuntimeError(f"usual pipeline (warm) failed: {w.stderr[-800:]}")
    wj = json.loads(w.stdout.strip().splitlines()[-1])
    warm = {"per_clip_s": median(wj["per_clip_s"]), "per_clip_cpu_s": median(wj["per_clip_cpu_s"]),
            "clips": len(clips), "peak_rss_mb": w.max_rss_mb}
    ours = serd_warm(model, clips)
    out: dict[str, Any] = {
        "usual": {
            "description": "librosa.load (22050 Hz) + librosa MFCC (40) + Keras Conv1D/LSTM "
                           "model.predict, random weights",
            "keras_parameters": params,
            "cold": cold,
            "warm": warm,
        },
        "serd": {"warm": ours},
        "repeats": repeats,
    }
    ratios: dict[str, float] = {
        "per_clip_wall_x": warm["per_clip_s"] / ours["per_clip_s"],
        "per_clip_cpu_x": warm["per_clip_cpu_s"] / max(ours["per_clip_cpu_s"], 1e-9),
    }
    if serd_cold:
        out["serd"]["cold"] = {k: serd_cold[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        ratios["cold_wall_x"] = cold["wall_s"] / serd_cold["wall_s"]
        ratios["cold_cpu_x"] = cold["cpu_s"] / serd_cold["cpu_s"]
        ratios["peak_memory_x"] = cold["peak_rss_mb"] / serd_cold["peak_rss_mb"]
    out["ratios_usual_over_serd"] = ratios
    return out
