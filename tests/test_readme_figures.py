"""The shipped model's figures that README.md quotes are those of models/cv-*.json and the
card: the results table, the per-left-out-corpus table, the calibration paragraph and the
telephone sentence.  (models/README.md is rendered from the same files and checked by
test_train_results.py; the top-level README is written by hand, so it can go stale when
the model is retrained.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def cv(protocol: str) -> dict:
    return json.loads((ROOT / "models" / f"cv-{protocol}.json").read_text(encoding="utf-8"))


def card() -> dict:
    return json.loads((ROOT / "models" / "serd-emotion-6.card.json").read_text(encoding="utf-8"))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ms(summary: dict, key: str) -> str:
    return f"{pct(summary[key]['mean'])} ± {pct(summary[key]['std'])}"


def row(label: str) -> list[str]:
    """The cells of the README table row whose first cell starts with ``label``."""
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].replace("*", "").startswith(label):
            return [c.replace("*", "").replace(" %", "") for c in cells[1:]]
    raise AssertionError(f"README.md has no table row starting with {label!r}")


@pytest.mark.parametrize(("protocol", "label"), [
    ("ravdess8", "RAVDESS, 8 emotions"),
    ("six", "six classes, RAVDESS + CREMA-D"),
    ("cross_corpus", "six classes, leave one corpus out"),
])
def test_results_table_is_the_cv_files(protocol: str, label: str) -> None:
    s = cv(protocol)["summary"]
    drop = f"{pct(s['telephone_drop.fused_int8']['mean'])}"
    want = [ms(s, "clean.fused_int8.file.balanced_accuracy"),
             ms(s, "clean.fused_int8.file.macro_f1"),
             ms(s, "clean.fused_int8.file.distress_balanced_accuracy"),
             f"{ms(s, 'telephone.fused_int8.file.balanced_accuracy')} ({drop})",
             ms(s, "fused_float_minus_int8.file.balanced_accuracy"),
             ms(s, "clean.int8.file.balanced_accuracy"),
             ms(s, "clean.voice.file.balanced_accuracy")]
    assert row(label) == want


def test_per_corpus_table_is_the_cross_corpus_folds() -> None:
    folds = cv("cross_corpus")["per_fold"]
    s = cv("cross_corpus")["summary"]
    bacc = [pct(f["clean"]["fused_int8"]["file"]["balanced_accuracy"]) for f in folds]
    distress = [pct(f["clean"]["fused_int8_verdict"]["distress_balanced_accuracy"])
                for f in folds]
    assert row("shipped recipe") == [*bacc, pct(s["clean.fused_int8.file.balanced_accuracy"]
                                               ["mean"])]
    assert row("distress, shipped") == [
        *distress, pct(s["clean.fused_int8.file.distress_balanced_accuracy"]["mean"])]
    cal = card()["metrics"]["cross_corpus"]["calibration"]["per_corpus"]
    shares = [f"{100 * cal[c]['verdict_share_after']:.0f}"
              for c in ("ased", "cremad", "emotiontts", "emovo", "nemo", "ravdess", "turevdb",
                        "urdu")]
    assert row("files with a verdict (calibrated)")[:8] == shares


def test_calibration_paragraph_is_the_card() -> None:
    cal = card()["metrics"]["cross_corpus"]["calibration"]
    text = " ".join(README.split())
    assert f"a temperature, {card()['calibration']['temperature']}," in text
    assert f"expected calibration error {cal['mean_ece_before']:.3f} on average" in text
    assert f"{cal['per_corpus']['turevdb']['ece_before']:.3f} on TurEV-DB" in text
    assert f"{cal['mean_ece_after']:.3f} on average against the 0.08" in text


def test_telephone_sentence_is_the_cv_files() -> None:
    text = " ".join(README.split())
    m = re.search(r"telephone channel costs ([\d.]+) points on six classes, ([\d.]+) on "
                  r"RAVDESS-8 and ([\d.]+) across corpora", text)
    assert m, "README.md's telephone sentence is gone"
    drops = [cv(p)["summary"]["telephone_drop.fused_int8"]["mean"]
             for p in ("six", "ravdess8", "cross_corpus")]
    assert list(m.groups()) == [pct(d) for d in drops]


def test_training_time_is_the_timings_file() -> None:
    timings = json.loads((ROOT / "models" / "timings.json").read_text(encoding="utf-8"))
    assert f"took **{timings['all_seconds'] / 60:.1f} minutes**" in " ".join(README.split())
