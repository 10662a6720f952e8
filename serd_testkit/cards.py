"""Editing a model's card in place, for tests that break one."""

from __future__ import annotations

import json
from pathlib import Path


def edit_card(model: Path, **changes: object) -> None:
    """Change keys of ``model``'s card; ``a__b=1`` sets ``card["a"]["b"] = 1``."""
    # Imported here: ``import serd_testkit`` (a bench before it pins its threads) stays light.
    from serd.model import card_path_for  # noqa: PLC0415

    cp = card_path_for(model)
    data = json.loads(cp.read_text())
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    cp.write_text(json.dumps(data))
