"""Alert rules: speech-second counting, start/clear with hysteresis, per channel, silence and
shutdown clears, schema-valid payloads; and the daemon publishing them to a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serd.alerts import CLEARED, STARTED, AlertEngine, AlertRule, AlertSettings, alert_state
from serd.config import parse
from serd.decisions import Decision
from serd.validate import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "serd" / "schema" / "alert.schema.json").read_text())
LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust")
T0 = 1_700_000_000.0
HOP, WIN = 0.5, 2.0


def engine(**settings: Any) -> AlertEngine:
    s = AlertSettings(enabled=True, **settings)
    return AlertEngine(s, device_id="desk-1", model="test-model", labels=LABELS)


class Feed:
    """Windows as the pipeline makes them: 2 s windows every 0.5 s within an utterance."""

    def __init__(self, eng: AlertEngine, channel: str = "agent") -> None:
        self.eng = eng
        self.channel = channel
        self.t = 0.0  # stream seconds
        self.segment = -1
        self.out: list[dict[str, Any]] = []
        self.seg_start = 0.0
        self.windows = 0

    def utterance(self, label: str | None, seconds: float, confidence: float = 0.8,
                  gap: float = 1.0) -> list[dict[str, Any]]:
        """``seconds`` of speech judged ``label`` (windows, then the utterance), then a gap."""
        self.segment += 1
        start = self.t
        got: list[dict[str, Any]] = []
        n = max(1, round((seconds - WIN) / HOP) + 1)
        end = start + seconds
        for i in range(n):
            a = start + i * HOP
            # A short utterance gets one (padded) window that ends with it.
            got += self._send(Decision("window", self.channel, self.segment, a,
                                       min(a + WIN, end), label, confidence))
        got += self._send(Decision("utterance", self.channel, self.segment, start, end, label,
                                   confidence, windows=n))
        self.t = end + gap
        return got

    def _send(self, d: Decision) -> list[dict[str, Any]]:
        got = self.eng.observe(d, T0 + d.start_s, T0 + d.end_s, T0 + d.end_s)
        self.out += got
        return got


def valid(payload: dict[str, Any], seq: int = 1) -> dict[str, Any]:
    jsonschema.validate({**payload, "seq": seq}, SCHEMA)
    return payload


def test_disabled_by_default_publishes_nothing() -> None:
    eng = AlertEngine(AlertSettings(), device_id="d", model="m", labels=LABELS)
    assert not eng.enabled
    d = Decision("utterance", "main", 0, 0.0, 60.0, "angry", 0.99)
    assert eng.observe(d, T0, T0 + 60, T0 + 60) == []
    assert eng.tick(T0 + 10_000) == []
    assert eng.close(T0 + 10_000) == []


def test_starts_once_after_min_seconds_of_speech_then_clears_with_hysteresis() -> None:
    f = Feed(engine())
    # 8 s of anger: 8 <= 10, nothing yet.
    assert f.utterance("angry", 8.0) == []
    # 2.5 s more: 10.5 s of the last 10.5 s of speech > 10: started, once.
    got = f.utterance("angry", 2.5)
    assert [alert_state(p) for p in got] == [STARTED]
    p = valid(got[0])
    assert (p["rule"], p["label"], p["channel"], p["device_id"]) == (
        "sustained_distress", "angry", "agent", "desk-1")
    assert p["state"] == "started"
    assert p["message"].startswith("angry or fearful")
    assert p["confidence"] == pytest.approx(0.8)
    assert p["start"] < p["end"]
    # More anger: still one alert.
    assert f.utterance("angry", 6.0) == []
    # Neutral speech dilutes the last 30 s of speech. 16.5 s of anger + 13.5 neutral = 30 s:
    # still 16.5 matching; the count falls as neutral pushes anger out of the window.
    assert f.utterance("neutral", 13.5) == []
    # Down to 10 s, 8 s, 6 s: below min_seconds but above clear_seconds (5): still active.
    assert f.utterance("neutral", 6.5) == []
    assert f.eng.active() == {"agent": ["sustained_distress"]}
    assert f.utterance("neutral", 4.0) == []
    # Under 5 s: cleared, once, with the same label and the span from the start.
    got = f.utterance("neutral", 1.5)
    assert [alert_state(p) for p in got] == [CLEARED]
    c = valid(got[0], 2)
    assert c["label"] == "angry"
    assert c["start"] == p["start"]
    assert c["state"] == "cleared"
    assert f.eng.active() == {}
    assert [alert_state(x) for x in f.out] == [STARTED, CLEARED]


def test_no_flapping_around_the_threshold() -> None:
    f = Feed(engine(rules=(AlertRule(min_seconds=4.0, over_seconds=10.0),)))
    f.utterance("angry", 4.5)  # 4.5 > 4: started
    for _ in range(10):
        # Alternating a little neutral and a little anger keeps the count near 4-5 s.
        f.utterance("neutral", 1.0)
        f.utterance("angry", 1.0)
    assert [alert_state(p) for p in f.out] == [STARTED]


def test_silence_neither_counts_nor_ages_but_a_long_one_clears() -> None:
    f = Feed(engine(clear_after_silence_seconds=120.0))
    f.utterance("fearful", 11.0, gap=60.0)  # a minute of silence after it
    assert [alert_state(p) for p in f.out] == [STARTED]
    last_speech = T0 + f.t - 60.0
    assert f.eng.tick(last_speech + 119.0) == []
    got = f.eng.tick(last_speech + 121.0)
    assert [alert_state(p) for p in got] == [CLEARED]
    valid(got[0])
    assert "no speech on agent" in got[0]["message"]
    # History forgotten: 9 s more of fear does not start it again (would with the old 11 s).
    f.t += 200
    assert f.utterance("fearful", 9.0) == []


def test_low_confidence_and_other_labels_do_not_count() -> None:
    f = Feed(engine())
    f.utterance("angry", 15.0, confidence=0.3)  # below min_confidence 0.35
    f.utterance("sad", 15.0, confidence=0.9)
    f.utterance(None, 15.0, confidence=0.3)  # below the decision threshold: no label
    assert f.out == []


def test_channels_are_separate() -> None:
    eng = engine()
    agent, customer = Feed(eng, "agent"), Feed(eng, "customer")
    agent.utterance("angry", 6.0)
    customer.utterance("angry", 6.0)
    assert agent.out == customer.out == []  # 6 + 6 would exceed 10, but not per channel
    got = customer.utterance("angry", 5.0)
    assert [(p["channel"], alert_state(p)) for p in got] == [("customer", STARTED)]


def test_utterances_without_windows_count_whole_and_tails_count_once() -> None:
    eng = engine()
    out: list[dict[str, Any]] = []
    t = 0.0
    # Short utterances (no windows, e.g. another pipeline): their whole span counts.
    for seg in range(11):
        d = Decision("utterance", "main", seg, t, t + 1.0, "angry", 0.9, windows=0)
        out += eng.observe(d, T0 + t, T0 + t + 1.0, T0 + t + 1.0)
        t += 3.0
    assert [alert_state(p) for p in out] == [STARTED]  # after 11 x 1 s > 10 s

    eng2 = engine()
    # One utterance 0..4.3 s with windows 0-2, 0.5-2.5, ..., 2-4: windows cover 0..4,
    # the utterance adds only its 0.3 s tail: 4.3 s in all.
    for i in range(5):
        a = i * 0.5
        eng2.observe(Decision("window", "main", 0, a, a + 2.0, "angry", 0.9), T0, T0, T0)
    eng2.observe(Decision("utterance", "main", 0, 0.0, 4.3, "angry", 0.9, windows=5),
                 T0, T0, T0)
    assert eng2._channels["main"].seconds == pytest.approx(4.3)


def test_close_clears_active_alerts() -> None:
    f = Feed(engine())
    f.utterance("angry", 12.0)
    got = f.eng.close(T0 + 1000)
    assert [(alert_state(p), p["message"]) for p in got] == [(CLEARED, "serd stopping")]
    valid(got[0])
    assert f.eng.close(T0 + 2000) == []


def test_rule_labels_must_be_model_labels() -> None:
    s = AlertSettings(enabled=True, rules=(AlertRule(labels=("angry", "angy")),))
    with pytest.raises(ConfigError, match=r"alerts\.rules\[0\]\.labels: 'angy' is not a label"):
        AlertEngine(s, device_id="d", model="m", labels=LABELS)
    # Disabled: not checked (the model may differ from the one the rules were written for).
    AlertEngine(AlertSettings(rules=s.rules), device_id="d", model="m", labels=LABELS)


def test_config_section_parses_and_validates() -> None:
    cfg = parse(yaml.safe_load("""
alerts:
  enabled: true
  rules:
    - {name: anger, labels: [angry], min_seconds: 5, over_seconds: 20}
    - {name: sadness, labels: [sad], min_seconds: 20, over_seconds: 60, clear_seconds: 2}
"""))
    assert cfg.alerts.enabled
    assert [r.name for r in cfg.alerts.rules] == ["anger", "sadness"]
    assert cfg.alerts.rules[0].labels == ("angry",)
    assert cfg.alerts.rules[0].min_confidence == 0.35
    assert cfg.alerts.rules[0].clear_at_seconds == 2.5
    assert cfg.alerts.rules[1].clear_at_seconds == 2.0
    for text, match in [
        ("alerts: {rules: [{over_seconds: 5}]}", r"alerts\.rules\[0\]\.over_seconds"),
        ("alerts: {rules: [{min_confidence: 2}]}", r"alerts\.rules\[0\]\.min_confidence"),
        ("alerts: {rules: [{labels: []}]}", r"alerts\.rules\[0\]\.labels"),
        ("alerts: {rules: [{clear_seconds: 10}]}", r"alerts\.rules\[0\]\.clear_seconds"),
        ("alerts: {rules: [{name: a}, {name: a}]}", r"alerts\.rules: rule names must be unique"),
        ("alerts: {rules: [{nmae: a}]}", r"alerts\.rules\[0\]\.nmae: unknown key"),
        ("alerts: {clear_after_silence_seconds: 0}", r"alerts\.clear_after_silence_seconds"),
        ("alerts: {enabled: true, rules: []}", r"alerts\.rules: alerts are enabled but no rule"),
    ]:
        with pytest.raises(ConfigError, match=match) as exc:
            parse(yaml.safe_load(text))
        assert "\n" not in str(exc.value)


def test_alert_state_reads_state_field_or_message() -> None:
    assert alert_state({"state": "started"}) == STARTED
    assert alert_state({"message": None}) == STARTED
    assert alert_state({"state": "cleared", "message": "whatever"}) == CLEARED


# -- the daemon publishes them ------------------------------------------------------------


@pytest.mark.broker
def test_daemon_publishes_alerts_spooled_with_their_own_seq(
    tmp_path: Path, mosquitto: Any, subscriber: Any, model_path: Path, data_dir: Path
) -> None:
    """``serd --once --publish`` (Daemon + ReplaySource): alerts arrive on /alert with QoS 1,
    seq 1, 2 (separate from emotion seq), schema-valid; cleared at the end of the replay."""
    sub = subscriber(mosquitto, "serd/#")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "desk-7",
        "state_dir": str(tmp_path / "state"),
        "model": {"path": str(model_path)},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        # Every label counts and every window claims one: the rule must fire on any model.
        "decisions": {"threshold": 0.0},
        "alerts": {"enabled": True, "rules": [{
            "name": "any_speech", "labels": list(LABELS), "min_seconds": 2.0,
            "over_seconds": 6.0, "min_confidence": 0.0}]},
    }))
    clips = [str(data_dir / "1001_IEO_ANG_HI.flac"), str(data_dir / "1001_IEO_FEA_HI.flac")]
    r = subprocess.run(
        [sys.executable, "-m", "serd.cli", "--config", str(cfg), "--once", "--publish",
         "--speed", "0", "--device-id", "desk-7", *clips],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    msgs = sub.wait_for(lambda ms: sum(m.topic.endswith("/alert") for m in ms) >= 2)
    alerts = [m for m in msgs if m.topic == "serd/desk-7/alert"]
    assert all(m.qos == 1 and not m.retain for m in alerts)
    payloads = [m.json() for m in alerts]
    for p in payloads:
        jsonschema.validate(p, SCHEMA)
    assert [p["seq"] for p in payloads] == [1, 2]
    assert [alert_state(p) for p in payloads] == [STARTED, CLEARED]
    assert payloads[1]["state"] == "cleared"
    assert payloads[1]["message"] == "serd stopping"
    emotion_seqs = [m.json()["seq"] for m in msgs if m.topic == "serd/desk-7/emotion"]
    assert emotion_seqs[0] == 1  # counted separately from alerts
