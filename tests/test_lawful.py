"""Lawful by design (issue 25): the caller is analysed, the agent never.

Against the real pipeline and a real Mosquitto: an agent channel's speech never produces an
event, alert, health figure or discovery entry; the agent's voice bleeding into the caller's
channel is muted (measured on a two-channel call built from the CREMA-D fixtures); roles
are validated, printed by --check-config, carried by events; ``serd --once`` and
``--once --publish`` follow the roles on a stereo file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from bench.bleed import build_call, measure, two_channel_config
from serd.config import parse
from serd.daemon import Daemon
from serd.decode import load
from serd.validate import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "serd" / "schema" / "event.schema.json").read_text())
TWO = [{"name": "agent", "role": "agent"}, {"name": "customer", "role": "customer"}]


def serd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serd.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"})


def write_config(tmp_path: Path, model_path: Path, **extra: Any) -> Path:
    data: dict[str, Any] = {"device_id": "desk-7", "state_dir": str(tmp_path / "state"),
                            "model": {"path": str(model_path)}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- configuration ---------------------------------------------------------------------------


def test_roles_inferred_declared_and_validated() -> None:
    roles = parse({}).audio.resolved_channels
    assert [(c.name, c.role, c.analysed) for c in roles] == [("main", "unspecified", True)]
    roles = parse({"audio": {"channels": ["agent", "caller", "left"]}}).audio.resolved_channels
    assert [(c.role, c.analysed) for c in roles] == [
        ("agent", False), ("customer", True), ("unspecified", True)]
    roles = parse({"audio": {"channels": [
        {"name": "left", "role": "agent"}, {"name": "right", "role": "customer"},
        {"name": "aux", "role": "supervisor"}]}}).audio.resolved_channels
    assert [(c.name, c.role, c.analysed, c.declared) for c in roles] == [
        ("left", "agent", False, True), ("right", "customer", True, True),
        ("aux", "supervisor", False, True)]  # declared but not in analyse_roles
    assert parse({"audio": {"channels": [{"name": "aux", "role": "supervisor"}],
                            "analyse_roles": ["supervisor"]}}).audio.analysed_names == ("aux",)
    for doc, where in (
        ({"channels": [{"name": "x", "rol": "agent"}]}, "audio.channels[0].rol: unknown key"),
        ({"channels": [{"name": "x", "role": "Agent"}]}, "audio.channels[0].role"),
        ({"channels": ["agent"]}, "audio.channels: no channel"),
        ({"analyse_roles": ["customer", "agent"]}, "AI Act Art. 5(1)(f)"),
        ({"channels": [{"name": "a"}, "a"]}, "names must be unique"),
        ({"bleed_mute": {"double_talk_margin_db": -3}}, "audio.bleed_mute.double_talk"),
    ):
        with pytest.raises(ConfigError, match=re.escape(where)):
            parse({"audio": doc})


def test_config_errors_are_one_line_exit_78(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("audio:\n  analyse_roles: [agent]\n")
    r = serd("--config", str(cfg), "--check-config")
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1, r.stderr
    assert "audio.analyse_roles: 'agent' is never analysed" in r.stderr
    assert "docs/lawful-use.md" in r.stderr
    r = serd("--channels", "agent", "--once", "x.wav")
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1 and "--channels agent" in r.stderr, r.stderr


def test_check_config_says_who_is_analysed(tmp_path: Path, model_path: Path) -> None:
    r = serd("--config", str(write_config(tmp_path, model_path, audio={"channels": TWO})),
             "--check-config")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("channels:")]
    assert lines == ["channels: 0:agent (agent: never analysed, mutes the analysed channels "
                     "while it speaks); 1:customer (analysed as customer)"]
    # The out-of-the-box run: one channel, no role declared, analysed as unspecified.
    r = serd("--model", str(model_path), "--check-config")
    assert "channels: 0:main (analysed as unspecified, inferred from its name)" in r.stderr
    # ... and the device id the dashboards will show, which the config left to the host.
    assert re.search(r"^device [A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{6} \(host name \+ "
                     r"machine-id suffix\), state in ", r.stderr, re.M), r.stderr


# -- the daemon: an agent's speech never leaves the channel stage ------------------------


class StereoSource:
    """A two-channel microphone stand-in: hands out a prepared (n, 2) array in 50 ms
    blocks, as fast as the loop reads, then silence (None)."""

    def __init__(self, audio: np.ndarray) -> None:
        self.audio = audio
        self.pos = 0
        self.is_open = False
        self.device_name = "stereo"
        self.overflows = 0
        self.reopens = 0
        self.done = threading.Event()

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def read(self, timeout_seconds: float) -> np.ndarray | None:
        if self.pos >= self.audio.shape[0]:
            self.done.set()
            time.sleep(min(timeout_seconds, 0.02))
            return None
        block = self.audio[self.pos:self.pos + 800]
        self.pos += 800
        return block


def _sides(data_dir: Path, agent: list[str], customer: list[str]) -> np.ndarray:
    """Agent clips on channel 0, then customer clips on channel 1 (turns, no overlap)."""
    rng = np.random.default_rng(1)
    parts = []
    for names, col in ((agent, 0), (customer, 1)):
        for name in names:
            x = load(data_dir / f"{name}.flac", 16000)
            block = np.zeros((x.size + 8000, 2), np.float32)
            block[4000:4000 + x.size, col] = x
            parts.append(block)
    audio = np.concatenate([*parts, np.zeros((16000, 2), np.float32)])
    return audio + (rng.standard_normal(audio.shape) * 3e-4).astype(np.float32)


@pytest.mark.broker
def test_agent_speech_never_produces_an_event(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, data_dir: Path
) -> None:
    import jsonschema  # noqa: PLC0415

    sub = subscriber(mosquitto, "#")
    cfg = parse({
        "device_id": "desk-7", "state_dir": str(tmp_path / "state"),
        "health_interval_seconds": 1.0,
        "model": {"path": str(model_path)},
        "audio": {"channels": TWO},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "decisions": {"threshold": 0.0},
        # Every label, any confidence: a rule that fires on whatever speech is analysed.
        "alerts": {"enabled": True, "rules": [{
            "name": "any", "labels": ["neutral", "happy", "sad", "angry", "fearful",
                                      "disgust"],
            "min_seconds": 1.0, "over_seconds": 6.0, "min_confidence": 0.0}]},
        "discovery": {"enabled": True},
    })
    audio = _sides(data_dir, ["1091_TIE_ANG_XX", "1091_TIE_NEU_XX", "1091_TIE_SAD_XX"],
                   ["1001_IEO_ANG_HI", "1001_IEO_SAD_HI"])
    # Where the customer's first clip begins (each clip sits in 0.5 s of quiet).
    agent_part_s = sum(load(data_dir / f"1091_TIE_{n}_XX.flac", 16000).size + 8000
                       for n in ("ANG", "NEU", "SAD")) / 16000
    source = StereoSource(audio)
    daemon = Daemon(cfg, source=source)
    seen: list[Any] = []
    daemon.on_decision = lambda d, _payload: seen.append(d)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    assert source.done.wait(60)
    time.sleep(1.5)  # one more health period
    daemon.request_stop()
    thread.join(20)
    msgs = sub.wait_for(lambda ms: any(m.topic.endswith("/alert") and b"cleared" in m.payload
                                       for m in ms), timeout=20)
    time.sleep(0.5)
    msgs = sub.snapshot()
    emotion = [m.json() for m in msgs if m.topic == "serd/desk-7/emotion"]
    alerts = [m.json() for m in msgs if m.topic == "serd/desk-7/alert"]
    health = [m.json() for m in msgs if m.topic == "serd/desk-7/health"]
    utterances = [e for e in emotion if e["type"] == "utterance"]
    assert len(utterances) >= 2, emotion  # the customer's two clips
    for e in emotion:
        jsonschema.validate(e, SCHEMA)
        assert (e["channel"], e["role"]) == ("customer", "customer")
    # Nothing at all while only the agent spoke (stream time; the gate's pre-roll aside).
    assert seen and min(d.start_s for d in seen) >= agent_part_s, seen[0]
    assert alerts and all((a["channel"], a["role"]) == ("customer", "customer")
                          for a in alerts)
    assert health
    for h in health:
        assert h["channels"] == ["customer"] and h["roles"] == ["customer"]
        assert len(h["in_speech"]) == 1
    # Home Assistant sees one line: the customer's.
    configs = [m.topic for m in msgs if m.topic.startswith("homeassistant/") and m.payload]
    assert any("customer" in t for t in configs), configs
    assert not any("agent" in t for t in configs), configs
    assert not any(b'"agent' in m.payload for m in msgs), "the agent's channel leaked"


@pytest.mark.broker
@pytest.mark.audio
def test_two_channel_microphone_to_broker_only_the_customer(
    tmp_path: Path, mic: Any, mosquitto: Any, subscriber: Any, model_path: Path,
    data_dir: Path,
) -> None:
    """The whole path with real parts: a stereo PulseAudio microphone (agent left, caller
    right) -> serd as systemd starts it -> Mosquitto: only the caller is ever published."""
    sub = subscriber(mosquitto, "serd/#")
    cfg = write_config(tmp_path, model_path, health_interval_seconds=2.0,
                       audio={"device": mic.alsa_device, "channels": TWO},
                       mqtt={"host": mosquitto.host, "port": mosquitto.port})
    audio = _sides(data_dir, ["1091_TIE_ANG_XX", "1091_TIE_SAD_XX"], ["1001_IEO_ANG_HI"])
    call = tmp_path / "call.wav"
    sf.write(call, audio, 16000)
    agent_part_s = sum(load(data_dir / f"1091_TIE_{n}_XX.flac", 16000).size + 8000
                       for n in ("ANG", "SAD")) / 16000
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serd.cli", "--config", str(cfg)],
                                env={**mic.env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "ready: input" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        t0 = time.time()
        mic.play(call)
        msgs = sub.wait_for(lambda ms: any(m.topic.endswith("/emotion") and b'"utterance"'
                                           in m.payload for m in ms), timeout=30)
        sub.wait_for(lambda ms: sum(m.topic.endswith("/health") for m in ms) >= 2, timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "channels: 0:agent (agent: never analysed" in text
    assert "no declared role" not in text  # both roles are declared
    events = [m.json() for m in sub.snapshot() if m.topic.endswith("/emotion")]
    assert msgs and events
    assert {(e["channel"], e["role"]) for e in events} == {("customer", "customer")}
    # Nothing from the eight seconds in which only the agent spoke.
    from serd.events import parse_iso_utc  # noqa: PLC0415

    assert min(parse_iso_utc(e["start"]) for e in events) > t0 + agent_part_s - 1.0
    for h in (m.json() for m in sub.snapshot() if m.topic.endswith("/health")):
        assert h["channels"] == ["customer"] and h["roles"] == ["customer"]


def test_unspecified_role_is_said_once_at_start(
    tmp_path: Path, model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The out-of-the-box run keeps working (one `main` channel, analysed as unspecified)
    and says once, at start, where to read why that is not the lawful set-up."""
    cfg = parse({"state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)}})
    source = StereoSource(np.zeros((16000, 1), np.float32))
    daemon = Daemon(cfg, source=source)
    caplog.set_level("INFO", logger="serd.daemon")
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    assert source.done.wait(30)
    daemon.request_stop()
    thread.join(20)
    pointers = [r for r in caplog.records if "docs/lawful-use.md" in r.getMessage()]
    assert len(pointers) == 1 and pointers[0].levelname == "WARNING"
    assert "channel main has no declared role and is analysed as 'unspecified'" in \
        pointers[0].getMessage()
    assert daemon.roles == {"main": "unspecified"}


def test_agent_alone_gives_no_decision_at_all(model_path: Path, data_dir: Path) -> None:
    """Only the agent speaks (no bleed): the channel stage returns nothing, on any channel."""
    from bench.bleed import run_call  # noqa: PLC0415

    audio = _sides(data_dir, ["1091_TIE_ANG_XX", "1091_TIE_SAD_XX"], [])
    from bench.bleed import Call  # noqa: PLC0415

    call = Call(audio, np.zeros(len(audio), bool), np.zeros(len(audio), bool))
    cfg = two_channel_config()
    decisions, cs, _ = run_call(call, cfg, _classifier(model_path))
    assert decisions == []
    assert [p.channel for p in cs.pipelines] == ["customer"]


def _classifier(model_path: Path) -> Any:
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415

    return load_classifier(ModelSettings(path=str(model_path)))


# -- bleed muting, measured on a two-channel call of real clips ------------------------------


def test_bleed_muting_keeps_the_agents_voice_from_the_classifier(
    model_path: Path, data_dir: Path
) -> None:
    clf = _classifier(model_path)
    call = build_call(data_dir, bleed_db=-20.0)
    off = measure(call, two_channel_config(enabled=False), clf)
    on = measure(call, two_channel_config(), clf)
    double_talk = measure(call, two_channel_config(double_talk_margin_db=10.0), clf)
    # Without muting, the agent's bleed is judged under the caller's name.
    assert off.agent_only_classified_s > 0.5 * off.agent_only_s
    assert off.windows_mostly_agent >= 3 and off.utterances_mostly_agent >= 1
    # With the default muting, none of it reaches the classifier; most of the caller does.
    assert on.agent_only_classified_s == 0.0
    assert on.windows_with_agent == 0 and on.windows_mostly_agent == 0
    assert on.utterances_mostly_agent == 0 and on.muted_s > 0.8 * on.agent_only_s
    assert on.customer_classified_s > 0.6 * on.customer_s
    # Keeping double talk: more of the caller, next to nothing of the agent.
    assert double_talk.customer_classified_s >= on.customer_classified_s
    assert double_talk.windows_mostly_agent == 0 and double_talk.utterances_mostly_agent == 0
    assert double_talk.agent_only_classified_s < 0.05 * double_talk.agent_only_s


def test_muting_does_not_depend_on_how_the_stream_is_cut(
    model_path: Path, data_dir: Path
) -> None:
    """The daemon's 50 ms blocks, --once's 0.5 s and odd sizes give the same decisions."""
    from serd.pipeline import ChannelSet  # noqa: PLC0415

    clf = _classifier(model_path)
    cfg = two_channel_config()
    audio = build_call(data_dir).audio

    def run(chunks: list[int]) -> tuple[list[tuple[Any, ...]], float]:
        cs = ChannelSet(clf, cfg.audio.resolved_channels, vad=cfg.vad,
                        decisions=cfg.decisions, crosstalk=cfg.audio.bleed_mute)
        out, pos, k = [], 0, 0
        while pos < audio.shape[0]:
            n = chunks[k % len(chunks)]
            out += cs(audio[pos:pos + n])
            pos, k = pos + n, k + 1
        out += cs.flush()
        assert cs.pipelines[0].windower.samples_in == audio.shape[0]
        return [(d.type, d.start_s, d.end_s, d.label, d.confidence) for d in out], \
            cs.muted_seconds

    ref = run([800])
    assert ref[0] and ref[1] > 5
    for chunks in ([8000], [1234, 77, 5000], [37]):
        assert run(chunks) == ref, chunks


# -- serd --once and --once --publish on a stereo call file ---------------------------------


@pytest.fixture
def stereo_call(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "call.wav"
    # 44.1 kHz, as a softphone would record it: each side resampled on its own.
    import soxr  # noqa: PLC0415

    audio = build_call(data_dir).audio
    sf.write(path, soxr.resample(audio, 16000, 44100), 44100, subtype="PCM_16")
    return path


def _records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_once_analyses_named_channels_apart(
    tmp_path: Path, model_path: Path, stereo_call: Path
) -> None:
    r = serd("--model", str(model_path), "--once", str(stereo_call), "--json",
             "--channels", "agent,customer")
    assert r.returncode == 0, r.stderr
    recs = [x for x in _records(r.stdout) if x["type"] != "total"]
    assert {(x["channel"], x["role"]) for x in recs} == {("customer", "customer")}
    summaries = [x for x in recs if x["type"] == "summary"]
    assert len(summaries) == 1 and summaries[0]["muted_s"] > 0
    assert any(x["type"] == "utterance" for x in recs)
    assert "mixed" not in r.stderr
    # The same from the config file, in the text timeline.
    cfg = write_config(tmp_path, model_path, audio={"channels": TWO})
    r = serd("--config", str(cfg), "--once", str(stereo_call))
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert "channel customer (customer, " in header and "s muted: agent speaking" in header
    assert lines and not any("agent" in ln for ln in lines)
    # Unnamed channels: mixed to one, said once on stderr, for two files.
    r = serd("--model", str(model_path), "--once", str(stereo_call), str(stereo_call),
             "--json")
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "mixed to one" in ln]
    assert len(notes) == 1 and "--channels agent,customer" in notes[0]
    assert {x["channel"] for x in _records(r.stdout) if "channel" in x} == {"main"}
    # A file with fewer channels than named: one line, exit 2.
    r = serd("--model", str(model_path), "--once", str(stereo_call), "--channels", "a,b,c")
    assert r.returncode == 2
    assert "has 2 channels but audio.channels names 3" in r.stderr


def test_once_mono_file_with_named_channels_says_what_it_means(
    model_path: Path, data_dir: Path
) -> None:
    r = serd("--model", str(model_path), "--once", str(data_dir / "1001_IEO_ANG_HI.flac"),
             "--channels", "agent,customer", "--json")
    assert r.returncode == 0, r.stderr
    assert "has one channel" in r.stderr and "agent's voice" in r.stderr
    assert {x.get("role") for x in _records(r.stdout) if x["type"] != "total"} == {
        "unspecified"}


@pytest.mark.broker
def test_once_publish_follows_the_roles(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, stereo_call: Path
) -> None:
    sub = subscriber(mosquitto, "serd/#")
    cfg = write_config(tmp_path, model_path, audio={"channels": TWO},
                       mqtt={"host": mosquitto.host, "port": mosquitto.port})
    r = serd("--config", str(cfg), "--once", "--publish", "--speed", "0", str(stereo_call))
    assert r.returncode == 0, r.stderr
    msgs = sub.wait_for(lambda ms: any(m.topic.endswith("/emotion") and b'"utterance"'
                                       in m.payload for m in ms), timeout=30)
    time.sleep(0.5)
    events = [m.json() for m in sub.snapshot() if m.topic.endswith("/emotion")]
    assert events and msgs
    assert {(e["channel"], e["role"]) for e in events} == {("customer", "customer")}


@pytest.mark.broker
def test_once_publish_a_mono_file_beside_a_call_does_not_mix_the_call(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, stereo_call: Path,
    data_dir: Path,
) -> None:
    """Was: one mono file in the batch replayed every file as one mixed line 'main', the
    named stereo call included, so its agent's voice was analysed and published."""
    sub = subscriber(mosquitto, "serd/#")
    cfg = write_config(tmp_path, model_path, audio={"channels": TWO},
                       mqtt={"host": mosquitto.host, "port": mosquitto.port})
    mono = data_dir / "1001_IEO_ANG_HI.flac"
    r = serd("--config", str(cfg), "--once", "--publish", "--speed", "0", str(stereo_call),
             str(mono))
    assert r.returncode == 2, r.stderr
    assert f"serd: {mono}: has one channel while" in r.stderr
    sub.wait_for(lambda ms: any(m.topic.endswith("/emotion") and b'"utterance"'
                                in m.payload for m in ms), timeout=30)
    time.sleep(0.5)
    events = [m.json() for m in sub.snapshot() if m.topic.endswith("/emotion")]
    assert {(e["channel"], e["role"]) for e in events} == {("customer", "customer")}


# -- the lawful set-up is the easy one -------------------------------------------------------


def test_readme_first_config_example_is_the_lawful_two_channel_line() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(example)
    channels = parse({"audio": data["audio"]}).audio.resolved_channels
    assert [(c.role, c.analysed) for c in channels] == [("agent", False), ("customer", True)]
    assert "docs/lawful-use.md" in readme.split("\n## ", 1)[0]  # linked from the intro
    config = (ROOT / "config.yaml").read_text()
    assert "channels: [{name: agent, role: agent}, {name: customer, role: customer}]" in config
    doc = (ROOT / "docs" / "lawful-use.md").read_text()
    for needle in ("not legal advice", "Article 5(1)(f)", "2 February 2025", "Article 50(3)",
                   "Annex III", "DPIA", "mqtt.spool_max_age_seconds", "one mixed channel"):
        assert needle in doc, needle
