"""Shared pytest configuration.

Fixtures for real components live in their own plugin modules:
``fixtures_broker`` (a Mosquitto broker on a free loopback port) and
``fixtures_audio`` (a PulseAudio null-sink virtual microphone fed by ``paplay``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["fixtures_broker", "fixtures_audio"]

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of small committed fixtures (CREMA-D clips with attribution)."""
    return DATA


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The shipped default model (``$SERD_TEST_MODEL`` runs the suite against another one)."""
    import os  # noqa: PLC0415

    from serd.model import DEFAULT_MODEL  # noqa: PLC0415

    path = Path(os.environ.get("SERD_TEST_MODEL") or DEFAULT_MODEL)
    assert path.is_file(), f"model {path} is missing"
    return path


@pytest.fixture(scope="session")
def classifier(model_path: Path):
    from serd.model import ModelSettings, load_classifier  # noqa: PLC0415

    return load_classifier(ModelSettings(path=str(model_path)))
