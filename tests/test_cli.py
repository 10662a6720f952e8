"""The command line tells the truth (issue 22 point 4; issue 21's "no speech found"):
usage errors in one line, --version, serd devices, --check-config that checks what the
daemon checks (and --probe), --once - from standard input, a closing summary and a
progress bar, per-emotion shares for long recordings, --publish that does not say "done"
while events are still spooled, -q without LiteRT's delegate line."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from serd import cli
from serd.config import EXIT_CONFIG
from serd.decisions import Decision
from serd.once import FileResult
from serd.report import NO_SPEECH, UNSURE, breakdown


def env() -> dict[str, str]:
    # At call time: the audio fixture points PortAudio at its private server in os.environ.
    return {**os.environ, "PYTHONWARNINGS": "ignore"}

CLIP = "1001_IEO_ANG_HI.flac"


def serd(*args: str, stdin: bytes | None = None, timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "serd.cli", *args], input=stdin, capture_output=True,
        timeout=timeout, env=env(), check=False,
    )
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                       r.stderr.decode())


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def config(tmp_path: Path, doc: dict[str, Any], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def serd_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("serd")]


# -- usage, version, help ------------------------------------------------------------


def test_json_without_once_is_a_one_line_usage_error() -> None:
    """Was: `serd --json` silently started the daemon."""
    for argv in (["--json"], ["--probe"], ["--wait", "3"], ["x.wav"],
                 ["--check-config", "--once", "x.wav"]):  # was: the files silently ignored
        r = serd(*argv, timeout=30)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
        assert r.stderr.startswith("serd: "), r.stderr
    assert "--json needs --once" in serd("--json", timeout=30).stderr


def test_version_names_package_model_and_runtime(model_path: Path) -> None:
    from serd import __version__  # noqa: PLC0415
    from serd.model import ModelCard, card_path_for  # noqa: PLC0415

    card = ModelCard.load(card_path_for(model_path))
    r = serd("--version", timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"serd {__version__}" in r.stdout
    assert card.name in r.stdout and card.sha256[:12] in r.stdout
    assert "runtime " in r.stdout and "litert" in r.stdout.lower()
    # ... with the runtime's installed version (two releases need not agree on int8).
    from importlib import metadata  # noqa: PLC0415

    assert f"runtime ai-edge-litert {metadata.version('ai-edge-litert')}" in r.stdout
    assert "serd forget" in serd("--help", timeout=30).stdout


def test_help_lists_what_libsndfile_reads_and_mp3_opus_aiff_are_read(
    tmp_path: Path, data_dir: Path, model_path: Path
) -> None:
    """Was: the docs said wav/flac/ogg while mp3/opus/aiff are read."""
    r = serd("--help", timeout=30)
    text = " ".join(r.stdout.split())
    for fmt in sf.available_formats():
        if fmt not in ("RAW", "OGG"):
            assert fmt in text, fmt
    assert "OGG/Vorbis/Opus" in text
    audio, rate = sf.read(data_dir / CLIP, dtype="float32")
    sf.write(tmp_path / "a.mp3", audio, rate, format="MP3")
    sf.write(tmp_path / "a.aiff", audio, rate, format="AIFF")
    sf.write(tmp_path / "a.opus", np.repeat(audio, 3), rate * 3, format="OGG", subtype="OPUS")
    r = serd("--model", str(model_path), "--once", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    summaries = [x for x in records(r.stdout) if x["type"] == "summary"]
    assert sorted(Path(s["file"]).name for s in summaries) == ["a.aiff", "a.mp3", "a.opus"]
    assert all(s["speech"] for s in summaries)


def test_quiet_hides_litert_delegate_line(data_dir: Path, model_path: Path) -> None:
    """Was: -q still printed "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."."""
    clip = str(data_dir / CLIP)
    loud = serd("--model", str(model_path), "--once", clip)
    quiet = serd("--model", str(model_path), "-q", "--once", clip)
    assert loud.returncode == quiet.returncode == 0
    if "XNNPACK" not in loud.stderr:
        pytest.skip("this TFLite runtime prints no delegate line")
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout == loud.stdout


def test_quiet_still_shows_errors(tmp_path: Path) -> None:
    r = serd("-q", "--model", str(tmp_path / "none.tflite"), "--once", "x.wav", timeout=30)
    assert r.returncode == 65
    assert "does not exist" in r.stderr


# -- serd devices ----------------------------------------------------------------------


def test_devices_lists_the_virtual_microphone(mic: Any) -> None:
    """Was: `serd devices` was answered "audio paths need --once"."""
    from serd.capture import list_input_devices  # noqa: PLC0415

    ours = {d.name: d for d in list_input_devices()}[mic.alsa_device]
    r = serd("devices", timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if mic.alsa_device in x)
    assert line[1:].split()[0] == str(ours.index)
    assert f"({ours.max_input_channels} ch, {ours.default_samplerate:g} Hz" in line
    assert sum(x.startswith("*") for x in r.stdout.splitlines()) <= 1
    r = serd("devices", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    by_name = {d["name"]: d for d in records(r.stdout)}
    assert by_name[mic.alsa_device]["index"] == ours.index
    assert by_name[mic.alsa_device]["max_input_channels"] == ours.max_input_channels
    assert by_name[mic.alsa_device]["default_samplerate"] == ours.default_samplerate


# -- --check-config and --probe ----------------------------------------------------------


def test_check_config_refuses_what_the_daemon_refuses(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: --check-config passed an alert rule naming a label the model lacks, a missing
    password_file and a missing TLS ca_file (whose error did not name the file)."""
    base = {"state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)}}
    ca = tmp_path / "no-ca.pem"
    cases = [
        ({**base, "alerts": {"enabled": True,
                             "rules": [{"name": "r", "labels": ["furious"]}]}},
         "alerts.rules[0].labels: 'furious'"),
        ({**base, "mqtt": {"host": "127.0.0.1", "username": "u",
                           "password_file": str(tmp_path / "nope")}},
         f"mqtt.password_file: cannot read {tmp_path / 'nope'}"),
        ({**base, "mqtt": {"host": "127.0.0.1", "tls": True, "ca_file": str(ca)}},
         f"mqtt.ca_file: cannot read {ca}"),
        ({**base, "discovery": {"enabled": True}}, "discovery.enabled"),
    ]
    for doc, must in cases:
        rc = cli.main(["--config", str(config(tmp_path, doc)), "--check-config"])
        err = capsys.readouterr().err
        assert rc == EXIT_CONFIG, (must, err)
        lines = serd_lines(err)
        assert len(lines) == 1 and must in lines[0], (must, err)
        # The daemon refuses the same config with the same line: passing means starting.
        d = serd("--config", str(config(tmp_path, doc)), timeout=60)
        assert d.returncode == EXIT_CONFIG, (must, d.stderr[-800:])
        assert must in serd_lines(d.stderr)[0]
    rc = cli.main(["--config", str(config(tmp_path, base)), "--check-config"])
    assert rc == 0, capsys.readouterr().err


def test_probe_opens_the_microphone_and_connects_to_the_broker(
    tmp_path: Path, model_path: Path, mic: Any, mosquitto: Any, subscriber: Any
) -> None:
    doc: dict[str, Any] = {"state_dir": str(tmp_path / "s"), "model": {"path": str(model_path)},
                           "device_id": "h5probe", "audio": {"device": mic.alsa_device},
                           "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}
    r = serd("--config", str(config(tmp_path, doc)), "--check-config", "--probe")
    assert r.returncode == 0, r.stderr
    ok = [x for x in serd_lines(r.stderr) if x.startswith("serd: ok: ")]
    assert len(ok) == 2, r.stderr
    assert mic.alsa_device in ok[0] and f"{mosquitto.port}" in ok[1]
    # A config that passes starts: the daemon comes online with it, and stops cleanly.
    status = subscriber(mosquitto, "serd/h5probe/status")
    daemon = subprocess.Popen([sys.executable, "-m", "serd.cli", "--config",
                               str(config(tmp_path, doc))], env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status.wait_for(lambda msgs: any(m.json()["state"] == "online" for m in msgs), 30)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err.decode()[-2000:]
    mosquitto.stop()
    mic.unplug()
    try:
        t0 = time.monotonic()
        r = serd("--config", str(config(tmp_path, doc)), "--check-config", "--probe")
        assert time.monotonic() - t0 < 30
    finally:
        mic.plug()
    assert r.returncode == cli.EXIT_UNAVAILABLE, r.stderr
    failed = [x for x in serd_lines(r.stderr) if x.startswith("serd: FAILED: ")]
    assert len(failed) == 2, r.stderr
    assert failed[0].startswith("serd: FAILED: microphone: ")
    assert "connection refused" in failed[1]


# -- --once --publish to a broker that is down --------------------------------------------


def test_publish_to_a_down_broker_says_so_and_the_next_run_delivers(
    tmp_path: Path, data_dir: Path, model_path: Path, mosquitto: Any, subscriber: Any
) -> None:
    """Was: exit 0 and "done" while every event was still in the spool."""
    doc = {"state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)},
           "device_id": "h5", "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}
    cfg = str(config(tmp_path, doc))
    clip = str(data_dir / CLIP)
    mosquitto.stop()
    t0 = time.monotonic()
    r = serd("--config", cfg, "--once", "--publish", "--speed", "0", "--wait", "1", clip)
    assert r.returncode == cli.EXIT_UNDELIVERED, r.stderr
    assert time.monotonic() - t0 < 60
    assert "done" not in r.stderr
    line = next(x for x in serd_lines(r.stderr) if "NOT delivered" in x)
    left = int(line.split("serd: ")[1].split()[0])
    assert left > 0
    assert "h5-replay" in line and str(tmp_path / "state") in line
    mosquitto.start()
    sub = subscriber(mosquitto, "serd/h5-replay/emotion")
    r = serd("--config", cfg, "--once", "--publish", "--speed", "0", clip)
    assert r.returncode == 0, r.stderr
    assert "serd: done" in r.stderr
    # The first run's events went out first, then the second run's.
    got = sub.wait_for(lambda msgs: len(msgs) >= 2 * left, timeout=20)
    seqs = [m.json()["seq"] for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) >= 2 * left


# -- --once: stdin, summaries, totals, progress -------------------------------------------


def test_once_reads_standard_input(data_dir: Path, model_path: Path) -> None:
    clip = data_dir / CLIP
    by_path = records(serd("--model", str(model_path), "--once", str(clip), "--json").stdout)
    r = serd("--model", str(model_path), "--once", "-", "--json", stdin=clip.read_bytes())
    assert r.returncode == 0, r.stderr
    piped = records(r.stdout)
    assert {x["file"] for x in piped if "file" in x} == {"-"}
    strip = [{k: v for k, v in x.items() if k != "file"} for x in by_path]
    assert [{k: v for k, v in x.items() if k != "file"} for x in piped] == strip
    # Nothing to read: one line, exit 2.
    r = serd("--model", str(model_path), "--once", "-", stdin=b"")
    assert r.returncode == 2 and serd_lines(r.stderr) == [
        "serd: --once -: standard input is empty: no audio was piped in"]
    r = serd("--model", str(model_path), "--once", "-", stdin=b"not audio at all\n")
    assert r.returncode == 2 and serd_lines(r.stderr)[0].startswith("serd: -: not a readable")


def _folder(tmp_path: Path, data_dir: Path) -> Path:
    d = tmp_path / "calls"
    d.mkdir()
    shutil.copy(data_dir / "1001_IEO_ANG_HI.flac", d / "a.flac")
    shutil.copy(data_dir / "1091_TIE_SAD_XX.flac", d / "b.flac")
    sf.write(d / "c-silence.wav", np.zeros(3 * 16000, np.float32), 16000)
    (d / "d-broken.wav").write_text("not audio\n")
    return d


def test_no_speech_is_distinct_from_unsure_and_the_run_has_a_summary(
    tmp_path: Path, data_dir: Path, model_path: Path
) -> None:
    """A file without speech says so, distinctly from an unsure verdict (issue 21); the run
    ends with totals: files, speech, verdicts per label, no-speech and unreadable files."""
    folder = _folder(tmp_path, data_dir)
    r = serd("--model", str(model_path), "--once", str(folder), "--json")
    assert r.returncode == 2, r.stderr
    recs = records(r.stdout)
    summaries = {Path(x["file"]).name: x for x in recs if x["type"] == "summary"}
    silent = summaries["c-silence.wav"]
    assert silent["speech"] is False and silent["verdict"] == NO_SPEECH
    assert silent["emotions"] == []
    assert summaries["a.flac"]["speech"] is True
    assert summaries["a.flac"]["verdict"] == (summaries["a.flac"]["label"] or UNSURE)
    total = recs[-1]
    assert total["type"] == "total"
    assert total["files"] == 3 and total["unreadable"] == 1 and total["no_speech"] == 1
    assert sum(total["verdicts"].values()) == 2
    assert total["speech_s"] == pytest.approx(sum(s["speech_s"] for s in summaries.values()),
                                              abs=0.01)
    text = serd("--model", str(model_path), "--once", str(folder)).stdout
    assert "verdict: no speech found" in text
    assert text.splitlines()[-1].startswith("total: 3 files,")
    assert "no speech found: 1; unreadable: 1" in text
    # Speech, but nothing claimed: "unsure", never "no speech found".
    strict = config(tmp_path, {"decisions": {"threshold": 1.0}})
    r = serd("--config", str(strict), "--model", str(model_path), "--once",
             str(folder / "a.flac"), "--json")
    s = next(x for x in records(r.stdout) if x["type"] == "summary")
    assert s["speech"] is True and s["verdict"] == UNSURE and s["label"] is None
    assert "verdict: (unsure)" in serd("--config", str(strict), "--model", str(model_path),
                                       "--once", str(folder / "a.flac")).stdout


def _window(label: str | None, start: float, end: float, segment: int = 0) -> Decision:
    return Decision("window", "main", segment, start, end, label, 0.5, raw_probs=(0.5, 0.5))


def test_breakdown_shares_and_longest_stretch() -> None:
    """Overlapping windows count each moment once; a stretch is consecutive windows of
    one label, broken by another label or a pause."""
    hop, win = 0.5, 2.0
    ws = []
    labels = ["neutral"] * 20 + ["angry"] * 8 + [None] * 4 + ["neutral"] * 4
    for i, lab in enumerate(labels):
        ws.append(_window(lab, i * hop, i * hop + win))
    # After a pause, a second segment: angry again, but not the same stretch.
    ws += [_window("angry", 40 + i * hop, 40 + i * hop + win, 1) for i in range(3)]
    result = FileResult(Path("x"), 60.0, 30.0, ws, ("neutral", "angry"), 0.3, hop)
    shares = {x.label: x for x in breakdown(result)}
    total = sum(x.seconds for x in shares.values())
    # Speech covered: 36 windows a hop apart, then a 3-window segment after the pause.
    assert total == pytest.approx((35 * hop + win) + (2 * hop + win))
    # A stretch's first window counts whole, each later one the hop it adds.
    assert shares["neutral"].seconds == pytest.approx(win + 23 * hop)
    assert shares["angry"].longest_s == pytest.approx(7 * hop + win)
    assert shares["neutral"].longest_s == pytest.approx(19 * hop + win)
    assert shares[UNSURE].seconds == pytest.approx(4 * hop)
    assert sum(x.share for x in shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert list(shares) == sorted(shares, key=lambda k: -shares[k].seconds)


def test_long_recording_summary_gives_shares_not_only_a_mean(
    tmp_path: Path, data_dir: Path, model_path: Path
) -> None:
    """Was: a 5.6-minute call got "(unsure) 0.23", a mean that means nothing for a call."""
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(data_dir.glob("*.flac"))]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([x for p in parts * 2 for x in (p, pause)])
    long = tmp_path / "call.wav"
    sf.write(long, audio, 16000)
    r = serd("--model", str(model_path), "--once", str(long))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "speech by emotion:" in x)
    assert "longest" in line and "%" in line
    assert "verdict (mean of all windows):" in r.stdout
    r = serd("--model", str(model_path), "--once", str(long), "--json")
    s = next(x for x in records(r.stdout) if x["type"] == "summary")
    assert sum(e["share"] for e in s["emotions"]) == pytest.approx(1.0, abs=2e-3)
    assert len(s["emotions"]) >= 2
    assert all(0 < e["longest_s"] <= s["speech_s"] + 2.0 for e in s["emotions"])


def test_progress_bar_on_a_terminal_only(tmp_path: Path, data_dir: Path,
                                         model_path: Path) -> None:
    """Was: a 3,682-file run showed nothing for 4 minutes."""
    folder = _folder(tmp_path, data_dir)
    argv = [sys.executable, "-m", "serd.cli", "--model", str(model_path), "-q", "--once",
            str(folder), "--json"]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env())
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    text = seen.decode()
    assert "\r[" in text and "/4 files" in text, text
    # Every bar drawn is wiped before the next line (an error here) and at the end.
    assert "\r\x1b[K" in text[text.rindex("\r["):], repr(text)
    assert "\x1b[Kserd: " in text and "d-broken.wav" in text
    assert records(out.decode())[-1]["type"] == "total"
    # Not a terminal: no bar at all.
    r = serd("--model", str(model_path), "-q", "--once", str(folder), "--json")
    assert "\r" not in r.stderr and "files" not in r.stderr


def test_totals_count_a_file_analysed_per_channel_once() -> None:
    from serd.report import RunTotals  # noqa: PLC0415

    win = Decision("window", "customer", 0, 0.0, 2.0, "angry", 0.9, raw_probs=(0.1, 0.9))
    t = RunTotals()
    t.add(FileResult(Path("call.wav"), 60.0, 20.0, [win], ("neutral", "angry"), 0.3, 0.5,
                     channel="customer"), new_file=True)
    t.add(FileResult(Path("call.wav"), 60.0, 0.0, [], ("neutral", "angry"), 0.3, 0.5,
                     channel="other"), new_file=False)
    t.add(FileResult(Path("b.wav"), 3.0, 0.0, [], ("neutral", "angry"), 0.3, 0.5),
          new_file=True)
    t.unreadable = 1
    assert t.record() == {"type": "total", "files": 2, "unreadable": 1, "no_speech": 2,
                          "audio_s": 63.0, "speech_s": 20.0, "verdicts": {"angry": 1}}
    assert t.text().startswith("total: 2 files, 20.0 s of speech in 1:03 of audio; "
                               "verdicts: angry 1; no speech found: 2; unreadable: 1")


def test_replay_device_id_fits_a_long_device_id() -> None:
    """Was: a 60-character device_id made `serd --once --publish` fail with
    "--device-id device_id: 'ddd...-replay' is not usable" although no --device-id was given."""
    from serd.cli import replay_device_id  # noqa: PLC0415
    from serd.events import validate_device_id  # noqa: PLC0415

    assert replay_device_id("desk-17") == "desk-17-replay"
    long_id = "d" * 64
    assert validate_device_id(replay_device_id(long_id)) == "d" * 57 + "-replay"


def test_an_empty_folder_beside_other_paths_is_said(tmp_path: Path, data_dir: Path) -> None:
    """Was: `serd --once empty/ clip.flac` said nothing about empty/."""
    (tmp_path / "empty").mkdir()
    r = serd("--once", str(tmp_path / "empty"), str(data_dir / CLIP), "-q", timeout=60)
    assert r.returncode == 0, r.stderr
    assert serd_lines(r.stderr) == [f"serd: no audio files found in {tmp_path / 'empty'}"]
    assert "verdict: " in r.stdout


def test_a_reader_that_goes_away_is_no_traceback(data_dir: Path) -> None:
    """Was: `serd --once DIR --json | head -1` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "serd.cli", "-q", "--once", str(data_dir),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
