"""Cold start: ``serd --once`` on a 3-second clip in a fresh process.

Wall time is spawn to exit as the parent sees it (interpreter start-up, imports, model
load and check, decoding, the pipeline, printing); peak RSS and CPU come from ``wait4``
for that one child.  One untimed run first puts the files in the page cache, then the
median of ``repeats`` runs.  A separate ``-X importtime`` run lists what ``--once``
imports, so a heavy import it does not need shows up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import ChildRun, median, run_child, serd_command, user_env

HEAVY = ("tensorflow", "keras", "librosa", "scipy", "sklearn", "numba", "torch",
         "paho", "sounddevice", "jsonschema", "matplotlib")


def once_command(model: Path, clip: Path) -> list[str]:
    return [*serd_command(), "--once", str(clip), "--model", str(model), "--json", "-q"]


def import_profile(model: Path, clip: Path) -> dict[str, Any]:
    """Top-level imports of ``serd --once`` by cumulative time, and heavy ones present."""
    import sys  # noqa: PLC0415

    run = run_child([sys.executable, "-X", "importtime", "-m", "serd.cli", "--once",
                     str(clip), "--model", str(model), "--json", "-q"], env=user_env())
    rows: list[tuple[str, int, int]] = []  # (name, cumulative us, depth)
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        try:
            _, cum, name = line[len("import time:"):].split("|")
            us = int(cum.strip())
        except ValueError:
            continue
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((name.strip(), us, depth))
    modules = {name for name, _, _ in rows}
    top = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])[:10]
    return {
        "total_import_ms": sum(us for _, us, d in rows if d == 0) / 1000,
        "top_level_ms": {name: us / 1000 for name, us, _ in top},
        "heavy_modules_imported": sorted(
            h for h in HEAVY if h in modules or any(m.startswith(h + ".") for m in modules)
        ),
    }


def run(model: Path, clip: Path, repeats: int) -> dict[str, Any]:
    cmd = once_command(model, clip)
    env = user_env()
    warm = run_child(cmd, env=env)
    if warm.rc != 0:
        raise RuntimeError(f"serd --once failed ({warm.rc}): {warm.stderr[-500:]}")
    runs: list[ChildRun] = [run_child(cmd, env=env) for _ in range(repeats)]
    out = {
        "command": " ".join(["serd", *cmd[len(serd_command()):]]),
        "clip": str(clip),
        "repeats": repeats,
        "wall_s": median(r.wall_s for r in runs),
        "wall_s_runs": [r.wall_s for r in runs],
        "cpu_s": median(r.cpu_s for r in runs),
        "peak_rss_mb": median(r.max_rss_mb for r in runs),
        "peak_rss_mb_runs": [r.max_rss_mb for r in runs],
        "output_lines": len(runs[-1].stdout.splitlines()),
    }
    out["imports"] = import_profile(model, clip)
    return out
