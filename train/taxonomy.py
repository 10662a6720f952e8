"""Label taxonomies: which canonical emotions a model predicts and how others are mapped.

A taxonomy has ``labels`` (the model's outputs, in order) and ``train_map``: canonical
emotions outside ``labels`` that are *trained* as one of the labels (e.g. RAVDESS calm
as neutral).  Everything else is dropped.  Evaluation only ever uses files whose own label
is in ``labels``, so the test set of a protocol does not change with ``train_map``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from train.corpora import CANONICAL, Item

SIX = ("neutral", "happy", "sad", "angry", "fearful", "disgust")
RAVDESS8 = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


@dataclass(frozen=True)
class Taxonomy:
    name: str
    labels: tuple[str, ...]
    train_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [x for x in (*self.labels, *self.train_map) if x not in CANONICAL]
        if unknown:
            raise ValueError(f"taxonomy {self.name}: unknown emotions {unknown}")
        bad = [v for v in self.train_map.values() if v not in self.labels]
        if bad:
            raise ValueError(f"taxonomy {self.name}: train_map targets {bad} are not labels")

    def train_label(self, item: Item) -> int | None:
        """Class index used when training on ``item`` (None = not used)."""
        lab = item.label if item.label in self.labels else self.train_map.get(item.label)
        return None if lab is None else self.labels.index(lab)

    def eval_label(self, item: Item) -> int | None:
        """Class index when evaluating on ``item`` (None = not in the test set)."""
        return self.labels.index(item.label) if item.label in self.labels else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": list(self.labels), "train_map": dict(self.train_map)}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Taxonomy:
        return cls(name, tuple(data["labels"]), dict(data.get("train_map") or {}))
