"""Human-readable outputs: log lines, confusion-matrix PNGs and ``models/README.md``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from serd.model import ModelCard
from train.config import TrainConfig
from train.results import CvResult, Kind, Stat

_LOGGER = logging.getLogger(__name__)


def _ms(d: Stat | None, scale: float = 100.0) -> str:
    if d is None:
        return "n/a"
    return f"{d.mean * scale:.1f} ± {d.std * scale:.1f}"


def log_cv(res: CvResult) -> None:
    s = res.summary
    if s is None:
        return
    c, t = s.clean.kinds, s.telephone.kinds
    if s.headline == "fused_int8":
        _LOGGER.info(
            "%s: fused with the voice branch: file bacc int8 %s (float %s), macro-F1 %s, "
            "telephone %s (drop %s); voice branch alone %s",
            res.protocol, _ms(c["fused_int8"].file_balanced_accuracy),
            _ms(c["fused_float"].file_balanced_accuracy),
            _ms(c["fused_int8"].file_macro_f1),
            _ms(t["fused_int8"].file_balanced_accuracy),
            _ms(s.telephone_drop["fused_int8"]), _ms(c["voice"].file_balanced_accuracy))
    ag = s.clean.agreements.get("agreement")
    _LOGGER.info(
        "%s (%d/%d folds), CNN: file bacc float %s, int8 %s | macro-F1 int8 %s | window bacc"
        " int8 %s"
        " | telephone int8 %s (drop %s) | agreement %s | %.0f s",
        res.protocol, len(res.folds_run), res.folds,
        _ms(c["float"].file_balanced_accuracy), _ms(c["int8"].file_balanced_accuracy),
        _ms(c["int8"].file_macro_f1), _ms(c["int8"].window_balanced_accuracy),
        _ms(t["int8"].file_balanced_accuracy), _ms(s.telephone_drop["int8"]),
        _ms(ag[0] if ag else None), res.seconds)


def confusion_png(res: CvResult, path: Path, kind: Kind | None = None) -> None:
    """Row-normalised confusion matrix (pooled over folds) as a PNG; by default of what the
    device computes (:attr:`train.results.CvSummary.headline`)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    s = res.summary
    if s is None:
        return
    kind = kind or s.headline
    cm = np.asarray(s.clean.kinds[kind].confusion, np.float64)
    labels = res.labels
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                    fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    how = ("leave one corpus out" if res.split == "corpus"
           else f"{res.folds}-fold speaker-disjoint CV")
    what = "int8 CNN + voice branch" if kind == "fused_int8" else "int8"
    ax.set_title(f"{res.protocol}: {what}, {how}\n"
                 f"balanced acc {_ms(s.clean.kinds[kind].file_balanced_accuracy)} %",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def render(out: Path, cfg: TrainConfig, name: str) -> None:
    """Write ``out/README.md`` from the card, the saved CV results and ``timings.json``."""
    from train.readme import readme_text  # noqa: PLC0415

    card = ModelCard.load(out / f"{name}.card.json")
    cvs = {}
    for proto in cfg.protocols:
        p = out / f"cv-{proto}.json"
        if p.is_file():
            cvs[proto] = CvResult.from_dict(json.loads(p.read_text()))
    tfl = out / f"{name}.tflite"
    timings = out / "timings.json"
    total = json.loads(timings.read_text()).get("all_seconds") if timings.is_file() else None
    text = readme_text(card, cvs, tfl.stat().st_size if tfl.is_file() else 0, total)
    (out / "README.md").write_text(text, encoding="utf-8")
