"""``serd forget DEVICE...``: remove retired devices from the broker for good.

A device leaves retained messages behind: its ``status`` (the Last Will or the clean
``offline``), its ``state`` (serd.state) and, with Home Assistant discovery, one config per
entity.  Every new subscriber receives them again, so a replay or a retired desk shows up in
every dashboard, ``serd listen`` and Home Assistant for ever.  This command connects with the
``mqtt:`` settings of ``--config`` (as ``serd listen`` does), collects the retained topics
under ``{prefix}/{device}/`` and the device's discovery configs, and publishes an empty
retained payload (QoS 1) to each, which deletes them on the broker and, for discovery, the
entities in Home Assistant.  A device that is online (or degraded) would only announce
itself again: it is refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from serd.events import STATUS_SUFFIX, topic, validate_device_id
from serd.mqttsettings import MqttSettings

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_QOS = 1


@dataclass
class Found:
    """What the broker holds retained for one device."""

    device_id: str
    # Retained topics under {prefix}/{device}/ (status, state, anything else).
    topics: set[str] = field(default_factory=set)
    # Retained Home Assistant discovery config topics of the device.
    discovery: set[str] = field(default_factory=set)
    # The retained status' state ("online", "degraded", "offline"), if any.
    status: str | None = None


@dataclass(frozen=True)
class Result:
    """What ``forget`` cleared for one device."""

    device_id: str
    topics: tuple[str, ...]
    """The retained topics the broker held under {prefix}/{device}/ (all were cleared)."""
    discovery: tuple[str, ...]
    refused: str | None = None


class Forgetter:
    """One MQTT connection that collects retained topics and clears them."""

    def __init__(self, settings: MqttSettings, discovery_prefix: str, *,
                 settle_seconds: float = 1.0, timeout_seconds: float = 10.0) -> None:
        if settings.host is None:
            raise ValueError("no broker host")
        self.settings = settings
        self.discovery_prefix = discovery_prefix
        self.settle_seconds = settle_seconds
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._last_message = 0.0
        self._subscribed_at = 0.0
        self._error = ""
        self._found: dict[str, Found] = {}
        self._filters: dict[str, str] = {}  # topic filter -> device

    def __call__(self, devices: Sequence[str], *, force: bool = False) -> list[Result]:
        from serd.discovery import config_filter  # noqa: PLC0415
        from serd.mqttclient import connect_async, create_client  # noqa: PLC0415

        for device in devices:
            validate_device_id(device)
            self._found[device] = Found(device)
            self._filters[topic(self.settings.topic_prefix, device, "#")] = device
            self._filters[config_filter(self.discovery_prefix, device)] = device
        assert self.settings.host is not None
        client = create_client(self.settings, self.settings.client_id or "serd-forget",
                               logger=_LOGGER)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        connect_async(client, self.settings, self.settings.host)
        client.loop_start()
        try:
            if not self._connected.wait(self.timeout_seconds):
                raise ConnectionError(self._error or f"cannot connect to MQTT broker "
                                      f"{self.settings.host}:{self.settings.port}")
            if not self._subscribed.wait(self.timeout_seconds):
                raise ConnectionError("the broker did not confirm the subscription")
            # Retained messages follow the SUBACK at once; wait until they stop coming.
            deadline = time.monotonic() + self.timeout_seconds
            while time.monotonic() < deadline:
                with self._lock:
                    quiet = time.monotonic() - max(self._last_message, self._subscribed_at)
                if quiet >= self.settle_seconds:
                    break
                time.sleep(0.05)
            return [self._clear(client, self._found[d], force) for d in devices]
        finally:
            client.disconnect()
            client.loop_stop()

    def _clear(self, client: mqtt.Client, found: Found, force: bool) -> Result:
        if found.status in ("online", "degraded") and not force:
            return Result(found.device_id, (), (), refused=f"it is {found.status}: stop it "
                          "first (it would announce itself again), or use --force")
        # status and state are cleared even if not seen: nothing is lost by it.
        topics = set(found.topics) | {
            topic(self.settings.topic_prefix, found.device_id, s) for s in (STATUS_SUFFIX, "state")}
        infos = [client.publish(t, b"", qos=_QOS, retain=True)
                 for t in sorted(topics | found.discovery)]
        deadline = time.monotonic() + self.timeout_seconds
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise ConnectionError("the broker did not acknowledge the deletions in time")
        # Report what the broker held, not the blind deletions: a mistyped id must not
        # read as "forgot desk17: cleared 2 retained topics".
        return Result(found.device_id, tuple(sorted(found.topics)),
                      tuple(sorted(found.discovery)))

    # -- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self._error = f"MQTT broker {self.settings.host}:{self.settings.port} refused " \
                f"the connection: {rc}"
            return
        client.subscribe([(f, _QOS) for f in self._filters])
        self._connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        from serd.mqttclient import describe_error  # noqa: PLC0415

        self._error = (f"cannot connect to MQTT broker {self.settings.host}:"
                       f"{self.settings.port}: {describe_error(sys.exc_info()[1])}")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any) -> None:
        with self._lock:
            self._subscribed_at = time.monotonic()
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain or not msg.payload:
            return  # live traffic, or already deleted
        with self._lock:
            self._last_message = time.monotonic()
            for filt, device in self._filters.items():
                if mqtt.topic_matches_sub(filt, msg.topic):
                    found = self._found[device]
                    if filt.startswith(self.discovery_prefix + "/") and \
                            msg.topic.endswith("/config"):
                        found.discovery.add(msg.topic)
                    else:
                        found.topics.add(msg.topic)
                        if msg.topic.endswith("/" + STATUS_SUFFIX):
                            found.status = _status_state(bytes(msg.payload))


def _status_state(payload: bytes) -> str | None:
    # Hostile until checked: only a JSON object's string "state" counts.
    try:
        value = json.loads(payload[:4096])
    except (ValueError, RecursionError):  # deep nesting raises RecursionError
        return None
    state = value.get("state") if isinstance(value, dict) else None
    return state if isinstance(state, str) else None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serd forget",
        description="Remove retired devices from the broker for good: clear their retained "
        "status and state topics (and any other retained topic under PREFIX/DEVICE/) and "
        "their Home Assistant discovery configs. Dashboards, serd listen and Home Assistant "
        "then no longer show them.",
    )
    p.add_argument("devices", nargs="+", metavar="DEVICE", help="device id(s) to forget")
    p.add_argument("--config", metavar="FILE",
                   help="serd config (its mqtt: and discovery: sections are used)")
    p.add_argument("--host", help="broker host (default mqtt.host, else localhost)")
    p.add_argument("--port", type=int, help="broker port (default mqtt.port)")
    p.add_argument("--prefix", help="topic prefix (default mqtt.topic_prefix)")
    p.add_argument("--discovery-prefix", metavar="PREFIX",
                   help="Home Assistant discovery prefix (default discovery.prefix)")
    p.add_argument("--force", action="store_true",
                   help="also forget a device that is online (it will announce itself again "
                   "when it reconnects)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from serd.config import EXIT_CONFIG, load  # noqa: PLC0415
    from serd.listen import settings_from  # noqa: PLC0415
    from serd.validate import ConfigError  # noqa: PLC0415

    try:
        for device in args.devices:
            validate_device_id(device)
        cfg = load(args.config)  # once: its mqtt: and discovery: sections
        settings = dataclasses.replace(
            settings_from(args, cfg.mqtt), client_id=f"serd-forget-{uuid.uuid4().hex[:10]}")
        discovery_prefix = args.discovery_prefix or cfg.discovery.prefix
        results = Forgetter(settings, discovery_prefix)(args.devices, force=args.force)
    except ConfigError as exc:
        print(f"serd forget: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"serd forget: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionError as exc:
        print(f"serd forget: {exc}; nothing was removed", file=sys.stderr)
        return EXIT_FAILED
    rc = EXIT_OK
    for r in results:
        if r.refused:
            print(f"serd forget: {r.device_id} not forgotten: {r.refused}", file=sys.stderr)
            rc = EXIT_FAILED
            continue
        if not r.topics and not r.discovery:
            print(f"nothing to forget for {r.device_id}: the broker holds no retained topic "
                  f"under {settings.topic_prefix}/{r.device_id}/ and no discovery config "
                  f"for it under {discovery_prefix}/ (is the id right? serd listen lists "
                  "the devices it sees)")
            continue
        names = ", ".join(t.rsplit("/", 1)[-1] for t in r.topics)
        print(f"forgot {r.device_id}: cleared {_count(len(r.topics), 'retained topic')}"
              f"{f' ({names})' if names else ''} and "
              f"{_count(len(r.discovery), 'Home Assistant discovery config')}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
