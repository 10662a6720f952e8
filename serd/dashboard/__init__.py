"""The live web dashboard: a static page (``index.html``, ``app.js``, ``style.css`` and the
vendored MQTT.js client) that subscribes to the broker over MQTT-over-WebSockets, and
:mod:`serd.dashboard.server`, the small stdlib server behind ``serd dashboard``.
See docs/dashboard.md."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent
"""Folder with the page's files; any static web server can serve it as is."""
