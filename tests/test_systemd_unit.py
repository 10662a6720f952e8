"""systemd/serd.service: the settings the daemon relies on, verify, and its exposure score.

``systemd-analyze`` (Debian package ``systemd``) works offline, without systemd running.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "serd.service"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd)",
)


def _settings(text: str) -> dict[str, list[str]]:
    """Unit file as ``{"Section.Key": [values...]}``; keys may repeat in systemd units."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return _settings(UNIT.read_text())


def _one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(key, [])
    assert len(values) == 1, f"{key} should be set exactly once, got {values}"
    return values[0]


def test_service_contract(unit: dict[str, list[str]]) -> None:
    assert _one(unit, "Service.Type") == "notify"
    assert _one(unit, "Service.NotifyAccess") == "main"
    assert _one(unit, "Service.WatchdogSec") == "30"
    # always: death by SIGHUP counts as clean, which on-failure would not restart.
    assert _one(unit, "Service.Restart") == "always"
    assert _one(unit, "Service.RestartSec") == "5"
    assert _one(unit, "Service.StateDirectory") == "serd"
    assert _one(unit, "Service.ExecStart").split()[:3] == [
        "/usr/local/bin/serd",
        "--config",
        "/etc/serd/config.yaml",
    ]
    assert _one(unit, "Install.WantedBy") == "multi-user.target"


def test_restart_prevented_for_config_model_and_storage_errors(
    unit: dict[str, list[str]],
) -> None:
    codes = {int(c) for c in _one(unit, "Service.RestartPreventExitStatus").split()}
    # EX_DATAERR (model), EX_CANTCREAT (state directory unusable), EX_CONFIG (configuration)
    assert codes == {65, 73, 78}
    config = pytest.importorskip("serd.config")
    assert {config.EXIT_DATAERR, config.EXIT_STATE, config.EXIT_CONFIG} == codes
    # Another serd holding the state dir is temporary: restarted (within the start limit).
    assert config.EXIT_TEMPFAIL not in codes


def _bytes(value: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_memory_start_limit_and_time_sync(unit: dict[str, list[str]]) -> None:
    """Issue 24: a bounded memory, a crash loop that ends, time-stamps after NTP."""
    high, top = _bytes(_one(unit, "Service.MemoryHigh")), _bytes(_one(unit, "Service.MemoryMax"))
    assert 100 << 20 <= high < top <= 400 << 20  # a 512 MB Pi keeps room for the rest
    interval = int(_one(unit, "Unit.StartLimitIntervalSec"))
    burst = int(_one(unit, "Unit.StartLimitBurst"))
    restart_sec = int(_one(unit, "Service.RestartSec"))
    assert interval > 0 and burst >= 3
    # A steady crash loop (one start per RestartSec) must trip the limit.
    assert interval / restart_sec > burst
    assert "time-sync.target" in _one(unit, "Unit.After").split()


def test_sandbox_keeps_audio_and_drops_the_rest(unit: dict[str, list[str]]) -> None:
    assert _one(unit, "Service.DynamicUser") == "yes"
    assert _one(unit, "Service.SupplementaryGroups") == "audio"
    assert "char-alsa rw" in unit["Service.DeviceAllow"]
    assert _one(unit, "Service.DevicePolicy") == "closed"
    # PrivateDevices=yes would hide /dev/snd.
    assert unit.get("Service.PrivateDevices", ["no"]) == ["no"]
    assert _one(unit, "Service.CapabilityBoundingSet") == ""
    assert _one(unit, "Service.ProtectSystem") == "strict"
    assert _one(unit, "Service.NoNewPrivileges") == "yes"
    # cffi's ffi.callback() (the PortAudio stream callback) needs write+execute memory.
    assert "Service.MemoryDenyWriteExecute" not in unit


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at an existing binary (serd is not installed here);
    the file name must stay serd.service."""
    text = UNIT.read_text()
    text, count = re.subn(
        r"^ExecStart=/usr/local/bin/serd",
        f"ExecStart={sys.executable} -m serd.cli",
        text,
        flags=re.MULTILINE,
    )
    assert count == 1
    copy = tmp_path / "serd.service"
    copy.write_text(text)
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_analyze
def test_verify(tmp_path: Path) -> None:
    done = _analyze("verify", "--recursive-errors=no", "--man=no", str(_runnable_copy(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "serd.service" not in done.stderr, done.stderr


@needs_analyze
def test_verify_original_only_misses_the_binary() -> None:
    done = _analyze("verify", "--recursive-errors=no", "--man=no", str(UNIT))
    problems = [line for line in done.stderr.splitlines() if "serd.service" in line]
    if shutil.which("/usr/local/bin/serd"):
        assert problems == []
    else:
        assert len(problems) == 1, problems
        assert "/usr/local/bin/serd is not executable" in problems[0]


@needs_analyze
def test_exposure_score(tmp_path: Path) -> None:
    done = _analyze("security", "--offline=true", "--no-pager", str(_runnable_copy(tmp_path)))
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for serd\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout[-2000:]
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout
