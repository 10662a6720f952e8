"""``serd dashboard``: serve the live dashboard page with the standard library.

The page is static (any web server can serve ``serd/dashboard/``); this server adds
``/config.json`` with the broker's WebSocket URL, the topic prefix and the user name
(never a password), so that the page connects without typing, and security headers
(a Content-Security-Policy that allows scripts only from the page's own origin and
connections only to it and to WebSocket brokers).  The browser talks to the broker
directly; this server never sees an event.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from serd.dashboard import STATIC_DIR

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_WS_PORT = 9001

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    # MQTT.js runs its keepalive timers in a Worker made from a blob: URL.
    "worker-src 'self' blob:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_FILES = {"/", "/index.html", "/app.js", "/style.css", "/vendor/mqtt.min.js",
          "/vendor/mqtt.LICENSE.md", "/favicon.ico"}


class DashboardHandler(SimpleHTTPRequestHandler):
    """Static files from :data:`STATIC_DIR` (only the page's), plus ``/config.json``."""

    page_config: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/config.json":
            body = json.dumps(self.page_config).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        if path not in _FILES:
            # No directory listings, no server.py or __pycache__: just the page.
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _FILES:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        super().do_HEAD()

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("%s %s", self.address_string(), format % args)


def make_server(
    bind: str = "127.0.0.1", port: int = DEFAULT_PORT, page_config: dict[str, Any] | None = None
) -> ThreadingHTTPServer:
    """A ready (bound, not yet serving) HTTP server for the page; port 0 = any free one."""
    handler = type(
        "Handler", (DashboardHandler,), {"page_config": dict(page_config or {})}
    )
    factory = functools.partial(handler, directory=str(STATIC_DIR))
    server = ThreadingHTTPServer((bind, port), factory)
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serd dashboard",
        description="Serve the live dashboard page. The browser connects to the MQTT "
        "broker's WebSocket listener itself (see docs/dashboard.md).",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                   "interface, to open the page from other machines)")
    p.add_argument("--broker", metavar="URL",
                   help="MQTT over WebSockets URL the page connects to, e.g. "
                   f"ws://broker.local:{DEFAULT_WS_PORT} or wss://broker.local:8081 "
                   f"(default: ws://MQTT.HOST:{DEFAULT_WS_PORT} from --config, else "
                   f"the page's own host on port {DEFAULT_WS_PORT})")
    p.add_argument("--prefix", metavar="PREFIX",
                   help="topic prefix (default mqtt.topic_prefix from --config, else serd)")
    p.add_argument("--config", metavar="FILE",
                   help="serd config (mqtt.host, topic_prefix and username are used); "
                   "default $SERD_CONFIG if set")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    page: dict[str, Any] = {}
    import os  # noqa: PLC0415

    if args.config or os.environ.get("SERD_CONFIG"):
        from serd.config import EXIT_CONFIG, load  # noqa: PLC0415
        from serd.validate import ConfigError  # noqa: PLC0415

        try:
            mqtt = load(args.config).mqtt
        except ConfigError as exc:
            print(f"serd dashboard: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        page["prefix"] = mqtt.topic_prefix
        if mqtt.host:
            page["broker"] = f"{'wss' if mqtt.tls else 'ws'}://{mqtt.host}:{DEFAULT_WS_PORT}"
        if mqtt.username:
            page["username"] = mqtt.username
    if args.broker:
        if not args.broker.startswith(("ws://", "wss://")):
            print("serd dashboard: --broker must be a ws:// or wss:// URL "
                  f"(e.g. ws://localhost:{DEFAULT_WS_PORT}), not {args.broker!r}",
                  file=sys.stderr)
            return 2
        page["broker"] = args.broker
    if args.prefix:
        page["prefix"] = args.prefix
    try:
        server = make_server(args.bind, args.port, page)
    except OSError as exc:
        print(f"serd dashboard: cannot listen on {args.bind}:{args.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    broker = page.get("broker", f"ws://<this host>:{DEFAULT_WS_PORT}")
    print(f"serd dashboard: http://{shown}:{port}/  (broker {broker}, prefix "
          f"{page.get('prefix', 'serd')}); Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
