"""``vad.backend: webrtc`` without the optional webrtcvad package is a configuration error
(one line, exit 78, so systemd does not restart it), not a traceback when the gate is built."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from serd.config import parse
from serd.validate import ConfigError

HAS_WEBRTCVAD = importlib.util.find_spec("webrtcvad") is not None


def test_webrtc_backend_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "webrtcvad" else real(name, *a))
    with pytest.raises(ConfigError, match=r"my\.yaml: vad\.backend: 'webrtc' needs the "
                                          r"webrtcvad package"):
        parse({"vad": {"backend": "webrtc", "confirm": "silero"}}, "my.yaml")
    parse({"vad": {"backend": "energy"}}, "my.yaml")  # the others need nothing


def test_webrtc_backend_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "webrtcvad" else real(name, *a))
    assert parse({"vad": {"backend": "webrtc"}}, "my.yaml").vad.backend == "webrtc"


@pytest.mark.skipif(HAS_WEBRTCVAD, reason="webrtcvad is installed here")
@pytest.mark.parametrize("mode", [["--check-config"], ["--once"]])
def test_check_config_and_once_say_so_in_one_line(tmp_path: Path, data_dir: Path,
                                                   mode: list[str]) -> None:
    cfg = tmp_path / "my.yaml"
    cfg.write_text("vad:\n  backend: webrtc\n", encoding="utf-8")
    args = [*mode, str(data_dir / "1001_IEO_ANG_HI.flac")] if mode == ["--once"] else mode
    r = subprocess.run([sys.executable, "-m", "serd.cli", "--config", str(cfg), *args],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"serd: configuration error: {cfg}: vad.backend: 'webrtc' needs the webrtcvad package "
        "(pip install webrtcvad-wheels), which is not installed; or set vad.backend: voiced "
        "or energy"]
