"""Shared helpers: paths, statistics, the machine description, /proc readers, children.

Nothing here imports serd, TensorFlow or librosa, so ``bench.common`` is safe to import
before the thread-count environment variables are set (see ``bench/__main__.py``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serd_testkit import Broker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def default_model() -> Path:
    """The shipped model (what ``serd`` runs when model.path is null), where serd is installed."""
    from serd.model import DEFAULT_MODEL  # noqa: PLC0415  (numpy: after the thread pinning)

    return DEFAULT_MODEL


def bench_broker(workdir: Path) -> Broker:
    """The bench's private Mosquitto (the kit's, not started yet): nothing kept across
    restarts, room for a fleet's backlog and in-flight messages."""
    from serd_testkit import Broker  # noqa: PLC0415

    return Broker(workdir, persistence=False, max_queued_messages=1_000_000,
                  extra_config="max_inflight_messages 100")


# -- statistics ----------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return float(statistics.median(vals)) if vals else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), q in 0..100."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    pos = (len(vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return float(vals[lo] + (vals[hi] - vals[lo]) * (pos - lo))


def rounded(x: Any, digits: int = 6) -> Any:
    """Round floats (recursively) for the JSON file; significant digits, not decimals."""
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    return x


# -- the machine ---------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_mb": round(_mem_total_mb()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "soxr": _version("soxr"),
        "paho_mqtt": _version("paho-mqtt"),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "librosa": _version("librosa"),
        "load_avg_at_start": [round(v, 2) for v in load],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


# -- processes ------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a running process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a running process, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1])
    return out


@dataclass
class ChildRun:
    """One child process, timed from spawn to exit (wall), with its own rusage."""

    rc: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    stdout: str
    stderr: str


# Runs the command and reports *its* rusage.  Measuring from the bench itself would be
# wrong: a forked child starts with the parent's resident set, and Linux keeps the
# pre-exec high-water mark in ru_maxrss, so every child would "peak" at the bench's own
# size.  This wrapper is a small stdlib-only interpreter (python -S), so the child it
# forks starts small and ru_maxrss is the command's real peak.
_WRAPPER = r"""
import json, os, subprocess, sys, time
out, timeout, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
t0 = time.perf_counter()
p = subprocess.Popen(cmd)
while True:
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    if time.perf_counter() - t0 > timeout:
        p.kill()
        pid, status, ru = os.wait4(p.pid, 0)
        break
    time.sleep(0.001)
wall = time.perf_counter() - t0
rc = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
               "max_rss_kb": ru.ru_maxrss}, f)
"""


def run_child(
    cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600.0,
    cwd: Path | None = None,
) -> ChildRun:
    """Run ``cmd`` in a fresh process: wall time spawn to exit, CPU and peak RSS of that
    process alone (see ``_WRAPPER``)."""
    tmp = RESULTS / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    base = tmp / f"child-{os.getpid()}"
    out_path, err_path, ru_path = (base.with_suffix(s) for s in (".out", ".err", ".json"))
    ru_path.unlink(missing_ok=True)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        subprocess.run(
            [sys.executable, "-S", "-c", _WRAPPER, str(ru_path), str(timeout), *cmd],
            stdout=out, stderr=err, env=env, cwd=cwd or ROOT, check=False,
            timeout=timeout + 30,
        )
    ru = json.loads(ru_path.read_text())
    return ChildRun(
        rc=int(ru["rc"]),
        wall_s=float(ru["wall_s"]),
        cpu_s=float(ru["cpu_s"]),
        max_rss_mb=ru["max_rss_kb"] / 1024.0,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def python() -> str:
    return sys.executable


def serd_command() -> list[str]:
    """The ``serd`` console script beside this interpreter, else ``python -m serd.cli``."""
    script = Path(sys.executable).with_name("serd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "serd.cli"]


def user_env() -> dict[str, str]:
    """The environment the bench was started with (before it pinned thread counts)."""
    env = dict(os.environ)
    for key, value in json.loads(os.environ.get("SERD_BENCH_ORIGINAL_THREADS", "{}")).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.pop("SERD_BENCH_ORIGINAL_THREADS", None)
    return env


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    c0, w0 = time.process_time(), time.perf_counter()
    res = fn()
    return time.perf_counter() - w0, time.process_time() - c0, res


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
