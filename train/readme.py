"""Render models/README.md (placeholder until the final layout)."""

from __future__ import annotations

import json
from typing import Any


def readme_text(card: dict[str, Any], cvs: dict[str, Any], size: int,
                total_seconds: float | None) -> str:
    return "# " + card["name"] + "\n\n```\n" + json.dumps(card["metrics"], indent=1)[:5000] + "\n```\n"
