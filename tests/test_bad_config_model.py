"""Bad configuration and bad models: one clear line, a distinct exit code, no restart loop.

The cases are generated from the ``Config`` dataclass tree, so a key added tomorrow is
covered without touching this file: for every leaf key a misspelt key, wrong-typed values
and extreme numbers (NaN, +-inf, +-1e12, 0, 2**63).  A value the validation accepts must
then also *work*: the stages build from it and process speech without an exception (an
``OverflowError`` at start would be a traceback and, under systemd, a restart loop on a
configuration error).

Exit codes come from ``serd.cli.main`` in-process (fast) and, for the daemon's own start
path, from real ``serd --config`` processes; ``systemd/serd.service`` must prevent restarts
for exactly the codes serd returns for these errors.  See also tests/test_config.py,
tests/test_model.py and tests/test_systemd_unit.py (exposure score).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pytest
import yaml

from serd import cli
from serd.capture import Capture
from serd.config import EXIT_CONFIG, EXIT_DATAERR, EXIT_STATE, EXIT_TEMPFAIL, Config, parse
from serd.config import load as load_config
from serd.daemon import Daemon
from serd.decode import load
from serd.model import Classifier, card_path_for, sha256_of
from serd.publisher import StdoutPublisher
from serd.validate import ConfigError
from serd_testkit import ArraySource, edit_card

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "serd.service"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


# -- the key tree -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]  # "rules[0]" is one element for a list of mappings
    tp: Any

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def doc(self, value: Any) -> dict[str, Any]:
        """A config document setting only this leaf to ``value``."""
        node: Any = value
        for part in reversed(self.path):
            node = {part[:-3]: [node]} if part.endswith("[0]") else {part: node}
        return node

    def misspelt(self) -> tuple[dict[str, Any], str]:
        """A document with this leaf's own name misspelt, and the dotted bad key."""
        name = self.path[-1]
        bad = name[0] + name[2] + name[1] + name[3:] if len(name) > 2 and name[1] != name[2] \
            else name + "s"
        path = (*self.path[:-1], bad)
        return Leaf(path, self.tp).doc(1), ".".join(path)


def _leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, (*prefix, f.name))  # type: ignore[arg-type]
        elif typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
            yield Leaf((*prefix, f.name), tp)
            yield from _leaves(args[0], (*prefix, f"{f.name}[0]"))
        else:
            yield Leaf((*prefix, f.name), tp)


LEAVES = list(_leaves(Config))
LEAF_IDS = [leaf.dotted for leaf in LEAVES]


def _is(tp: Any, *kinds: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return any(a in kinds for a in args)


def wrong_values(tp: Any) -> list[Any]:
    """Values of a type ``tp`` does not take (each must be refused)."""
    literal = typing.get_origin(tp) is Literal
    candidates: list[tuple[Any, bool]] = [
        ({"nested": 1}, False),  # no leaf takes a mapping
        ([1], False),  # lists: of strings or of mappings, never of ints
        ("not-an-option", _is(tp, str) and not literal),
        (42, _is(tp, int, float) and not literal),
        (1.5, _is(tp, float)),
        (True, _is(tp, bool)),
    ]
    return [value for value, accepted in candidates if not accepted]


def numeric_leaves() -> list[Leaf]:
    return [leaf for leaf in LEAVES
            if _is(leaf.tp, int, float) and not _is(leaf.tp, str, bool)]


EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 1e12, -1e12, 0.0, 1e-9]
EXTREME_INTS = [-1, 0, 2**31, 2**63]


def config_file(tmp_path: Path, doc: Any, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_config_line(err: str, *must: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("serd: configuration error: "), err
    for m in must:
        assert m in lines[0], (m, lines[0])
    assert "Traceback" not in err


def test_the_tree_is_big_enough() -> None:
    """Sanity: the generator sees every section and the alert rule fields."""
    sections = {leaf.path[0] for leaf in LEAVES}
    assert {"model", "audio", "vad", "decisions", "mqtt", "alerts", "discovery"} <= sections
    assert any(leaf.path[:2] == ("alerts", "rules[0]") for leaf in LEAVES)
    assert len(LEAVES) >= 50


# -- misspelt keys ------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_misspelt_key_is_one_line_naming_it_and_the_right_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], leaf: Leaf
) -> None:
    doc, bad = leaf.misspelt()
    path = config_file(tmp_path, doc)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"{path}: {bad}: unknown key; allowed here: " in msg
    assert leaf.path[-1] in msg.split("allowed here: ", 1)[1].split(", ")
    rc, err = run_main(capsys, "--config", str(path), "--check-config")
    assert rc == EXIT_CONFIG
    assert_one_config_line(err, bad)


# -- wrong types --------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_wrong_typed_values_are_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], leaf: Leaf
) -> None:
    for i, value in enumerate(wrong_values(leaf.tp)):
        path = config_file(tmp_path, leaf.doc(value), f"c{i}.yaml")
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        msg = str(exc.value)
        assert "\n" not in msg
        assert f"{leaf.dotted}" in msg or f"{leaf.dotted}[0]" in msg, (value, msg)
        rc, err = run_main(capsys, "--config", str(path), "--check-config")
        assert rc == EXIT_CONFIG, (value, err)
        assert_one_config_line(err, leaf.path[-1].removesuffix("[0]"))


# -- extreme numbers: refused, or they work ----------------------------------------------

_SPEECH: dict[str, np.ndarray] = {}


def exercise(cfg: Config, classifier: Classifier, state: Path, data_dir: Path) -> int:
    """Build every stage from ``cfg`` and run speech through it; events produced."""
    if "x" not in _SPEECH:
        clip = load(data_dir / "1001_IEO_ANG_HI.flac", 16000)
        _SPEECH["x"] = np.concatenate([clip, np.zeros(8000, np.float32), clip,
                                       np.zeros(16000, np.float32)])
    Capture(cfg.audio, target_rate=16000)  # sizes its queue; does not open a device
    cfg = dataclasses.replace(cfg, state_dir=str(state), mqtt=dataclasses.replace(
        cfg.mqtt, host=None))
    pub = StdoutPublisher("t", state, stream=io.StringIO())
    pub.start()
    d = Daemon(cfg, source=ArraySource(_SPEECH["x"], [1600]), publisher=pub, classifier=classifier)
    d.source.open()
    now = 1_700_000_000.0
    while (block := d.source.read(0.0)) is not None:
        now += 0.1
        d.process_block(block, now)
        d._publish_alerts(d.alerts.tick(now))
    for pipe in d.pipelines:
        d._publish(pipe.flush())
    d._maybe_health(now + 1e6)
    pub.close()
    return d.counters.events


def _extreme_cases() -> list[Any]:
    cases = []
    for leaf in numeric_leaves():
        values = EXTREME_INTS if _is(leaf.tp, int) and not _is(leaf.tp, float) else \
            EXTREME_FLOATS
        for v in values:
            cases.append(pytest.param(leaf, v, id=f"{leaf.dotted}={v}"))
    return cases


@pytest.mark.parametrize(("leaf", "value"), _extreme_cases())
def test_extreme_numbers_are_refused_in_one_line_or_work(
    tmp_path: Path, classifier: Classifier, data_dir: Path, leaf: Leaf, value: float
) -> None:
    try:
        cfg = parse(leaf.doc(value), "c.yaml")
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert leaf.path[-1].removesuffix("[0]") in msg, msg
        return
    assert not (isinstance(value, float) and math.isnan(value)), "NaN was accepted"
    exercise(cfg, classifier, tmp_path / "state", data_dir)


def test_non_finite_timeouts_are_refused(tmp_path: Path) -> None:
    """Were accepted: .inf in mqtt.connect_timeout_seconds killed paho's network thread
    (the daemon ran on without ever connecting); in audio.queue_seconds it crashed the
    daemon at start (a restart loop on a configuration error)."""
    for section, key in [("mqtt", "connect_timeout_seconds"), ("mqtt", "reconnect_max_seconds"),
                         ("audio", "queue_seconds"), ("audio", "stall_seconds"),
                         ("audio", "reopen_max_seconds")]:
        with pytest.raises(
            ConfigError, match=rf"{section}\.{key}: (must be|expected) a finite number"
        ):
            parse({section: {key: math.inf}})


def test_defaults_work(tmp_path: Path, classifier: Classifier, data_dir: Path) -> None:
    assert exercise(Config(), classifier, tmp_path / "s", data_dir) > 0


# -- files that are not a configuration --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "must"),
    [
        ("- a\n- b\n", "must be a mapping"),
        ("just a sentence\n", "not str"),
        ("42\n", "not int"),
        ("3.5\n", "not float"),
        ("true\n", "not bool"),
        ("mqtt: [1, 2]\n", "mqtt: expected a mapping"),
        ("mqtt:\n  host: a\n   port: 1\n", "not valid YAML at line"),
        ("mqtt:\n\thost: a\n", "not valid YAML"),
        ("{unclosed: \n", "not valid YAML"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
        ("? [a, b]\n: 1\n", "not valid YAML"),
        ("1: 2\n", "unknown key"),
        ("null: 2\n", "unknown key"),
    ],
)
def test_yaml_that_is_not_a_config_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, must: str
) -> None:
    path = config_file(tmp_path, text)
    rc, err = run_main(capsys, "--config", str(path), "--check-config")
    assert rc == EXIT_CONFIG, err
    assert_one_config_line(err, must)


def test_config_files_that_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        tmp_path / "missing.yaml": "does not exist",
        tmp_path: "cannot be read",  # a folder
    }
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("device_id: caf\xe9\n".encode("latin-1"))
    cases[latin] = "cannot be read"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(os.urandom(64) + b"\x00\xff")
    cases[binary] = "configuration error"
    for path, must in cases.items():
        rc, err = run_main(capsys, "--config", str(path), "--check-config")
        assert rc == EXIT_CONFIG, (path, err)
        assert_one_config_line(err, must)


def test_an_empty_or_comment_only_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(config_file(tmp_path, "")) == Config()
    assert load_config(config_file(tmp_path, "# nothing here\n", "d.yaml")) == Config()


# -- bad models ---------------------------------------------------------------------------




def _break(model: Path, how: str) -> str:
    """Damage the model copy; the text the one-line error must contain."""
    card = card_path_for(model)
    if how == "missing":
        model.unlink()
        return "does not exist"
    if how == "empty":
        model.write_bytes(b"")
        return "does not match its card"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[:200])
        return "does not match its card"
    if how == "truncated-no-hash":
        model.write_bytes(model.read_bytes()[:200])
        edit_card(model, model_file__sha256="")
        return "cannot be loaded"
    if how == "garbage-no-hash":
        model.write_bytes(os.urandom(5000))
        edit_card(model, model_file__sha256="")
        return "cannot be loaded"
    if how == "folder":
        model.unlink()
        model.mkdir()
        return "does not exist"
    if how == "card-missing":
        card.unlink()
        return "is missing"
    if how == "card-not-json":
        card.write_text("{ nope")
        return "not readable JSON"
    if how == "card-a-list":
        card.write_text("[1, 2]")
        return "is invalid"
    if how == "card-format":
        edit_card(model, card_format=99)
        return "card_format"
    if how == "card-no-labels":
        data = json.loads(card.read_text())
        del data["labels"]
        card.write_text(json.dumps(data))
        return "is invalid"
    if how == "labels":
        edit_card(model, labels=["calm", "loud"])
        return "labels"
    if how == "features":
        edit_card(model, features__n_mfcc=13)
        return "n_mfcc=13"
    if how == "sample-rate":
        # A consistent front-end for 8 kHz telephony audio: not what this serd computes.
        edit_card(model, features__sample_rate=8000, features__fmax_hz=4000.0,
                   features__n_fft=256)
        return "sample_rate=8000"
    if how == "window":
        edit_card(model, windows__window_seconds=1.0)
        return "do not belong together"
    if how == "frontend-version":
        edit_card(model, frontend_version=0)
        return "front-end version"
    if how == "fingerprint":
        data = json.loads(card.read_text())
        data["fingerprint"] = [v + 1.0 for v in data["fingerprint"]]
        card.write_text(json.dumps(data))
        return "fingerprint"
    if how == "other-models-card":
        edit_card(model, model_file__sha256="0" * 64)
        return "does not match its card"
    raise AssertionError(how)


MODEL_FAULTS = [
    "missing", "empty", "truncated", "truncated-no-hash", "garbage-no-hash", "folder",
    "card-missing", "card-not-json", "card-a-list", "card-format", "card-no-labels",
    "labels", "features", "sample-rate", "window", "frontend-version", "fingerprint",
    "other-models-card",
]


@pytest.mark.parametrize("how", MODEL_FAULTS)
def test_bad_model_is_one_line_and_exit_65(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_copy: Path, how: str
) -> None:
    must = _break(model_copy, how)
    rc, err = run_main(capsys, "--model", str(model_copy), "--check-config")
    lines = [line for line in err.splitlines() if line.startswith("serd: ")]
    assert rc == EXIT_DATAERR, err
    assert len(lines) == 1, err
    assert lines[0].startswith("serd: model error: "), err
    assert must in lines[0], (must, lines[0])
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A float32 (not int8) TFLite model of the right shape, with a card copied from the
    int8 one (its hash updated): the mistake of shipping an unquantised export."""
    pytest.importorskip("tensorflow", reason="needs TensorFlow (train extra) to build it")
    d = tmp_path_factory.mktemp("float-model")
    out = d / "float.tflite"
    code = (
        "import sys, tensorflow as tf\n"
        "m = tf.keras.Sequential([tf.keras.Input((int(sys.argv[2]), int(sys.argv[3]))),"
        " tf.keras.layers.Conv1D(4, 5, activation='relu'),"
        " tf.keras.layers.GlobalAveragePooling1D(),"
        " tf.keras.layers.Dense(int(sys.argv[4]), activation='softmax')])\n"
        "open(sys.argv[1], 'wb').write(tf.lite.TFLiteConverter.from_keras_model(m).convert())\n"
    )
    card = json.loads(card_path_for(model_path).read_text())
    from serd.features import FeatureParams, WindowParams  # noqa: PLC0415

    frames, _ = WindowParams(**card["windows"]).frames(FeatureParams(**card["features"]))
    r = subprocess.run(
        [sys.executable, "-c", code, str(out), str(frames),
         str(FeatureParams(**card["features"]).n_features),
         str(len(card["labels"]))],
        capture_output=True, text=True, timeout=300, env={**ENV, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    card["model_file"]["sha256"] = sha256_of(out)
    card["name"] = "float-export"
    card_path_for(out).write_text(json.dumps(card))
    return out


def test_float_model_is_refused(capsys: pytest.CaptureFixture[str], float_model: Path) -> None:
    rc, err = run_main(capsys, "--model", str(float_model), "--check-config")
    assert rc == EXIT_DATAERR, err
    assert "serd: model error: " in err
    assert "int8" in err


# -- the daemon's own start path, as systemd runs it --------------------------------------


def _unit_prevented_codes() -> set[int]:
    codes: set[int] = set()
    for line in UNIT.read_text().splitlines():
        if line.strip().startswith("RestartPreventExitStatus="):
            codes |= {int(c) for c in line.split("=", 1)[1].split()}
    return codes


def _daemon(config: Path, *extra: str, env: dict[str, str] | None = None,
            ) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "serd.cli", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=60, env=env or ENV, check=False,
    )
    return r.returncode, r.stderr, time.monotonic() - t0


def test_daemon_start_errors_exit_with_a_code_systemd_does_not_restart(
    tmp_path: Path, model_path: Path, model_copy: Path
) -> None:
    """``serd --config X`` (the unit's ExecStart) on errors that only show when the daemon
    starts: the real exit codes are in RestartPreventExitStatus, with one line each."""
    prevented = _unit_prevented_codes()
    assert {EXIT_CONFIG, EXIT_DATAERR} <= prevented
    base = {"state_dir": str(tmp_path / "state"), "model": {"path": str(model_path)}}
    cases: list[tuple[str, dict[str, Any], dict[str, str], str, int]] = [
        ("unknown key", {**base, "vad": {"threshold_dB": 3}}, {}, "vad.threshold_dB",
         EXIT_CONFIG),
        ("password file missing",
         {**base, "mqtt": {"host": "127.0.0.1", "username": "u",
                           "password_file": str(tmp_path / "nope")}},
         {}, "mqtt.password_file", EXIT_CONFIG),
        ("password env unset",
         {**base, "mqtt": {"host": "127.0.0.1", "username": "u",
                           "password_env": "SERD_TEST_UNSET_PW"}},
         {}, "SERD_TEST_UNSET_PW", EXIT_CONFIG),
        ("CA file missing",
         {**base, "mqtt": {"host": "127.0.0.1", "tls": True,
                           "ca_file": str(tmp_path / "no-ca.pem")}},
         {}, "mqtt.ca_file: cannot read " + str(tmp_path / "no-ca.pem"), EXIT_CONFIG),
        ("CA file not a certificate",
         {**base, "mqtt": {"host": "127.0.0.1", "tls": True,
                           "ca_file": str(config_file(tmp_path, "not a cert", "ca.pem"))}},
         {}, f"mqtt.ca_file: {tmp_path / 'ca.pem'} holds no usable CA certificate",
         EXIT_CONFIG),
        ("model missing", {**base, "model": {"path": str(tmp_path / "none.tflite")}}, {},
         "does not exist", EXIT_DATAERR),
    ]
    _break(model_copy, "labels")
    cases.append(("card mismatch", {**base, "model": {"path": str(model_copy)}}, {},
                  "labels", EXIT_DATAERR))
    for name, doc, env, must, code in cases:
        cfg = config_file(tmp_path, doc, "daemon.yaml")
        environ = {k: v for k, v in ENV.items() if k != "SERD_TEST_UNSET_PW"} | env
        rc, err, took = _daemon(cfg, env=environ)
        assert rc == code, (name, rc, err[-2000:])
        assert rc in prevented, name
        lines = [line for line in err.splitlines() if line.startswith("serd: ")]
        assert len(lines) == 1, (name, err)
        assert must in lines[0], (name, lines[0])
        assert "Traceback" not in err, name
        assert took < 30, name  # no retry loop inside serd either


def test_crash_codes_are_not_prevented() -> None:
    """A crash (exit 1, or a signal) must still be restarted; so must a bad --once file
    (2), which the daemon never returns, and a state directory held by another serd (75),
    which clears when that one stops.  An unusable state directory (73) is a storage
    fault that a restart every few seconds cannot mend."""
    prevented = _unit_prevented_codes()
    assert 1 not in prevented
    assert 2 not in prevented
    assert EXIT_TEMPFAIL not in prevented
    assert prevented == {EXIT_CONFIG, EXIT_DATAERR, EXIT_STATE}
