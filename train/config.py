"""Training configuration: ``train/config.yaml`` deep-merged with a user file and --set."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_path(cfg: dict[str, Any], dotted: str, value: str) -> None:
    """``--set training.epochs=30``: the value is parsed as YAML."""
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = yaml.safe_load(value)


def load_config(path: str | Path | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    if path:
        user = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        cfg = deep_merge(cfg, user)
    for s in sets or []:
        if "=" not in s:
            raise ValueError(f"--set wants key=value, got {s!r}")
        k, v = s.split("=", 1)
        set_path(cfg, k.strip(), v)
    return cfg


def resolve(path: str | Path) -> Path:
    """A config path: ``~`` expanded, relative paths taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO / p).resolve()
