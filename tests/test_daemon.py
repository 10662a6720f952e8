"""The daemon end to end, with real parts: PulseAudio virtual mic -> serd -> Mosquitto.

The daemon runs as its own process (``python -m serd.cli --config ...``), exactly as
systemd starts it; clips are played into the virtual microphone with ``paplay``; a paho
subscriber on a real broker checks what arrives.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from serd.config import Config, parse
from serd.daemon import Daemon
from serd.decisions import Decision
from serd.decode import load
from serd.publisher import StdoutPublisher
from serd_testkit import ArraySource

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "serd" / "schema" / "event.schema.json").read_text()
)


def write_config(tmp_path: Path, model_path: Path, broker: Any | None, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "device_id": "test-desk",
        "state_dir": str(tmp_path / "state"),
        "health_interval_seconds": 2.0,
        "model": {"path": str(model_path)},
        "audio": {"reopen_min_seconds": 0.2, "reopen_max_seconds": 1.0},
    }
    if broker is not None:
        cfg["mqtt"] = {"host": broker.host, "port": broker.port, "reconnect_min_seconds": 0.2,
                       "reconnect_max_seconds": 1.0}
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.update(
            {key: value})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serd.cli", "--config", str(config)],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._log_file.close()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(d: DaemonProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while "ready: input" not in d.output():
        assert d.proc.poll() is None, d.output()
        assert time.monotonic() < deadline, d.output()
        time.sleep(0.1)


def emotion(messages: list) -> list[dict]:
    return [m.json() for m in messages if m.topic.endswith("/emotion")]


def utterances(messages: list) -> list[dict]:
    return [e for e in emotion(messages) if e["type"] == "utterance"]


@pytest.fixture
def daemon_factory(tmp_path: Path, mic: Any):
    started: list[DaemonProcess] = []

    def make(config: Path) -> DaemonProcess:
        d = DaemonProcess(config, mic.env, tmp_path / f"daemon{len(started)}.log")
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            d.kill()


@pytest.mark.broker
@pytest.mark.audio
def test_end_to_end_microphone_to_broker(
    tmp_path: Path, mic: Any, mosquitto: Any, subscriber: Any, model_path: Path,
    data_dir: Path, daemon_factory: Any,
) -> None:
    sub = subscriber(mosquitto, "serd/test-desk/#")
    d = daemon_factory(write_config(tmp_path, model_path, mosquitto))
    wait_ready(d)
    sub.wait_for(lambda ms: any(m.topic.endswith("/status") and b"online" in m.payload
                                for m in ms), timeout=30)
    # Silence in: no emotion events (health still flows).
    sub.wait_for(lambda ms: sum(m.topic.endswith("/health") for m in ms) >= 2, timeout=20)
    assert emotion(sub.snapshot()) == []

    for clip in ("1091_TIE_ANG_XX.flac", "1091_TIE_SAD_XX.flac"):
        mic.play(data_dir / clip)
        time.sleep(1.0)  # a pause between turns, as in a call
    msgs = sub.wait_for(lambda ms: len(utterances(ms)) >= 2, timeout=30)
    events = emotion(msgs)
    for e in events:
        jsonschema.validate(e, SCHEMA)
        assert e["device_id"] == "test-desk"
        assert e["channel"] == "main"
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert any(e["type"] == "window" for e in events)
    # The same actor, angry then sad, through a 48 kHz virtual microphone: the first
    # utterance is judged angry, the second is not, and is much less angry.
    angry, sad = utterances(msgs)[:2]
    assert angry["label"] == "angry", angry
    assert sad["label"] != "angry", sad
    assert sad["probs"]["angry"] < angry["probs"]["angry"] / 2

    health = [m.json() for m in sub.snapshot() if m.topic.endswith("/health")]
    assert health[-1]["input_open"] is True

    rc, took = d.terminate()
    assert rc == 0, d.output()
    assert took < 5.0
    sub.wait_for(lambda ms: any(m.topic.endswith("/status") and b"offline" in m.payload
                                for m in ms), timeout=10)
    assert "Traceback" not in d.output()


@pytest.mark.broker
@pytest.mark.audio
def test_broker_restart_and_daemon_restart_lose_nothing(
    tmp_path: Path, mic: Any, mosquitto: Any, subscriber: Any, model_path: Path,
    data_dir: Path, daemon_factory: Any,
) -> None:
    sub = subscriber(mosquitto, "serd/test-desk/#")
    config = write_config(tmp_path, model_path, mosquitto)
    d = daemon_factory(config)
    wait_ready(d)
    mic.play(data_dir / "1001_IEO_ANG_HI.flac")
    sub.wait_for(lambda ms: len(utterances(ms)) >= 1, timeout=30)

    # Broker down mid-stream: events wait in the spool.
    mosquitto.stop()
    mic.play(data_dir / "1001_IEO_HAP_HI.flac")
    time.sleep(1.5)
    # The daemon is killed hard while the broker is still down, then restarted.
    d.kill()
    d2 = daemon_factory(config)
    wait_ready(d2)
    mic.play(data_dir / "1091_TIE_NEU_XX.flac")
    time.sleep(1.0)
    mosquitto.start()
    mic.play(data_dir / "1001_IEO_SAD_HI.flac")
    msgs = sub.wait_for(lambda ms: len({e["seq"] for e in utterances(ms)}) >= 4, timeout=60)
    seqs = sorted({e["seq"] for e in emotion(msgs)})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gap in {seqs}"
    rc, _ = d2.terminate()
    assert rc == 0


@pytest.mark.audio
def test_microphone_unplugged_and_back(
    tmp_path: Path, mic: Any, model_path: Path, data_dir: Path, daemon_factory: Any,
) -> None:
    config = write_config(tmp_path, model_path, None)
    d = daemon_factory(config)
    wait_ready(d)
    mic.unplug()
    time.sleep(3.0)
    mic.plug()
    time.sleep(3.0)
    mic.play(data_dir / "1001_IEO_ANG_HI.flac")
    deadline = time.monotonic() + 30
    while '"utterance"' not in d.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = d.output()
    assert '"utterance"' in out, out[-3000:]
    assert d.proc.poll() is None, "the daemon must survive a vanished microphone"
    rc, _ = d.terminate()
    assert rc == 0
    assert "Traceback" not in out


def test_streaming_gives_the_same_windows_as_once(
    tmp_path: Path, data_dir: Path, model_path: Path
) -> None:
    from serd.once import analyse_file  # noqa: PLC0415

    rng = np.random.default_rng(0)
    clip = data_dir / "1001_IEO_FEA_HI.flac"
    x = load(clip, 16000)
    cfg = parse({"model": {"path": str(model_path)}, "state_dir": str(tmp_path / "s")})
    ref = analyse_file(cfg, Daemon(cfg, source=ArraySource(x, [1]),
                                   publisher=_null_publisher(tmp_path)).classifier, clip)
    for chunks in ([1], [160], [1234, 77, 5000], list(rng.integers(1, 4000, size=50))):
        got: list[Decision] = []
        d = Daemon(cfg, source=ArraySource(x, [int(c) for c in chunks]),
                   publisher=_null_publisher(tmp_path))
        d.on_decision = lambda dec, _payload, got=got: got.append(dec)
        d.source.open()
        while (block := d.source.read(0.0)) is not None:
            d.process_block(block, time.time())
        for pipe in d.pipelines:
            d._publish(pipe.flush())
        key = [(r.type, r.start_s, r.end_s, r.label) for r in ref.decisions]
        assert [(r.type, r.start_s, r.end_s, r.label) for r in got] == key
        for a, b in zip(got, ref.decisions, strict=True):
            for k, v in a.probs.items():
                assert abs(b.probs[k] - v) <= 0.02


def _null_publisher(tmp_path: Path) -> StdoutPublisher:
    p = StdoutPublisher("test", tmp_path / f"state{time.monotonic_ns()}", stream=io.StringIO())
    p.start()
    return p


def test_config_defaults_run_out_of_the_box() -> None:
    cfg = Config()
    assert cfg.mqtt.host is None  # events to stdout: runs without a broker
    assert os.fspath(cfg.resolved_state_dir)
