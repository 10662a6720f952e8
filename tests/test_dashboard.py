"""The live dashboard: its server, and the page in headless Chromium against a real Mosquitto
with a WebSockets listener (events appear, alerts are highlighted, offline devices shown,
reconnects, wss, and the `serd --once --publish` quick start).  Screenshots are saved under
test-artifacts/ (git-ignored).

Browser tests need Debian's ``chromium`` and the ``playwright`` Python package (its own
browser download is not used); they are skipped with the reason when either is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from fixtures_broker import Broker, free_port, wait_until

from serd import events
from serd.dashboard import STATIC_DIR
from serd.dashboard.server import CSP, make_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("SERD_TEST_CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ANGRY_RGB = (0xD9, 0x37, 0x2B)  # app.js COLORS.angry


# -- server ---------------------------------------------------------------------------------


@pytest.fixture
def dashboard_url() -> Iterator[Callable[..., str]]:
    """Factory: start the dashboard server (any free port) with a page config; its URL."""
    servers = []

    def start(page_config: dict[str, Any] | None = None) -> str:
        server = make_server("127.0.0.1", 0, page_config)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_server_serves_the_page_config_and_nothing_else(
    dashboard_url: Callable[..., str],
) -> None:
    base = dashboard_url({"broker": "ws://broker.lan:9001", "prefix": "acme"})
    status, headers, body = fetch(base)
    assert status == 200
    assert b'src="vendor/mqtt.min.js"' in body
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = fetch(base + "config.json")
    assert (status, json.loads(body)) == (200, {"broker": "ws://broker.lan:9001",
                                                "prefix": "acme"})
    for path in ("app.js", "style.css", "vendor/mqtt.min.js", "vendor/mqtt.LICENSE.md"):
        assert fetch(base + path)[0] == 200, path
    for path in ("server.py", "__init__.py", "vendor/", "vendor/README.md", "../cli.py",
                 "%2e%2e/cli.py", "__pycache__/"):
        assert fetch(base + path)[0] == 404, path
    # No CDN: every script and stylesheet the page loads is local.
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_vendored_client_is_the_documented_one() -> None:
    readme = (STATIC_DIR / "vendor" / "README.md").read_text()
    digest = hashlib.sha256((STATIC_DIR / "vendor" / "mqtt.min.js").read_bytes()).hexdigest()
    assert f"`mqtt.min.js` sha256 `{digest}`" in readme
    assert "MIT License" in (STATIC_DIR / "vendor" / "mqtt.LICENSE.md").read_text()


def test_dashboard_command_refuses_a_non_websocket_broker() -> None:
    r = subprocess.run([sys.executable, "-m", "serd.cli", "dashboard", "--broker",
                        "mqtt://x:1883", "--port", "0"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    assert "ws:// or wss://" in r.stderr


# -- browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_chromium() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        yield p.chromium


@pytest.fixture
def page_factory(playwright_chromium: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory ``page(url, extra_args=())``: a fresh headless Chromium profile and page; page
    errors and console errors are collected in ``page.serd_errors``."""
    contexts = []

    def make(url: str, extra_args: tuple[str, ...] = ()) -> Any:
        ctx = playwright_chromium.launch_persistent_context(
            str(tmp_path / f"profile{len(contexts)}"), executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, *extra_args], viewport={"width": 1280, "height": 860})
        contexts.append(ctx)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: errors.append(f"console: {m.text}")
                if m.type == "error" else None)
        page.serd_errors = errors
        page.goto(url)
        return page

    yield make
    for ctx in contexts:
        ctx.close()


def ws_broker(factory: Callable[..., Broker], extra: str = "") -> tuple[Broker, int]:
    """A broker with a plain listener and a WebSockets listener (port returned)."""
    ws = free_port()
    broker = factory(extra_config=f"listener {ws}\nprotocol websockets\n{extra}")

    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", ws), timeout=0.5):
                return True
        except OSError:
            return False

    assert wait_until(accepts, 10), broker.log.read_text()
    return broker, ws


class Pub:
    """The test's own MQTT client on the broker's plain listener."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.seq: dict[tuple[str, str], int] = {}

    def send(self, device: str, kind: str, payload: dict[str, Any], *, retain: bool = False,
             seq: int | None = None) -> dict[str, Any]:
        if "seq" in payload:
            if seq is None:
                seq = self.seq.get((device, kind), 0) + 1
            self.seq[(device, kind)] = max(seq, self.seq.get((device, kind), 0))
            payload = {**payload, "seq": seq}
        info = self.client.publish(f"serd/{device}/{kind}", json.dumps(payload), qos=1,
                                   retain=retain)
        info.wait_for_publish(5)
        return payload

    def status(self, device: str, state: str, reason: str) -> None:
        self.send(device, "status", events.status_event(
            device, state, reason, version="0.1.0", with_ts=reason != "connection_lost"),
            retain=True)

    def speech(self, device: str, channel: str, label: str | None, seconds: float, *,
               end: float, confidence: float = 0.8) -> None:
        """Windows (2 s every 0.5 s) and then the utterance, ending at epoch ``end``."""
        start = end - seconds
        t = start
        while t + 2.0 <= end + 1e-6:
            self.send(device, "emotion", events.emotion_event(device, events.EmotionResult(
                "window", channel, t, t + 2.0, label, confidence,
                {"neutral": 0.1, "angry": 0.8, "sad": 0.1}, "test-model")))
            t += 0.5
        self.send(device, "emotion", events.emotion_event(device, events.EmotionResult(
            "utterance", channel, start, end, label, confidence,
            {"neutral": 0.1, "angry": 0.8, "sad": 0.1}, "test-model")))

    def alert(self, device: str, channel: str, message: str, start: float, end: float) -> None:
        state, _, text = message.partition(": ")
        self.send(device, "alert", events.alert_event(device, events.AlertResult(
            channel, "sustained_distress", "angry", start, end, 0.8, "test-model", text,
            state=state)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def line(device: str, channel: str = "") -> str:
    return f'.line[data-device="{device}"][data-channel="{channel}"]'


def wait_text(page: Any, selector: str, text: str, timeout: float = 15_000) -> None:
    page.wait_for_function(
        "([sel, text]) => { const e = document.querySelector(sel);"
        " return e !== null && e.textContent.includes(text); }",
        arg=[selector, text], timeout=timeout)


def canvas_has_color(page: Any, selector: str, rgb: tuple[int, int, int]) -> bool:
    return bool(page.evaluate(
        """([sel, rgb]) => {
             const c = document.querySelector(sel);
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             for (let i = 0; i < d.length; i += 4) {
               if (Math.abs(d[i] - rgb[0]) < 8 && Math.abs(d[i + 1] - rgb[1]) < 8 &&
                   Math.abs(d[i + 2] - rgb[2]) < 8) return true;
             }
             return false; }""", [selector, list(rgb)]))


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.broker
def test_page_shows_events_alerts_and_offline_devices(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    broker, ws = ws_broker(mosquitto_factory)
    pub = Pub(broker)
    pub.status("desk-1", "online", "connected")
    pub.status("desk-2", "online", "connected")
    page = page_factory(dashboard_url() + f"?broker=ws://127.0.0.1:{ws}&prefix=serd&minutes=2")
    page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
    # Retained status: both devices appear before any event (desk-2 stays without events).
    page.wait_for_selector(line("desk-2") + '[data-availability="online"]', timeout=10_000)

    now = time.time()
    pub.speech("desk-1", "agent", "neutral", 4.0, end=now - 40)
    pub.speech("desk-1", "agent", "angry", 12.0, end=now - 3)
    pub.speech("desk-1", "customer", "sad", 3.0, end=now - 20)
    agent = line("desk-1", "agent")
    wait_text(page, agent + " .emotion-label", "angry")
    wait_text(page, line("desk-1", "customer") + " .emotion-label", "sad")
    assert page.locator(agent).get_attribute("data-availability") == "online"
    assert page.inner_text(agent + ' .count[data-label="angry"] b') == "1"
    assert page.inner_text(agent + ' .count[data-label="neutral"] b') == "1"
    assert page.locator(line("desk-1")).count() == 0  # placeholder replaced by channels

    # A duplicate (same seq, re-sent after a reconnect) is not counted twice.
    last = pub.seq[("desk-1", "emotion")]
    pub.send("desk-1", "emotion", events.emotion_event("desk-1", events.EmotionResult(
        "utterance", "agent", now - 15, now - 3, "angry", 0.8, {"angry": 0.8}, "m")),
        seq=last)
    pub.speech("desk-1", "customer", "neutral", 2.0, end=now)
    wait_text(page, line("desk-1", "customer") + " .emotion-label", "neutral")
    assert page.inner_text(agent + ' .count[data-label="angry"] b') == "1"

    # An alert starts on the agent channel: the line is highlighted.
    pub.alert("desk-1", "agent", "started: angry or fearful 10.5 s of the last 30 s of speech",
              now - 13, now - 3)
    page.wait_for_selector(agent + '[data-alert="active"]', timeout=10_000)
    banner = page.inner_text(agent + " .alert-banner")
    assert banner.startswith("ALERT sustained_distress (angry)")
    assert page.locator(line("desk-1", "customer")).get_attribute("data-alert") == "none"
    wait_text(page, "#summary", "1 active alert")

    # desk-2 vanishes: the broker publishes its Last Will (retained offline).
    pub.status("desk-2", "offline", "connection_lost")
    page.wait_for_selector(line("desk-2") + '[data-availability="offline"]', timeout=10_000)
    assert "offline (connection lost)" in page.text_content(line("desk-2") + " .availability")

    # The timeline is a plot: the angry windows and the alert are drawn on the canvas.
    page.wait_for_timeout(700)  # one redraw tick
    assert canvas_has_color(page, agent + " canvas.timeline", ANGRY_RGB)
    shot = screenshot(page, "dashboard.png")
    assert shot.stat().st_size > 10_000

    # The alert clears: no longer highlighted, the last alert stays visible.
    pub.alert("desk-1", "agent", "cleared: angry or fearful 4.5 s of the last 30 s of speech",
              now - 13, now)
    page.wait_for_selector(agent + '[data-alert="cleared"]', timeout=10_000)
    assert page.inner_text(agent + " .alert-banner").startswith("last alert: sustained_distress")
    wait_text(page, "#summary", "no active alerts")
    assert page.serd_errors == []
    pub.close()


@pytest.mark.broker
def test_page_reconnects_by_itself(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    broker, ws = ws_broker(mosquitto_factory)
    # The broker's address comes from the server's config.json this time.
    page = page_factory(dashboard_url({"broker": f"ws://127.0.0.1:{ws}", "prefix": "serd"}))
    page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
    assert page.input_value("#broker") == f"ws://127.0.0.1:{ws}"
    broker.stop()
    page.wait_for_selector('#conn[data-state="reconnecting"], #conn[data-state="error"]',
                           timeout=15_000)
    broker.start()
    page.wait_for_selector('#conn[data-state="connected"]', timeout=20_000)
    pub = Pub(broker)
    pub.status("desk-5", "online", "connected")
    pub.speech("desk-5", "main", "angry", 2.0, end=time.time())
    wait_text(page, line("desk-5", "main") + " .emotion-label", "angry")
    pub.close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.mark.broker
def test_page_over_tls_websockets(
    tmp_path: Path, mosquitto_factory: Callable[..., Broker],
    dashboard_url: Callable[..., str], page_factory: Callable[..., Any],
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "ws.key", tmp_path / "ws.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
             str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    broker, wss = ws_broker(mosquitto_factory, f"certfile {cert}\nkeyfile {key}")
    # A throwaway self-signed certificate: this browser profile is told to accept it.
    page = page_factory(dashboard_url() + f"?broker=wss://127.0.0.1:{wss}",
                        extra_args=("--ignore-certificate-errors",))
    page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
    pub = Pub(broker)
    pub.status("desk-tls", "online", "connected")
    pub.speech("desk-tls", "main", "sad", 2.0, end=time.time())
    wait_text(page, line("desk-tls", "main") + " .emotion-label", "sad")
    pub.close()


@pytest.mark.broker
def test_quick_start_replay_fills_the_dashboard(
    tmp_path: Path, mosquitto_factory: Callable[..., Broker], page_factory: Callable[..., Any],
    model_path: Path, data_dir: Path,
) -> None:
    """docs/dashboard.md's path: `serd dashboard` + `serd --once --publish tests/data/*.flac`."""
    broker, ws = ws_broker(mosquitto_factory)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serd.cli", "dashboard", "--port", str(port), "--broker",
         f"ws://127.0.0.1:{ws}"], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: fetch(f"http://127.0.0.1:{port}/config.json")[0] == 200
                          if _accepts(port) else False, 15)
        page = page_factory(f"http://127.0.0.1:{port}/?minutes=1")
        page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "device_id": "quick", "state_dir": str(tmp_path / "state"),
            "model": {"path": str(model_path)},
            "mqtt": {"host": broker.host, "port": broker.port}}))
        clips = sorted(str(p) for p in data_dir.glob("*.flac"))
        r = subprocess.run(
            [sys.executable, "-m", "serd.cli", "--config", str(cfg), "--once", "--publish",
             "--speed", "8", *clips], capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        sel = line("quick-replay", "main")
        page.wait_for_selector(sel + '[data-availability="offline"]', timeout=15_000)
        counts = page.eval_on_selector_all(
            sel + " .count b", "els => els.map(e => Number(e.textContent))")
        assert sum(counts) == len(clips)  # one utterance per clip
        assert "shutdown" in page.text_content(sel + " .availability")
        screenshot(page, "dashboard-replay.png")
        assert page.serd_errors == []
    finally:
        server.terminate()
        server.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
