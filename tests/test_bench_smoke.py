"""The bench's fast parts run and write their JSON (no timing assertions: figures from a
loaded CI machine mean nothing; ``python -m bench`` is for measuring)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_run_writes_every_fast_section(tmp_path: Path, model_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERD_BENCH")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--model", str(model_path),
         "--corpus", str(ROOT / "tests" / "data"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"]["cores"] >= 1
    assert res["machine"]["numpy"]
    assert "errors" not in res
    for name in ("speech", "silence", "mixed"):
        r = res["stream"][name]
        assert r["cpu_s_per_audio_s"] > 0
        assert set(r["stages_cpu_s_per_audio_s"]) == {"gate", "features", "inference",
                                                       "decisions", "other"}
    assert res["stream"]["silence"]["windows"] == 0
    assert res["stream"]["speech"]["windows"] >= 1
    assert set(res["growth"]["channels"]) == {"1", "2", "4"}
    assert set(res["growth"]["hop"]) == {"0.25", "0.5", "1.0"}
    m = res["model_stats"]
    assert m["parameters"] > 0
    assert m["macs_per_window"] > 0
    assert m["invoke_ms"] > 0
    once = res["once"]
    assert once["wall_s"] > 0
    assert once["peak_rss_mb"] > 0
    assert once["output_lines"] >= 1
    assert "tensorflow" not in once["imports"]["heavy_modules_imported"]
    assert {f["floor"] for f in res["floors"]} >= {"stream: CPU s / s speech (1 thread)"}
    assert "## floors" in done.stdout
