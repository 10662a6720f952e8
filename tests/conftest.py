"""Shared pytest configuration.

Fixtures for real components live in their own plugin modules:
``fixtures_broker`` (a Mosquitto broker on a free loopback port) and
``fixtures_audio`` (a PulseAudio null-sink virtual microphone fed by ``paplay``), both over
the kit ``serd_testkit`` (shared with the bench).  Helpers a test calls come from the kit
too (``from serd_testkit import ArraySource, edit_card``), never from this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def model_copy(tmp_path: Path, model_path: Path) -> Path:
    """A writable copy of the model, its card and its voice head (if it has one), for tests
    that break one of them."""
    import shutil  # noqa: PLC0415

    from serd.model import card_path_for, voice_head_path  # noqa: PLC0415

    dst = tmp_path / "m.tflite"
    shutil.copy(model_path, dst)
    shutil.copy(card_path_for(model_path), card_path_for(dst))
    if voice_head_path(model_path).is_file():
        shutil.copy(voice_head_path(model_path), voice_head_path(dst))
    return dst


@pytest.fixture
def running() -> Iterator[list[Any]]:
    """Daemons run in threads by a test (``test_faults.InProcess``): stopped at teardown."""
    made: list[Any] = []
    yield made
    for d in made:
        if d.thread.is_alive():
            d.daemon.request_stop()
            d.thread.join(20)
