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
    assert _one(unit, "Service.Restart") == "on-failure"
    assert _one(unit, "Service.RestartSec") == "5"
    assert _one(unit, "Service.StateDirectory") == "serd"
    assert _one(unit, "Service.ExecStart").split()[:3] == [
        "/usr/local/bin/serd",
        "--config",
        "/etc/serd/config.yaml",
    ]
    assert _one(unit, "Install.WantedBy") == "multi-user.target"


def test_restart_prevented_for_config_and_model_errors(unit: dict[str, list[str]]) -> None:
    codes = {int(c) for c in _one(unit, "Service.RestartPreventExitStatus").split()}
    assert codes == {65, 78}  # EX_DATAERR (model), EX_CONFIG (configuration)
    config = pytest.importorskip("serd.config")
    assert {config.EXIT_DATAERR, config.EXIT_CONFIG} == codes


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
