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

from serd import events
from serd.dashboard import STATIC_DIR
from serd.dashboard.server import CSP, make_server
from serd_testkit import Broker, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("SERD_TEST_CHROMIUM") or shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ANGRY_RGB = (0xD5, 0x5E, 0x00)  # app.js COLORS.angry (Okabe-Ito vermillion)


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
    assert banner.startswith("ALERT since ")
    assert "sustained_distress (angry): angry or fearful 10.5 s" in banner
    assert page.locator(line("desk-1", "customer")).get_attribute("data-alert") == "none"
    wait_text(page, "#alerts", "1 active alert")
    assert page.inner_text("#alerts .alert-link") == "desk-1 / agent"

    # desk-2 vanishes: the broker publishes its Last Will (retained offline).
    pub.status("desk-2", "offline", "connection_lost")
    page.wait_for_selector(line("desk-2") + '[data-availability="offline"]', timeout=10_000)
    assert page.text_content(line("desk-2") + " .availability") == "offline \u00b7 lost"

    # The timeline is a plot: the angry windows and the alert are drawn on the canvas.
    page.wait_for_timeout(700)  # one redraw tick
    assert canvas_has_color(page, agent + " canvas.timeline", ANGRY_RGB)
    shot = screenshot(page, "dashboard.png")
    assert shot.stat().st_size > 10_000

    # The alert clears: no longer highlighted, the last alert stays visible.
    pub.alert("desk-1", "agent", "cleared: angry or fearful 4.5 s of the last 30 s of speech",
              now - 13, now)
    page.wait_for_selector(agent + '[data-alert="cleared"]', timeout=10_000)
    assert page.inner_text(agent + " .alert-banner").startswith("last alert ")
    assert "sustained_distress (angry): angry or fearful 4.5 s" in page.inner_text(
        agent + " .alert-banner")
    wait_text(page, "#alerts", "no active alerts")
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
    page.wait_for_selector('#conn[data-state="unreachable"]', timeout=15_000)
    # An unreachable broker says so, not "waiting for devices".
    assert "Cannot reach the broker at ws://127.0.0.1:" in page.inner_text("#notice")
    assert "Waiting for devices" not in page.inner_text("body")
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
        assert page.text_content(sel + " .availability") == "offline \u00b7 stopped"
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


# -- the wallboard: fifty lines, late joiners, hostile neighbours ----------------------------

DOCS = ROOT / "docs"
FLOOR_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust")
PROBS = {k: round(1 / len(FLOOR_LABELS), 4) for k in FLOOR_LABELS}


class Floor:
    """A simulated call-centre floor: 50 lines (44 one-channel desks, 3 stereo desks),
    two retired replays, one deaf desk; recent history, then the present."""

    def __init__(self, pub: Pub, now: float) -> None:
        import random  # noqa: PLC0415

        self.pub = pub
        self.now = now
        self.rng = random.Random(22)
        self.lines: list[tuple[str, str]] = []
        for i in range(1, 45):
            self.lines.append((f"desk-{i:02d}", "customer"))
        for i in range(45, 48):
            self.lines += [(f"desk-{i:02d}", "left"), (f"desk-{i:02d}", "right")]

    def emit(self, device: str, channel: str, label: str | None, conf: float, start: float,
             end: float, kind: str = "window", role: str = "customer") -> None:
        probs = dict(PROBS)
        if label:
            probs[label] = conf
        payload = events.emotion_event(device, events.EmotionResult(
            kind, channel, start, end, label, conf, probs, "serd-emotion-6",  # type: ignore[arg-type]
            role=role))
        self.pub.send(device, "emotion", payload)

    def fill(self, minutes: float = 2.0, *,
             statuses: bool = True) -> dict[tuple[str, str], tuple[str | None, float]]:
        """History: utterances with a few windows each over the last ``minutes``; the last
        verdict of each line is returned."""
        last: dict[tuple[str, str], tuple[str | None, float]] = {}
        weights = [5, 2, 2, 1, 1, 1]
        for device, channel in self.lines:
            role = "customer" if channel == "customer" else "unspecified"
            if statuses:
                self.pub.status(device, "online", "connected")
            t = self.now - minutes * 60 + self.rng.uniform(0, 10)
            while t < self.now - 4:
                seconds = self.rng.uniform(2.0, 7.0)
                label = self.rng.choices(FLOOR_LABELS, weights)[0]
                conf = round(self.rng.uniform(0.3, 0.95), 2)
                shown = label if conf >= 0.4 else None
                w = t
                while w + 2.0 <= t + seconds:
                    self.emit(device, channel, shown, conf, w, w + 2.0, role=role)
                    w += 1.0
                self.emit(device, channel, shown, conf, t, t + seconds, "utterance", role)
                last[(device, channel)] = (shown, conf)
                t += seconds + self.rng.uniform(1.0, 8.0)
        return last

    def incident(self, device: str, channel: str, since: float, *, role: str = "customer",
                 label: str = "angry") -> None:
        """Sustained anger on a line, and the alert it started."""
        t = since
        while t + 2.0 <= self.now:
            self.emit(device, channel, label, 0.86, t, t + 2.0, role=role)
            t += 1.0
        alert = events.alert_event(device, events.AlertResult(
            channel, "sustained_distress", label, since, since + 10.5, 0.84, "serd-emotion-6",
            f"angry or fearful 10.5 s of the last 30 s of speech on {channel}", role=role))
        self.pub.send(device, "alert", alert)


def topbar_metrics(page: Any) -> dict[str, float]:
    return page.evaluate("""() => {
        const r = e => document.querySelector(e).getBoundingClientRect();
        return {header: r('.topbar').height, connRight: r('#conn').right,
                connLeft: r('#conn').left, width: window.innerWidth}; }""")


@pytest.mark.broker
def test_wallboard_fifty_lines_alerts_first_phone_and_desktop(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    broker, ws = ws_broker(mosquitto_factory)
    pub = Pub(broker)
    now = time.time()
    floor = Floor(pub, now)
    floor.fill()
    floor.incident("desk-07", "customer", now - 40)
    floor.incident("desk-46", "right", now - 25, role="unspecified", label="fearful")
    # Replays long gone, and a desk whose microphone is missing.
    pub.status("desk-01-replay", "offline", "shutdown")
    pub.status("old-replay", "offline", "shutdown")
    pub.send("desk-30", "status", {**events.status_event(
        "desk-30", "degraded", "input_missing", version="0.1.0")}, retain=True)
    url = dashboard_url() + f"?broker=ws://127.0.0.1:{ws}&prefix=serd&minutes=2"
    page = page_factory(url)
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
    # Events are not retained: this page saw only the retained statuses. Send the floor's
    # present again now that it listens (as the devices would, live).
    floor.fill(minutes=1.5, statuses=False)
    floor.incident("desk-07", "customer", now - 40)
    floor.incident("desk-46", "right", now - 25, role="unspecified", label="fearful")
    page.wait_for_selector(line("desk-07", "customer") + '[data-alert="active"]', timeout=15_000)
    page.wait_for_function("() => window.serdDashboard.lines.size >= 52", timeout=30_000)
    page.wait_for_timeout(1500)  # a sort tick

    # Lines in alert first; then by how negative and confident; offline at the end.
    order = page.eval_on_selector_all(".line:not([hidden])", """els => els
        .map(e => [Number(getComputedStyle(e).order), e.dataset.device, e.dataset.channel,
                   e.dataset.alert, e.dataset.availability])
        .sort((a, b) => a[0] - b[0])""")
    assert {tuple(o[1:3]) for o in order[:2]} == {("desk-07", "customer"), ("desk-46", "right")}
    assert all(o[3] == "active" for o in order[:2])
    assert all(o[4] == "offline" for o in order[-2:])
    # The alert count names its lines and jumps to them.
    links = page.locator("#alerts .alert-link")
    assert links.count() == 2
    assert "2 active alerts" in page.inner_text("#alerts")
    assert {links.nth(i).inner_text() for i in range(2)} == {"desk-07 / customer",
                                                             "desk-46 / right"}
    # Status and confidence are visible; the deaf desk says so.
    deaf = page.text_content(line("desk-30", "customer") + " .availability")
    assert deaf == "degraded \u00b7 no mic"
    widths = page.eval_on_selector_all(".line .confbar i", "els => els.map(e => e.style.width)")
    assert len({w for w in widths if w}) > 5
    # Fifty lines on one 1080p screen: every line of the first 50 is within the viewport.
    bottoms = page.eval_on_selector_all(".line:not([hidden])", """els => els
        .map(e => [Number(getComputedStyle(e).order), e.getBoundingClientRect().bottom])
        .sort((a, b) => a[0] - b[0]).slice(0, 50).map(x => x[1])""")
    assert max(bottoms) <= 1080, max(bottoms)
    shot = screenshot_viewport(page, "dashboard.png")
    assert shot.stat().st_size > 30_000

    # A phone: the header stays short, the connection pill on screen, the alert on top.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(1200)
    m = topbar_metrics(page)
    assert m["connRight"] <= m["width"] and m["connLeft"] >= 0, m
    assert m["header"] <= 110, m  # three short rows at most (was seven)
    first = page.evaluate("""() => [...document.querySelectorAll('.line')]
        .sort((a, b) => Number(getComputedStyle(a).order) - Number(getComputedStyle(b).order))[0]
        .getBoundingClientRect().top""")
    assert first < 300
    screenshot_viewport(page, "dashboard-phone.png")
    links.nth(1).click()
    page.wait_for_timeout(800)
    target = links.nth(1).inner_text().split(" / ")
    box = page.locator(line(target[0], target[1])).bounding_box()
    assert box is not None and 0 <= box["y"] <= 844
    assert page.serd_errors == []
    pub.close()


def screenshot_viewport(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


def _raw(pub: Pub, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    pub.client.publish(topic, payload, qos=0, retain=retain)


@pytest.mark.broker
def test_hostile_payloads_and_two_thousand_devices_keep_the_page_responsive(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    """Issue 24 finding 7: one message with thousands of probs keys, probs keys named like
    Object's properties, 2,000 status-only devices, wrong types, oversized and malformed
    payloads: each message is handled in under 5 ms, nothing leaks into the page."""
    broker, ws = ws_broker(mosquitto_factory)
    pub = Pub(broker)
    page = page_factory(dashboard_url() + f"?broker=ws://127.0.0.1:{ws}&prefix=serd")
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_selector('#conn[data-state="connected"]', timeout=15_000)
    now = time.time()
    pub.status("real-1", "online", "connected")
    pub.speech("real-1", "customer", "angry", 3.0, end=now - 1)

    def emotion(**over: Any) -> str:
        p = events.emotion_event("real-1", events.EmotionResult(
            "window", "customer", now - 2, now, None, 0.3, {"angry": 0.3}, "m"))
        p.update(over)
        p["seq"] = None  # no seq: never a duplicate
        return json.dumps(p)

    many_channels = [{"channel": f"c{i}"} for i in range(1000)]
    t0 = time.monotonic()
    for i in range(2000):
        _raw(pub, f"serd/fake-{i:04d}/status", json.dumps(events.status_event(
            f"fake-{i:04d}", "online", "connected", version="0")))
    hostile: list[tuple[str, bytes | str]] = [
        # 3,000 probs keys (was: a legend rebuild per key) and Object's own names.
        ("serd/real-1/emotion", emotion(probs={f"k{i}": 0.001 for i in range(3000)})),
        ("serd/real-1/emotion", emotion(probs={"constructor": 0.9, "toString": 0.5,
                                               "__proto__": 0.4, "hasOwnProperty": 0.1})),
        ("serd/real-1/emotion", emotion(label="constructor", confidence=0.9)),
        ("serd/real-1/emotion", '{"__proto__": {"polluted": 1}, "type": "window"}'),
        ("serd/real-1/emotion", emotion(label=["x"])),
        ("serd/real-1/emotion", emotion(label=7, confidence="NaN", start="yesterday")),
        ("serd/real-1/emotion", emotion(channel={"a": 1})),
        ("serd/real-1/emotion", emotion(channel="x" * 5000)),
        ("serd/real-1/emotion", emotion(probs=[1, 2, 3], confidence=1e308)),
        ("serd/real-1/alert", json.dumps({"channel": "customer", "rule": {"x": 1}})),
        ("serd/real-1/alert", json.dumps({"channel": "customer", "rule": "r", "state": "started",
                                          "start": "x", "end": None})),
        ("serd/real-1/state", json.dumps({"ts": events.now_iso(), "alerts": "none",
                                          "channels": many_channels})),
        ("serd/real-1/state", json.dumps({"ts": events.now_iso(), "alerts": [],
                                          "channels": many_channels})),
        ("serd/real-1/status", json.dumps({"state": {"toString": 1}, "reason": ["x"]})),
        ("serd/real-1/emotion", "[" * 30000 + "]" * 30000),
        ("serd/real-1/emotion", b"\xff\xfe\x00garbage"),
        ("serd/real-1/emotion", "x" * 200_000),
        ("serd/real-1/emotion", "null"),
        ("serd/real-1/emotion", "[]"),
        ("serd/<img src=x onerror=alert(1)>/emotion", emotion()),
        ("serd/real-1/emotion/extra", emotion()),
    ]
    # 100 new labels, one message each (the legend stays bounded).
    hostile += [("serd/real-1/emotion", emotion(label=f"label{i}", confidence=0.9))
                for i in range(100)]
    for topic, payload in hostile:
        _raw(pub, topic, payload)
    want = 2000 + 1 + len(hostile)
    page.wait_for_function(f"() => window.serdDashboard.messages >= {want}", timeout=60_000)
    page.wait_for_function("() => window.serdDashboard.lines.size >= 2001", timeout=30_000)
    flood_s = time.monotonic() - t0
    page.wait_for_timeout(2500)  # sort ticks and frames with 2,000 lines
    perf = page.evaluate("() => window.serdDashboard.perf")
    ms = sorted(perf["samples"])
    p50, p99 = ms[len(ms) // 2], ms[int(len(ms) * 0.99)]
    print(f"DASHBOARD PERF: {perf['count']} messages, mean {perf['total'] / perf['count']:.3f} "
          f"ms, median {p50:.2f}, p99 {p99:.2f}, max {perf['max']:.2f} ms, over 1 ms "
          f"{perf['over1']}, over 5 ms {perf['over5']}; frame max {perf['frameMax']:.1f} ms, "
          f"sort max {perf['sortMax']:.1f} ms, tick max {perf['tickMax']:.1f} ms; flood "
          f"handled in {flood_s:.1f} s; slowest {sorted(perf['slow'], reverse=True)[:5]}")
    # Each message well under 5 ms; the rare outlier on this shared 2-core machine is the
    # process being descheduled (it hits cheap status messages as often as big ones).
    assert p99 < 5.0 and perf["over5"] <= max(3, perf["count"] // 200), perf["slow"]
    # The handler's own cost, free of the scheduler: each hostile message, and a status that
    # adds device 2,001+, handled three times straight in the page; the best of three.
    cases = [(t, list(p.encode() if isinstance(p, str) else p)) for t, p in hostile[:21]]
    cases += [(f"serd/syn-{{r}}-{i}/status", list(json.dumps(events.status_event(
        f"syn-{i}", "online", "connected", version="0")).encode())) for i in range(20)]
    best = page.evaluate("""(cases) => cases.map(([topic, bytes]) => {
        let best = Infinity;
        for (let r = 0; r < 3; r++) {
          const b = new Uint8Array(bytes), t = topic.replace('{r}', String(r));
          const t0 = performance.now();
          window.serdDashboardHandle(t, b, false);
          best = Math.min(best, performance.now() - t0);
        }
        return [topic, best]; })""", cases)
    worst = max(best, key=lambda x: x[1])
    print(f"DASHBOARD HANDLER (best of 3): worst {worst[1]:.2f} ms ({worst[0]}), "
          f"mean {sum(b for _, b in best) / len(best):.3f} ms over {len(best)} messages")
    assert worst[1] < 5.0, worst
    # The page still answers at once.
    t1 = time.monotonic()
    assert page.evaluate("() => 1 + 1") == 2
    assert time.monotonic() - t1 < 1.0
    body = page.inner_text("body")
    assert "function" not in body and "native code" not in body
    assert "<img" not in page.inner_text("#lines")
    assert page.evaluate("() => ({}).polluted === undefined && Object.prototype.toString.call({})"
                         " === '[object Object]'")
    legend = page.locator("#legend .key").count()
    assert legend <= 16 + 2, legend  # labels cap, unsure, alert
    assert page.evaluate("() => window.serdDashboard.dropped") >= 8
    real = line("real-1", "customer")
    assert page.locator(real).count() == 1
    assert page.locator('.line[data-device="real-1"]').count() <= 16  # channel cap
    assert page.serd_errors == []
    pub.close()


@pytest.mark.broker
def test_late_page_sees_the_incident_in_progress_and_a_refresh_keeps_the_timeline(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    """Issue 22.2: a page opened (or refreshed) during an alert shows it, from the retained
    state topic alone; its own timeline survives a refresh; a newer state clears it."""
    from serd.state import LiveState  # noqa: PLC0415

    broker, ws = ws_broker(mosquitto_factory)
    pub = Pub(broker)
    now = time.time()
    live = LiveState("desk-9", "m", ("right",), roles={"right": "customer"})
    pub.speech("desk-9", "right", "angry", 2.0, end=now - 1)  # before the page: unseen
    live(events.emotion_event("desk-9", events.EmotionResult(
        "window", "right", now - 3, now - 1, "angry", 0.81, {"angry": 0.81}, "m",
        role="customer")))
    live(events.alert_event("desk-9", events.AlertResult(
        "right", "sustained_distress", "angry", now - 30, now - 20, 0.8, "m",
        "started: angry 10.5 s of the last 30 s", role="customer")))
    pub.status("desk-9", "online", "connected")
    pub.send("desk-9", "state", live.payload(now - 1), retain=True)

    page = page_factory(dashboard_url() + f"?broker=ws://127.0.0.1:{ws}&prefix=serd")
    sel = line("desk-9", "right")
    page.wait_for_selector(sel + '[data-alert="active"]', timeout=15_000)
    assert page.text_content(sel + " .emotion-label") == "angry"
    assert page.text_content(sel + " .role") == "customer"
    wait_text(page, "#alerts", "1 active alert")

    # Live speech draws a timeline; a refresh (pagehide saves it) brings it back.
    pub.speech("desk-9", "right", "sad", 4.0, end=time.time())
    wait_text(page, sel + " .emotion-label", "sad")
    count = "() => window.serdDashboard.lines.get('desk-9\\u0000right').windows.length"
    before = page.evaluate(count)
    assert before >= 2
    page.reload()
    page.wait_for_selector(sel + '[data-alert="active"]', timeout=15_000)
    assert page.evaluate(count) == before
    assert page.inner_text(sel + ' .count[data-label="sad"] b') == "1"

    # The incident ends while this page watches only the state topic: it clears.
    live(events.alert_event("desk-9", events.AlertResult(
        "right", "sustained_distress", "angry", now - 30, now, 0.8, "m", "cleared: calm",
        state="cleared", role="customer")))
    pub.send("desk-9", "state", live.payload(time.time()), retain=True)
    page.wait_for_selector(sel + '[data-alert="cleared"]', timeout=10_000)
    wait_text(page, "#alerts", "no active alerts")
    assert page.serd_errors == []
    pub.close()


@pytest.mark.broker
def test_stale_devices_can_be_hidden_and_come_back_when_heard(
    mosquitto_factory: Callable[..., Broker], dashboard_url: Callable[..., str],
    page_factory: Callable[..., Any],
) -> None:
    broker, ws = ws_broker(mosquitto_factory)
    pub = Pub(broker)
    pub.status("old-replay", "offline", "shutdown")
    pub.status("gone-1", "offline", "connection_lost")
    pub.status("desk-1", "online", "connected")
    page = page_factory(dashboard_url() + f"?broker=ws://127.0.0.1:{ws}&prefix=serd")
    sel = line("old-replay")
    page.wait_for_selector(sel, timeout=15_000)
    assert "serd forget old-replay" in (page.get_attribute(sel + " .hide", "title") or "")
    page.click(sel + " .hide")
    page.wait_for_selector(sel, state="hidden", timeout=5_000)
    wait_text(page, "#hidden-toggle", "1 hidden")
    # Hidden for good in this browser: a refresh (the retained status again) keeps it hidden.
    page.reload()
    page.wait_for_selector(line("desk-1"), timeout=15_000)
    page.wait_for_timeout(500)
    assert page.locator(sel).is_hidden()
    # ... until the device is heard again, live.
    pub.status("old-replay", "online", "connected")
    page.wait_for_selector(sel + '[data-availability="online"]', state="visible", timeout=10_000)
    # serd forget clears the retained topics: an open page drops the device at once.
    assert page.locator(line("gone-1")).count() == 1
    r = subprocess.run([sys.executable, "-m", "serd.cli", "forget", "gone-1", "--host",
                        broker.host, "--port", str(broker.port)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    page.wait_for_selector(line("gone-1"), state="detached", timeout=10_000)
    assert page.evaluate("() => window.serdDashboard.devices.has('gone-1')") is False
    assert page.serd_errors == []
    pub.close()


def test_an_unreachable_broker_says_so(
    dashboard_url: Callable[..., str], page_factory: Callable[..., Any],
) -> None:
    page = page_factory(dashboard_url() + f"?broker=ws://127.0.0.1:{free_port()}&prefix=serd")
    page.wait_for_selector('#conn[data-state="unreachable"]', timeout=20_000)
    assert "Cannot reach the broker at ws://127.0.0.1:" in page.inner_text("#notice")
    assert "cannot be reached" in page.inner_text("#empty")
    assert "Waiting for devices" not in page.inner_text("body")
    page.set_viewport_size({"width": 390, "height": 844})
    box = page.locator("#conn").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
