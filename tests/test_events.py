"""Event builders, timestamps and the JSON Schemas in serd/schema."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from serd import events

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_DIR = Path(events.__file__).parent / "schema"
T0 = 1714564800.0  # 2024-05-01T12:00:00Z


def load_schema(name: str) -> Any:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validator(name: str) -> Any:
    schema = load_schema(name)
    cls = jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def result(**overrides: Any) -> events.EmotionResult:
    fields: dict[str, Any] = {
        "type": "window",
        "channel": "0",
        "start_epoch_seconds": T0,
        "end_epoch_seconds": T0 + 1.5,
        "label": "angry",
        "confidence": 0.81234567,
        "probs": {"angry": 0.81234567, "neutral": 0.1, "sad": 0.08765433},
        "model": "crema-cnn-int8-v1",
    }
    fields.update(overrides)
    return events.EmotionResult(**fields)


def with_seq(payload: dict[str, Any], seq: int = 1) -> dict[str, Any]:
    return {**payload, "seq": seq}


@pytest.mark.parametrize("name", ["event", "alert", "status", "health"])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert events.iso_utc(T0) == "2024-05-01T12:00:00.000Z"
    assert events.iso_utc(T0 + 0.1234) == "2024-05-01T12:00:00.123Z"
    assert events.parse_iso_utc("2024-05-01T12:00:00.123Z") == pytest.approx(T0 + 0.123)
    with pytest.raises(ValueError, match="finite"):
        events.iso_utc(math.nan)
    with pytest.raises(ValueError, match="Z"):
        events.parse_iso_utc("2024-05-01T12:00:00.123+02:00")


def test_emotion_event_fields_and_schema() -> None:
    payload = events.emotion_event("pi-desk-7", result(), now_epoch_seconds=T0 + 2)
    assert list(payload) == [
        "schema", "type", "device_id", "channel", "role", "seq", "ts", "start", "end",
        "label", "confidence", "probs", "model",
    ]  # fmt: skip
    assert payload["role"] == "unspecified"  # no role declared
    assert payload["seq"] is None  # the spool assigns it
    assert payload["ts"] == "2024-05-01T12:00:02.000Z"
    assert payload["start"] == "2024-05-01T12:00:00.000Z"
    assert payload["end"] == "2024-05-01T12:00:01.500Z"
    assert payload["confidence"] == 0.8123
    assert payload["probs"] == {"angry": 0.8123, "neutral": 0.1, "sad": 0.0877}
    full = with_seq(payload, 42)
    validator("event").validate(full)
    # What goes on the wire round-trips.
    assert json.loads(events.to_json(full)) == full


def test_below_threshold_label_is_null_and_valid() -> None:
    payload = events.emotion_event("pi", result(type="utterance", label=None, confidence=0.3))
    assert payload["label"] is None
    validator("event").validate(with_seq(payload))


def test_schema_rejects_bad_events() -> None:
    good = with_seq(events.emotion_event("pi", result()))
    check = validator("event")
    for bad in (
        {**good, "seq": 0},
        {**good, "type": "frame"},
        {**good, "ts": "2024-05-01T12:00:00Z"},  # no milliseconds
        {**good, "confidence": 1.5},
        {**good, "probs": {}},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "model"},
    ):
        assert not check.is_valid(bad), bad


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"type": "frame"}, "type"),
        ({"channel": ""}, "channel"),
        ({"confidence": 1.2}, "confidence"),
        ({"confidence": math.nan}, "confidence"),
        ({"probs": {}}, "probs"),
        ({"probs": {"angry": -0.1}}, "probs"),
        ({"end_epoch_seconds": T0 - 1}, "end_epoch_seconds"),
        ({"start_epoch_seconds": math.inf}, "start_epoch_seconds"),
        ({"label": ""}, "label"),
        ({"model": ""}, "model"),
    ],
)
def test_emotion_result_validation(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        result(**overrides)


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "a#", " pi", "-pi", "x" * 65, "pi 7"])
def test_bad_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(ValueError, match="device_id"):
        events.validate_device_id(device_id)
    with pytest.raises(ValueError, match="device_id"):
        events.emotion_event(device_id, result())


def test_topic() -> None:
    assert events.topic("serd", "pi-7", "emotion") == "serd/pi-7/emotion"
    assert events.topic("acme/site1", "pi_7.a", "status") == "acme/site1/pi_7.a/status"


def test_alert_event_schema() -> None:
    alert = events.AlertResult(
        channel="caller",
        role="customer",
        rule="sustained_anger",
        label="angry",
        start_epoch_seconds=T0,
        end_epoch_seconds=T0 + 30,
        confidence=0.77,
        model="m",
        message="angry for 30 s",
    )
    payload = events.alert_event("pi", alert, now_epoch_seconds=T0 + 31)
    assert payload["type"] == "alert"
    assert payload["seq"] is None
    validator("alert").validate(with_seq(payload, 3))
    validator("alert").validate(with_seq({**payload, "message": None}, 3))
    assert payload["role"] == "customer"
    with pytest.raises(ValueError, match="rule"):
        events.AlertResult("agent", "", "angry", T0, T0 + 1, 0.5, "m")


def test_status_events() -> None:
    online = events.status_event("pi", "online", "connected", version="0.1.0")
    will = events.status_event("pi", "offline", "connection_lost", version="0.1.0", with_ts=False)
    assert online["state"] == "online"
    assert "ts" in online
    assert "ts" not in will
    for payload in (online, will):
        validator("status").validate(payload)
    with pytest.raises(ValueError, match="state"):
        events.status_event("pi", "dead", "x", version="1")  # type: ignore[arg-type]


def test_health_event() -> None:
    publisher = {
        "connected": True,
        "spool_depth": 0,
        "dropped": 0,
        "held_in_memory": 0,
        "sent": 5,
        "rejected": 0,
        "connects": 1,
    }
    payload = events.health_event(
        "pi",
        {"uptime_seconds": 12.5, "rtf": 0.21, "model": "m", "publisher": publisher},
        now_epoch_seconds=T0,
    )
    assert payload["uptime_seconds"] == 12.5
    validator("health").validate(payload)
    with pytest.raises(ValueError, match="reserved"):
        events.health_event("pi", {"ts": "now"})


def test_to_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        events.to_json({"x": math.nan})


def test_role_never_agent() -> None:
    """An agent's voice is never analysed: no event can say so, and consumers refuse one."""
    with pytest.raises(ValueError, match="agent"):
        result(role="agent")
    with pytest.raises(ValueError, match="role"):
        result(role="")
    payload = with_seq(events.emotion_event("pi", result(role="customer")), 1)
    validator("event").validate(payload)
    for bad in ("agent", "Customer", ""):
        with pytest.raises(jsonschema.ValidationError):
            validator("event").validate({**payload, "role": bad})
    # Events of older versions carry no role: still valid.
    validator("event").validate({k: v for k, v in payload.items() if k != "role"})
