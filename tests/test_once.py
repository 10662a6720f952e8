"""``serd --once``: files and folders through the daemon's pipeline, JSON and timeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from serd.decode import load

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def serd(*args: str, cwd: Path | None = None, model: Path | None = None,
         ) -> subprocess.CompletedProcess[str]:
    extra = ["--model", str(model)] if model else []
    return subprocess.run(
        [sys.executable, "-m", "serd.cli", *extra, *args],
        capture_output=True, text=True, timeout=120, env=ENV, cwd=cwd, check=False,
    )


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_json_lines_schema(data_dir: Path, model_path: Path) -> None:
    clip = data_dir / "1001_IEO_ANG_HI.flac"
    r = serd("--once", str(clip), "--json", model=model_path)
    assert r.returncode == 0, r.stderr
    recs = records(r.stdout)
    windows = [x for x in recs if x["type"] == "window"]
    summaries = [x for x in recs if x["type"] == "summary"]
    assert len(summaries) == 1
    assert any(w["speech"] for w in windows)
    for w in windows:
        assert set(w) >= {"type", "file", "channel", "role", "start_s", "end_s", "speech",
                          "label", "confidence", "probs"}
        # A mono file, no channels named: one line, as the default microphone would be.
        assert (w["channel"], w["role"]) == ("main", "unspecified")
        assert w["file"] == str(clip)
        assert w["end_s"] > w["start_s"]
        if w["speech"]:
            assert abs(sum(w["probs"].values()) - 1.0) < 0.02
    s = summaries[0]
    assert set(s) >= {"type", "file", "duration_s", "speech_s", "label", "confidence", "probs"}
    assert abs(s["duration_s"] - sf.info(str(clip)).duration) < 0.02
    assert 0 < s["speech_s"] <= s["duration_s"]
    assert s["label"] in (*s["probs"], None)


def test_timeline_on_a_terminal_is_readable(data_dir: Path, model_path: Path) -> None:
    r = serd("--once", str(data_dir / "1091_TIE_SAD_XX.flac"), model=model_path)
    assert r.returncode == 0, r.stderr
    assert "verdict:" in r.stdout
    assert "utterance" in r.stdout
    # A 2.2 s clip is one window, and the count reads as English.
    assert "(1 window)" in r.stdout


def test_bad_files_one_line_each_good_files_still_processed(
    tmp_path: Path, data_dir: Path, model_path: Path
) -> None:
    good = tmp_path / "good.flac"
    shutil.copy(data_dir / "1091_TIE_NEU_XX.flac", good)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    truncated = tmp_path / "truncated.wav"
    sf.write(truncated, np.zeros(16000, np.float32), 16000)
    truncated.write_bytes(truncated.read_bytes()[:30])
    r = serd("--once", str(tmp_path), str(tmp_path / "missing.wav"), "--json", model=model_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("serd: ")]
    assert len(errors) == 4, r.stderr
    for name in ("empty.wav", "text.wav", "truncated.wav", "missing.wav"):
        assert any(name in e for e in errors), name
    summaries = [x for x in records(r.stdout) if x["type"] == "summary"]
    assert [Path(s["file"]).name for s in summaries] == ["good.flac"]


def test_any_rate_and_channel_count(tmp_path: Path, data_dir: Path, model_path: Path) -> None:
    clip = data_dir / "1001_IEO_SAD_HI.flac"
    x = load(clip, 16000)
    up = soxr.resample(x, 16000, 44100)
    stereo = np.stack([up, up], axis=1)
    f44 = tmp_path / "stereo44k.wav"
    sf.write(f44, stereo, 44100, subtype="PCM_24")
    a = records(serd("--once", str(clip), "--json", model=model_path).stdout)[-1]
    b = records(serd("--once", str(f44), "--json", model=model_path).stdout)[-1]
    assert a["label"] == b["label"]
    for k, v in a["probs"].items():
        assert abs(b["probs"][k] - v) < 0.1


def test_once_never_imports_training_libraries(data_dir: Path, model_path: Path) -> None:
    code = (
        "import sys\n"
        "from serd.cli import main\n"
        f"rc = main(['--model', {str(model_path)!r}, '--once', "
        f"{str(data_dir / '1001_IEO_HAP_HI.flac')!r}, '--json'])\n"
        "bad = [m for m in ('tensorflow', 'keras', 'librosa', 'tf_keras') if m in sys.modules]\n"
        "assert rc == 0 and not bad, (rc, bad)\n"
        "print('clean')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout


def test_config_error_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("vad:\n  threshold_dB: 3\n")
    r = serd("--config", str(cfg), "--once", "x.wav")
    assert r.returncode == 78
    assert r.stderr.strip().count("\n") == 0
    assert "vad.threshold_dB" in r.stderr and "threshold_db" in r.stderr


def test_model_error_is_one_line(tmp_path: Path) -> None:
    r = serd("--model", str(tmp_path / "none.tflite"), "--once", "x.wav")
    assert r.returncode == 65
    assert "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
