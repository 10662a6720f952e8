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
