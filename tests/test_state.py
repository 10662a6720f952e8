"""The retained current state (``{prefix}/{device}/state``) and the ``degraded`` status
(serd.state): unit tests of the stages, then the daemon against a real Mosquitto, where a
subscriber that connects in the middle of an alert sees it, sees it clear, and sees a
missing microphone as ``degraded``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from serd.config import parse
from serd.daemon import Daemon
from serd.events import AlertResult as AlertIn
from serd.events import EmotionResult, alert_event, emotion_event, status_event
from serd.replay import ReplaySource
from serd.state import Availability, AvailabilitySettings, LiveState
from serd_testkit import Broker, Message, Subscriber, wait_until

ROOT = Path(__file__).resolve().parent.parent
STATE_SCHEMA = json.loads((ROOT / "serd" / "schema" / "state.schema.json").read_text())
STATUS_SCHEMA = json.loads((ROOT / "serd" / "schema" / "status.schema.json").read_text())
T0 = 1_700_000_000.0
DEVICE = "state-desk"


def window(channel: str, label: str | None, conf: float, end: float) -> dict[str, Any]:
    return emotion_event(DEVICE, EmotionResult("window", channel, end - 2, end, label, conf,
                                               {"angry": conf, "neutral": 1 - conf}, "m"))


def alert(channel: str, state: str, start: float = T0, end: float = T0 + 10) -> dict[str, Any]:
    return alert_event(DEVICE, AlertIn(channel, "distress", "angry", start, end, 0.8, "m",
                                       f"{state}: angry", state=state))  # type: ignore[arg-type]


# -- LiveState --------------------------------------------------------------------------


def test_state_carries_last_verdicts_and_open_alerts_schema_valid() -> None:
    live = LiveState(DEVICE, "m", ("customer", "other"), roles={"customer": "customer"})
    first = live.due(0.0, T0, force=True)
    assert first is not None
    jsonschema.validate(first, STATE_SCHEMA)
    assert [c["channel"] for c in first["channels"]] == ["customer", "other"]
    assert first["channels"][0] == {"channel": "customer", "role": "customer", "label": None,
                                    "confidence": None, "kind": None, "end": None}
    assert first["channels"][1]["role"] == "unspecified"
    live(window("customer", "angry", 0.8123, T0 + 2))
    live(alert("customer", "started", T0 - 8, T0 + 2))
    p = live.due(5.0, T0 + 3)
    assert p is not None
    jsonschema.validate(p, STATE_SCHEMA)
    assert p["channels"][0]["label"] == "angry"
    assert p["channels"][0]["confidence"] == 0.81
    assert p["channels"][0]["end"] == "2023-11-14T22:13:22.000Z"
    assert p["alerts"] == [{"channel": "customer", "rule": "distress", "label": "angry",
                            "since": "2023-11-14T22:13:12.000Z", "confidence": 0.8,
                            "message": "started: angry"}]
    # A role carried by the events wins over the default.
    live({**window("other", None, 0.3, T0 + 4), "role": "supervisor"})
    live(alert("customer", "cleared"))
    p = live.due(10.0, T0 + 5)
    assert p is not None
    jsonschema.validate(p, STATE_SCHEMA)
    assert p["alerts"] == []
    assert p["channels"][1]["role"] == "supervisor"
    assert p["channels"][1]["label"] is None and p["channels"][1]["confidence"] == 0.3


def test_state_is_published_only_on_change_and_at_most_once_per_interval() -> None:
    live = LiveState(DEVICE, "m", ("a",), min_interval_seconds=1.0)
    assert live.due(0.0, T0, force=True) is not None
    assert live.due(5.0, T0) is None  # nothing changed
    live(window("a", "angry", 0.8, T0 + 2))
    assert live.due(5.0, T0) is not None
    live(window("a", "sad", 0.8, T0 + 2.5))
    assert live.due(5.5, T0) is None  # too soon: held back ...
    assert live.due(6.0, T0) is not None  # ... not lost
    # A confidence change below the rounding is no news.
    live(window("a", "sad", 0.8001, T0 + 2.5))
    assert live.due(9.0, T0) is None
    # Half-second windows for a minute: one state per second at most.
    sent = 0
    for i in range(120):
        live(window("a", "angry" if i % 2 else "sad", 0.8, T0 + i / 2))
        sent += live.due(10.0 + i / 2, T0) is not None
    assert sent == 60


def test_state_ignores_payloads_it_cannot_use() -> None:
    live = LiveState(DEVICE, "m", ("a",))
    before = live.payload(T0)
    for junk in ({}, {"type": "window"}, {"type": "window", "channel": 7},
                 {"type": "health", "channel": "a"}):
        live(junk)
    assert live.payload(T0) == before
    live({"type": "window", "channel": "a", "label": 3, "confidence": "x", "end": "bad"})
    p = live.payload(T0)
    jsonschema.validate(p, STATE_SCHEMA)
    assert p["channels"][0]["label"] is None and p["channels"][0]["confidence"] == 0.0


def test_reset_forgets_verdicts_and_alerts() -> None:
    live = LiveState(DEVICE, "m", ("a",))
    live(window("a", "angry", 0.9, T0))
    live(alert("a", "started"))
    live.reset()
    p = live.payload(T0)
    assert p["alerts"] == [] and p["channels"][0]["label"] is None


# -- Availability -------------------------------------------------------------------------


def test_availability_degraded_without_microphone_or_with_a_lasting_backlog() -> None:
    av = Availability(AvailabilitySettings(spool_backlog_events=100, spool_recovered_events=10,
                                           spool_backlog_seconds=30))
    assert av(input_open=True, spool_depth=0, now_monotonic=0) is None
    change = av(input_open=False, spool_depth=0, now_monotonic=1)
    assert change is not None and (change.state, change.reason) == ("degraded", "input_missing")
    assert av(input_open=False, spool_depth=0, now_monotonic=2) is None  # once per change
    change = av(input_open=True, spool_depth=0, now_monotonic=3)
    assert change is not None and (change.state, change.reason) == ("online", "connected")
    # An outage's backlog that drains within the hold time is no degradation.
    assert av(input_open=True, spool_depth=5000, now_monotonic=10) is None
    assert av(input_open=True, spool_depth=200, now_monotonic=30) is None
    assert av(input_open=True, spool_depth=0, now_monotonic=31) is None
    # One that lasts is.
    assert av(input_open=True, spool_depth=101, now_monotonic=100) is None
    assert av(input_open=True, spool_depth=60, now_monotonic=120) is None  # still not drained
    change = av(input_open=True, spool_depth=150, now_monotonic=130)
    assert change is not None and change.reason == "spool_backlog"
    assert av(input_open=True, spool_depth=50, now_monotonic=131) is None  # hysteresis
    change = av(input_open=False, spool_depth=50, now_monotonic=132)
    assert change is not None and change.reason == "input_missing"  # the mic goes first
    change = av(input_open=True, spool_depth=10, now_monotonic=133)
    assert change is not None and change.state == "online"
    for state, reason in (("degraded", "input_missing"), ("degraded", "spool_backlog"),
                          ("online", "connected")):
        payload = status_event(DEVICE, state, reason, version="1")  # type: ignore[arg-type]
        jsonschema.validate(payload, STATUS_SCHEMA)
    with pytest.raises(ValueError, match="spool_recovered_events"):
        AvailabilitySettings(spool_backlog_events=10, spool_recovered_events=10)


# -- the daemon, a real broker, a late joiner ------------------------------------------------


class Mic(ReplaySource):
    """Speech in a loop, paced; ``quiet`` gives silence; ``unplug`` makes it not open."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(files, 16000, speed=4.0, loop=True, gap_seconds=0.3)
        self.quiet = threading.Event()
        self.unplugged = threading.Event()

    @property  # type: ignore[override]
    def is_open(self) -> bool:
        return self._open and not self.unplugged.is_set()

    @is_open.setter
    def is_open(self, value: bool) -> None:
        self._open = value

    def read(self, timeout_seconds: float) -> np.ndarray | None:
        if self.unplugged.is_set():
            time.sleep(0.05)
            return None
        if self.quiet.is_set():  # silence, at about the replay's pace
            time.sleep(self.block / (self.rate * self.speed))
            return np.zeros((self.block, 1), np.float32)
        return super().read(timeout_seconds)


def retained(broker: Broker, topic: str, subscriber: Any) -> list[Message]:
    """What a consumer connecting now gets at once: the retained messages on ``topic``."""
    sub: Subscriber = subscriber(broker, topic, persistent=False)
    wait_until(lambda: bool(sub.snapshot()), 3)
    time.sleep(0.2)
    got = [m for m in sub.snapshot() if m.retain]
    sub.close()
    return got


@pytest.mark.broker
def test_late_joiner_sees_the_alert_in_progress_its_clear_and_a_deaf_device(
    tmp_path: Path, mosquitto: Broker, subscriber: Any, model_path: Path, data_dir: Path,
    classifier: Any,
) -> None:
    labels = list(classifier.labels)
    cfg = parse({
        "device_id": DEVICE, "state_dir": str(tmp_path / "state"),
        "model": {"path": str(model_path)},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "decisions": {"threshold": 0.0},
        # Every label counts: the rule fires on any speech, whatever the model hears.
        "alerts": {"enabled": True, "clear_after_silence_seconds": 1.0, "rules": [{
            "name": "any_speech", "labels": labels, "min_seconds": 2.0, "over_seconds": 6.0,
            "min_confidence": 0.0}]},
    })
    mic = Mic([data_dir / "1001_IEO_ANG_HI.flac", data_dir / "1091_TIE_NEU_XX.flac"])
    daemon = Daemon(cfg, source=mic, classifier=classifier)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    state_topic, status_topic = f"serd/{DEVICE}/state", f"serd/{DEVICE}/status"
    try:
        assert wait_until(lambda: bool(daemon.live.open_alerts), 60), "no alert started"
        time.sleep(1.2)  # one state interval: the alert is on the retained topic

        # A consumer connecting now sees the incident in progress, without any new event.
        got = retained(mosquitto, f"serd/{DEVICE}/+", subscriber)
        states = [m.json() for m in got if m.topic == state_topic]
        assert len(states) == 1, [m.topic for m in got]
        jsonschema.validate(states[0], STATE_SCHEMA)
        assert [a["rule"] for a in states[0]["alerts"]] == ["any_speech"]
        assert states[0]["channels"][0]["label"] in labels
        assert [m.json()["state"] for m in got if m.topic == status_topic] == ["online"]

        # Rate limit: a live subscriber sees at most about one state per second.
        live = subscriber(mosquitto, state_topic, persistent=False)
        time.sleep(3.0)
        assert 1 <= len(live.snapshot()) <= 5

        # The call ends: the alert clears, and the retained state says so.
        mic.quiet.set()
        assert wait_until(lambda: not daemon.live.open_alerts, 30), "alert did not clear"
        assert wait_until(lambda: any(not m.json()["alerts"] for m in live.snapshot()), 5)
        states = [m.json() for m in retained(mosquitto, state_topic, subscriber)]
        assert states and states[0]["alerts"] == []

        # The microphone goes away: degraded (retained), and online again when it is back.
        status = subscriber(mosquitto, status_topic, persistent=False)
        mic.unplugged.set()
        assert wait_until(lambda: any(m.json()["state"] == "degraded"
                                      for m in status.snapshot()), 10)
        got = retained(mosquitto, status_topic, subscriber)
        jsonschema.validate(got[0].json(), STATUS_SCHEMA)
        assert (got[0].json()["state"], got[0].json()["reason"]) == ("degraded", "input_missing")
        mic.unplugged.clear()
        assert wait_until(lambda: status.snapshot()[-1].json()["state"] == "online", 10)
    finally:
        daemon.request_stop()
        thread.join(20)
    assert not thread.is_alive()
    # A clean stop: the last retained state has no alert, and the status is offline.
    got = retained(mosquitto, f"serd/{DEVICE}/+", subscriber)
    by_topic = {m.topic: m.json() for m in got}
    assert by_topic[state_topic]["alerts"] == []
    assert by_topic[status_topic]["state"] == "offline"
