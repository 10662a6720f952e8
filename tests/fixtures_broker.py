"""Fixtures: a throwaway Mosquitto broker on a free loopback port, and MQTT subscribers.

``mosquitto`` yields a :class:`~serd_testkit.broker.Broker` that can be stopped and started
again on the same port (to test outages), with persistence on, so that a *persistent*
subscriber session (see :func:`subscriber`) keeps its queued QoS 1 messages across a broker
restart.  The broker and the subscriber are the kit's (``serd_testkit``, shared with the
bench); tests import them from there.  Tests that use these fixtures are skipped, with the
reason, when mosquitto is missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serd_testkit.broker import MOSQUITTO, Broker, Subscriber


def _require_mosquitto() -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto broker on a free loopback port (``.stop()``/``.start()``)."""
    _require_mosquitto()
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Factory for brokers with their own settings: ``mosquitto_factory(allow_anonymous=
    False, extra_config="password_file ...")``; started, and stopped at teardown."""
    _require_mosquitto()
    made: list[Broker] = []

    def make(*, allow_anonymous: bool = True, extra_config: str = "") -> Broker:
        broker = Broker(
            tmp_path / f"mosquitto-{len(made)}",
            allow_anonymous=allow_anonymous,
            extra_config=extra_config,
        )
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory ``subscriber(broker, topic, persistent=True)``: connected, subscribed."""
    made: list[Subscriber] = []

    def make(broker: Broker, topic: str, persistent: bool = True) -> Subscriber:
        sub = Subscriber(broker, topic, persistent=persistent).connect()
        made.append(sub)
        return sub

    yield make
    for sub in made:
        with contextlib.suppress(Exception):
            sub.close()
