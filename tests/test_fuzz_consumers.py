"""Property-based fuzzing of every Python consumer of MQTT payloads.

Every payload a consumer reads is hostile until checked.  Whatever a message holds (any
bytes; any JSON shape, with the fields serd uses given any type: lists, objects, huge or
non-finite numbers, booleans, control characters), the consumers never raise, never show
a raw terminal control character, and keep what they store bounded:

* ``serd listen``: the payload check (:func:`serd.mqttclient.read_json_object`), the
  board (:meth:`serd.listen.Board.feed`, ``table``) and the whole message callback with
  ``--json`` and ``--count``;
* Home Assistant discovery: the birth-topic handler (:meth:`serd.discovery.Discovery.
  handle`), and the templates Home Assistant renders on serd's topics (rendered with
  Jinja2 as Home Assistant does: they either give one of the entity's allowed values or
  fail as a template error, which Home Assistant logs and ignores).

The dashboard's JavaScript consumer has its own tests (tests/test_dashboard.py).  The
example count is modest so the module stays well under a minute on a busy 2-core CI
machine; ``SERD_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_consumers.py`` digs deeper.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serd.discovery import UNSURE, Discovery, DiscoverySettings, configs  # noqa: E402
from serd.listen import Board, Listener, clean, json_line  # noqa: E402
from serd.mqttclient import MAX_PACKET_BYTES, read_json_object  # noqa: E402
from serd.publisher import MqttSettings  # noqa: E402

EXAMPLES = int(os.environ.get("SERD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a loaded CI machine stalls at random; the per-example work is bounded
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("SERD_FUZZ_RANDOM") is None,  # reproducible in CI
    database=None,
)

# Raw control characters a terminal would act on (the table's own colours aside).
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# Text that likes to hurt terminals and parsers.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\x1b]0;title\x07", "\x1b]52;c;Zm9v\x07", "\x1b[2J", "\x9b2K", "\x7f",
                     "\u202eevil", "", "online", "offline", "degraded", "started", "cleared",
                     "window", "utterance", "angry", "2024-05-01T12:00:00.000Z",
                     "9999999-01-01T00:00:00Z", "Z", "x" * 5000, "\ud800", "a\udfffb"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(nasty_text, inner, max_size=4)),
    max_leaves=12,
)
FIELDS = ("schema", "type", "device_id", "channel", "role", "seq", "ts", "start", "end",
          "label", "confidence", "probs", "model", "rule", "state", "reason", "message",
          "version", "alerts", "channels", "input_open", "publisher")
payloads = st.dictionaries(st.one_of(st.sampled_from(FIELDS), nasty_text), json_values,
                           max_size=10)
devices = st.one_of(st.sampled_from(["d1", "d2", "pi-desk.7"]),
                    st.text(alphabet=st.characters(blacklist_characters="/+#"), min_size=1,
                            max_size=20))
suffixes = st.sampled_from(["emotion", "alert", "status", "health", "state"])


@FUZZ
@given(st.binary(max_size=2000))
def test_payload_check_never_raises(raw: bytes) -> None:
    p = read_json_object(raw)
    assert (p.value is None) == bool(p.problem)
    assert p.problem in ("", "not_json", "not_object", "too_big")


def test_payload_check_bounds() -> None:
    assert read_json_object(b"{}" + b" " * MAX_PACKET_BYTES).problem == "too_big"
    assert read_json_object(b"[" * 100_000).problem == "not_json"
    assert read_json_object(b'{"a": NaN}').problem == "not_json"
    assert read_json_object(b'{"a": Infinity}').problem == "not_json"
    assert read_json_object(b"\xff\xfe\x00").problem == "not_json"
    assert read_json_object(b"[1]").problem == "not_object"
    assert read_json_object(b'{"a": 1}').value == {"a": 1}


@FUZZ
@given(st.lists(st.tuples(devices, suffixes, payloads), min_size=1, max_size=12))
def test_board_feed_and_table_never_raise(messages: list[tuple[str, str, dict]]) -> None:
    board = Board("serd", max_devices=5)
    for device, suffix, payload in messages:
        board.feed(f"serd/{device}/{suffix}", payload, now=1_714_564_800.0)
    table = board.table(color=False, now=1_714_564_900.0)
    assert not _RAW_CONTROL.search(table), repr(table)
    table.encode("utf-8")  # writable to a UTF-8 terminal (no lone surrogate)
    assert len(board.devices) <= 5
    for line in table.splitlines():
        assert len(line) < 1000  # every cell is cut
    board.table(color=True, max_rows=3)


@FUZZ
@given(json_values)
def test_json_line_is_json_without_raw_control_characters(value: Any) -> None:
    line = json_line({"topic": "t", "value": value})
    assert "\n" not in line
    assert not _RAW_CONTROL.search(line), repr(line)
    line.encode("utf-8")
    assert json.loads(line)["value"] == value


@FUZZ
@given(nasty_text)
def test_clean_escapes_and_bounds(text: str) -> None:
    shown = clean(text)
    assert not _RAW_CONTROL.search(shown)
    shown.encode("utf-8")
    assert len(shown) <= 48 * 6  # cut to 48 characters, each at most a 6-character escape


@dataclass
class _Msg:
    topic: str
    payload: bytes


@FUZZ
@given(st.lists(st.tuples(devices, suffixes, st.one_of(payloads.map(
    lambda p: json.dumps(p).encode()), st.binary(max_size=200))), max_size=10),
    st.integers(min_value=1, max_value=4))
def test_listen_message_callback_with_json_and_count(
    messages: list[tuple[str, str, bytes]], count: int
) -> None:
    out = io.StringIO()
    listener = Listener(MqttSettings(host="127.0.0.1"), as_json=True, count=count, out=out)
    for device, suffix, raw in messages:
        listener._on_message(None, None, _Msg(f"serd/{device}/{suffix}", raw))  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert len(lines) <= count
    for line in lines:
        assert not _RAW_CONTROL.search(line)
        line.encode("utf-8")
        assert isinstance(json.loads(line), dict)
    assert listener.stop.is_set() == (len(lines) == count)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.sampled_from(
    [b"online", b" online\n", b"offline", b"online" + b" " * 100, b""])),
    st.sampled_from(["homeassistant/status", "homeassistant/other", "x"]))
def test_discovery_birth_handler(payload: bytes, topic: str) -> None:
    disc = Discovery(DiscoverySettings(enabled=True), MqttSettings(host="127.0.0.1"),
                     device_id="d1", channels=("main",), labels=("angry",), model="m")
    disc.handle(topic, payload)
    is_birth = topic == "homeassistant/status" and payload.strip() == b"online" and \
        len(payload) <= 64
    assert disc.births == int(is_birth)
    assert disc.ignored == int(topic == "homeassistant/status" and not is_birth)


class _This:
    def __init__(self, state: str, attributes: dict[str, Any]) -> None:
        self.state = state
        self.attributes = attributes


LABELS = ("neutral", "happy", "sad", "angry")
CONFIGS = configs(DiscoverySettings(enabled=True), topic_prefix="serd", device_id="d1",
                  channels=("main", "a b"), labels=LABELS, model="m",
                  rules=("sustained_distress",))


@FUZZ
@given(payloads)
def test_home_assistant_templates_give_allowed_values_or_fail(payload: dict) -> None:
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment()
    this = _This("previous", {"confidence": 0.5})
    text = json.dumps(payload)
    for cfg in CONFIGS.values():
        for key in ("value_template", "json_attributes_template"):
            if key not in cfg:
                continue
            try:
                out = env.from_string(cfg[key]).render(
                    value=text, value_json=payload, this=this).strip()
            except Exception:  # a template error: Home Assistant logs it, state unchanged
                continue
            if key == "json_attributes_template":
                assert isinstance(json.loads(out), dict)
            elif "event_types" in cfg:
                assert out == "" or json.loads(out)["event_type"]
            elif cfg.get("device_class") == "enum":
                assert out in (*LABELS, UNSURE, "None")
            elif "state_class" in cfg:
                assert out == "" or re.fullmatch(r"-?[0-9.e+-]+|-?inf", out), out
            else:
                assert out in ("ON", "OFF"), out


@FUZZ
@given(st.one_of(st.binary(max_size=5000), payloads.map(lambda p: json.dumps(p).encode()),
                 st.integers(min_value=1, max_value=6000).map(lambda n: b"[" * n),
                 st.integers(min_value=1, max_value=6000).map(
                     lambda n: b'{"state": ' + b"[" * n)))
def test_forget_status_check_never_raises(payload: bytes) -> None:
    """``serd forget`` reads each retained status to refuse forgetting a live device."""
    forget = pytest.importorskip("serd.forget")
    state = forget._status_state(payload)
    assert state is None or isinstance(state, str)


def test_every_serd_client_declares_the_maximum_packet_size() -> None:
    """Every paho connect in serd/ carries the CONNECT properties (Maximum Packet Size):
    through :func:`serd.mqttclient.connect_async`, or with ``properties=`` itself."""
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from serd.mqttclient import connect_properties  # noqa: PLC0415

    assert connect_properties().json() == {"MaximumPacketSize": MAX_PACKET_BYTES}
    root = Path(__file__).resolve().parent.parent / "serd"
    bare = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "mqttclient.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("connect", "connect_async") and \
                    "client" in ast.unparse(node.func.value).lower() and \
                    not any(k.arg == "properties" for k in node.keywords):
                bare.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert bare == [], "connect without serd.mqttclient's properties: " + ", ".join(bare)


names = st.one_of(st.text(min_size=1, max_size=12),
                  st.sampled_from(["a b", "a_b", "a.b", "a-b", "_", "é", "alert", "a_alert_b"]))


@FUZZ
@given(st.lists(names, min_size=1, max_size=4, unique=True),
       st.lists(names, max_size=3, unique=True))
def test_home_assistant_ids_are_injective(channels: list[str], rules: list[str]) -> None:
    """Issue 24 finding 13: every channel and rule keeps its own entities."""
    cfgs = configs(DiscoverySettings(enabled=True), topic_prefix="serd", device_id="d1",
                   channels=channels, labels=LABELS, model="m", rules=rules)
    assert len(cfgs) == len(channels) * (2 + len(rules)) + 4
    assert len({c["unique_id"] for c in cfgs.values()}) == len(cfgs)
    assert all(re.fullmatch(r"[A-Za-z0-9_/-]+", t) for t in cfgs)
