"""Configuration: config.yaml documents the defaults; bad keys and values are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serd.config import Config, load, parse
from serd.validate import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_config_yaml_is_exactly_the_defaults() -> None:
    assert load(ROOT / "config.yaml") == Config()


def test_config_yaml_names_every_key() -> None:
    import dataclasses  # noqa: PLC0415

    data = yaml.safe_load((ROOT / "config.yaml").read_text())

    def keys(obj: object, prefix: str = "") -> set[str]:
        out = set()
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out |= keys(value, f"{prefix}{f.name}.")
            else:
                out.add(prefix + f.name)
        return out

    def yaml_keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            if isinstance(v, dict):
                out |= yaml_keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    assert yaml_keys(data) == keys(Config())


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("device_id: desk-17\naudio: {device: USB}\nmqtt: {host: broker.local}\n")
    cfg = load(p)
    assert cfg.device_id == "desk-17"
    assert cfg.audio.device == "USB"
    assert cfg.audio.channels == ("main",)
    assert cfg.mqtt.host == "broker.local"
    assert cfg.mqtt.port == 1883
    assert cfg.vad == Config().vad


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("devcie_id: x\n", r"devcie_id: unknown key; allowed here: .*device_id"),
        ("mqtt:\n  prot: 1\n", r"mqtt\.prot: unknown key"),
        ("mqtt:\n  port: abc\n", r"mqtt\.port: expected an integer"),
        ("mqtt:\n  port: 70000\n", r"mqtt\.port: must be within"),
        ("vad:\n  backend: magic\n", r"vad\.backend: 'magic' is not allowed"),
        # YAML 1.1 reads an unquoted off as false: say so, and what to write instead.
        ("vad:\n  confirm: off\n", r"vad\.confirm: false is not allowed \(YAML reads "
         r"unquoted off, no, on and yes as false and true\); use one of 'silero', 'none'$"),
        ("vad:\n  confirm: yes\n", r"vad\.confirm: true is not allowed \(YAML reads"),
        ("audio:\n  channels: []\n", r"audio\.channels"),
        ("model:\n  num_threads: 0\n", r"model\.num_threads"),
        ("decisions: 5\n", r"decisions: expected a mapping"),
        ("log_level: loud\n", r"log_level"),
        ("- a\n- b\n", r"must be a mapping"),
        ("a: [\n", r"not valid YAML at line"),
        ("device_id: 'a/b'\n", r"device_id"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as exc:
        load(p)
    assert "\n" not in str(exc.value)
    assert str(p) in str(exc.value)


def test_empty_file_is_all_defaults() -> None:
    assert parse(None) == Config()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")


def test_state_dir_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/serd")
    assert Config().resolved_state_dir == Path("/var/lib/serd")
