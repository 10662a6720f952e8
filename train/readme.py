"""Render ``models/README.md``, the human-readable model card, from the JSON card and CVs."""

from __future__ import annotations

from serd.features import FeatureParams
from serd.model import ModelCard
from serd.normalise import Normalisation, channel_names
from train.results import Condition, CvResult, CvSummary, FoldResult, Kind, Level, Stat

PROTOCOL_TITLES = {
    "ravdess8": "RAVDESS, 8 emotions, leave-4-actors-out (6 folds, 2 female + 2 male actors each)",
    "six": "Six emotions over RAVDESS + CREMA-D, speaker-disjoint 6-fold CV",
    "cross_corpus": "Six emotions, leave one corpus out (trained on every other corpus, "
                    "tested on every speaker of the one left out)",
}


def _test_side(cv: CvResult, fold: FoldResult) -> str:
    """The per-fold table's test column: the speakers, or the corpus left out."""
    if cv.split == "corpus":
        corpora = sorted({x.split(":")[0] for x in fold.test_speakers})
        return f"all of {', '.join(corpora)} ({len(fold.test_speakers)} speakers)"
    return ", ".join(x.split(":")[1] for x in fold.test_speakers)


def _pm(d: Stat | None) -> str:
    if d is None:
        return "n/a"
    return f"{100 * d.mean:.1f} ± {100 * d.std:.1f}"


def _cm_table(cm: list[list[int]], labels: list[str]) -> str:
    head = "| true \\ predicted | " + " | ".join(labels) + " | recall |\n"
    head += "|---" * (len(labels) + 2) + "|\n"
    rows = []
    for lab, row in zip(labels, cm, strict=True):
        n = max(sum(row), 1)
        cells = " | ".join(str(v) for v in row)
        rows.append(f"| **{lab}** | {cells} | {100 * row[labels.index(lab)] / n:.0f}% |")
    return head + "\n".join(rows) + "\n"


_ROWS: tuple[tuple[Condition, Level, str, str], ...] = (
    ("clean", "file", "balanced_accuracy", "balanced accuracy, file level"),
    ("clean", "file", "macro_f1", "macro-F1, file level"),
    ("clean", "window", "balanced_accuracy", "balanced accuracy, window level"),
    ("clean", "window", "macro_f1", "macro-F1, window level"),
    ("telephone", "file", "balanced_accuracy", "balanced accuracy, telephone channel, file level"),
    ("telephone", "file", "macro_f1", "macro-F1, telephone channel, file level"),
)
"""The CV table's rows: condition, level, metric, title."""


def _cell(s: CvSummary, cond: Condition, kind: Kind, level: Level, metric: str) -> Stat | None:
    ks = s.condition(cond).kinds.get(kind)
    return ks.stat(level, metric) if ks is not None else None


def cv_section(name: str, cv: CvResult) -> str:
    s = cv.summary
    assert s is not None  # a CV with folds (readme_text renders only those)
    labels = cv.labels
    kind = s.headline
    fused = kind == "fused_int8"
    out = [f"### {PROTOCOL_TITLES.get(name, name)}\n"]
    out.append(f"{cv.n_files} files, {cv.n_speakers} speakers "
               f"({', '.join(cv.corpora)}); labels: {', '.join(labels)}. "
               f"Command: `serd-train cv --protocol {name}`.\n")
    cols: tuple[Kind, ...]
    if fused:
        out.append("The model is the int8 CNN fused with the voice branch (last column: what "
                   "the device computes); the other columns are its parts alone.\n")
        out.append("| metric (%, mean ± std over folds) | CNN float | CNN int8 | voice branch "
                   "| **fused, float CNN** | **fused, int8 CNN (shipped)** |\n"
                   "|---|---|---|---|---|---|")
        cols = ("float", "int8", "voice", "fused_float", "fused_int8")
    else:
        out.append("| metric (%, mean ± std over folds) | float | int8 |\n|---|---|---|")
        cols = ("float", "int8")
    for cond, level, metric, title in _ROWS:
        out.append(f"| {title} | "
                   + " | ".join(_pm(_cell(s, cond, c, level, metric)) for c in cols) + " |")
    out.append("| telephone drop (clean − telephone), points | "
               + " | ".join(_pm(s.telephone_drop.get(c)) for c in cols) + " |")
    out.append("")
    pre = "fused_" if fused else ""
    fi = s.float_minus_int8.get(pre)
    ag = s.clean.agreements.get(f"{pre}agreement")
    cov, covt = s.clean, s.telephone
    out.append(f"Float − int8 balanced accuracy: {_pm(fi)} points; float/int8 argmax agreement "
               f"{_pm(ag[0] if ag else None)} % of windows, {_pm(ag[1] if ag else None)} % of "
               f"files. Files that the daemon's VAD "
               f"finds speech in: {cov.files_with_windows}/{cov.files} clean, "
               f"{covt.files_with_windows}/{covt.files} telephone (the others "
               "get no verdict and are not scored).\n")
    what = "int8 CNN + voice branch" if fused else "int8"
    out.append(f"Per fold (file level, {what}):\n")
    fl: Kind = "fused_float" if fused else "float"
    out.append("| fold | test speakers | bal. acc | macro-F1 | telephone bal. acc | "
               f"{'CNN int8 alone' if fused else 'float'} bal. acc | best epoch |\n"
               "|---|---|---|---|---|---|---|")
    for f in cv.per_fold:
        c = f.clean.kinds
        other = c["int8" if fused else fl].file.balanced_accuracy
        out.append(
            f"| {f.fold} | {_test_side(cv, f)} | "
            f"{100 * c[kind].file.balanced_accuracy:.1f} | "
            f"{100 * c[kind].file.macro_f1:.1f} | "
            f"{100 * f.telephone.kinds[kind].file.balanced_accuracy:.1f} | "
            f"{100 * other:.1f} | "
            f"{f.best_epoch} |")
    out.append("")
    out.append(f"Confusion matrix, {what}, file level, pooled over the folds "
               f"(![confusion](confusion-{name}.png)):\n")
    out.append(_cm_table(s.clean.kinds[kind].confusion, labels))
    out.append(f"Wall time of this CV: {cv.seconds / 60:.1f} min "
               f"(features {cv.feature_seconds:.0f} s, cached after the first run).\n")
    return "\n".join(out)


def _normalisation_text(norm: Normalisation, feats: FeatureParams) -> str:
    """The card's normalisation in words."""
    if norm.centred is None:
        return "per-window mean removed, scaled per coefficient"
    names = channel_names(feats)
    centred = ", ".join(names[i] for i in norm.centred) or "no channel"
    return (f"window mean removed from {centred}, the training mean from the others, "
            "scaled per coefficient")


def readme_text(card: ModelCard, cvs: dict[str, CvResult], size: int,
                total_seconds: float | None) -> str:
    tr = card.training
    labels = card.labels
    feats, wins, voice = card.features, card.windows, card.voice
    frames, _ = wins.frames(feats)
    lines = [
        f"# Model card: {card.name}",
        "",
        card.description,
        "",
        "| | |",
        "|---|---|",
        f"| file | `{card.name}.tflite` ({size / 1024:.0f} KiB), card "
        f"`{card.name}.card.json` |",
        f"| SHA-256 | `{card.sha256}` |",
        f"| labels | {', '.join(labels)} |",
        f"| input | int8 (1, {frames}, {feats.n_features}): {wins.window_seconds:g} s of "
        f"{feats.n_mfcc} MFCCs{' + voicing + log-F0' if feats.pitch else ''} "
        f"(25 ms frames, 10 ms hop, 16 kHz), {_normalisation_text(card.normalisation, feats)} |",
        f"| output | int8 softmax (1, {len(labels)}), dequantised by serd |",
        *([f"| voice branch | `voice-trunk.npz` (layers 1-2 of the GE2E speaker encoder of "
           f"Resemblyzer 0.1.4, Apache-2.0; SHA-256 `{voice.trunk_sha256[:16]}…`) "
           f"and `{voice.head_file}` (a logistic regression over the mean and std "
           "of layer 2's outputs per window); fused with the CNN as "
           f"softmax({voice.cnn_weight:g} log p_cnn + "
           f"{1 - voice.cnn_weight:g} log p_voice) |"] if voice else []),
        *([f"| line reference | the voice statistics are judged relative to each line's own "
           f"speech (`serd/voice.py` LineReference): a line starts at the prior in the head "
           f"file (worth {voice.reference.prior_windows:g} windows) and follows the running "
           f"mean of its speech windows over about {voice.reference.memory_windows} windows; "
           "`model.adapt: false` keeps it at the prior |"]
          if voice and voice.reference else []),
        *([f"| calibration | temperature {card.calibration.temperature:g} on the judged "
           f"probabilities ({card.calibration.fitted_on}) |"]
          if card.calibration.temperature != 1.0 else []),
        f"| parameters | {tr.get('params', 'n/a')} |",
        f"| created | {card.created} |",
        "",
        "## Intended use and limits",
        "",
        "Coarse emotion of short stretches of speech on a small device (serd's windows: "
        "2 s every 0.5 s during speech; an utterance's verdict is the mean of its window "
        "probabilities). Trained on **acted** emotional speech by studio actors "
        f"({', '.join(tr.get('corpora', [])) or 'see below'}; docs/corpora.md lists their "
        "languages and speakers). Spontaneous speech is less prototypical, so expect lower "
        "accuracy than the numbers below, and see the leave-one-corpus-out figures for a "
        "corpus never heard in training; children's voices and far-field microphones were "
        "not evaluated. Do not use it to make decisions about people, and never on a call "
        "centre's own staff (docs/lawful-use.md).",
        "",
        "## Training data",
        "",
    ]
    if tr:
        lines += [
            f"- corpora: {', '.join(tr.get('corpora', []))}; {tr.get('files')} files, "
            f"{tr.get('speakers')} speakers; per corpus: "
            + ", ".join(f"{k} {v} files / {tr.get('speakers_per_corpus', {}).get(k)} speakers"
                        for k, v in tr.get("files_per_corpus", {}).items()),
            "- files per label (after the taxonomy map): "
            + ", ".join(f"{k} {v}" for k, v in tr.get("files_per_label", {}).items()),
            f"- taxonomy: {tr.get('taxonomy', {}).get('labels')}, trained as: "
            f"{tr.get('taxonomy', {}).get('train_map') or 'nothing mapped'}; other emotions "
            "(RAVDESS surprised) are not used",
            f"- de-duplicated: {len(tr.get('dropped_duplicates', []))} files dropped "
            "(identical audio; copies with conflicting labels are all dropped): "
            + "; ".join(f"`{n}`" for n, _ in tr.get("dropped_duplicates", [])),
            f"- early stopping on held-out speakers: {', '.join(tr.get('early_stop_speakers', []))}"
            f" (best epoch {tr.get('best_epoch')} of {tr.get('epochs_run')})",
            f"- augmentation: {tr.get('augmentation', {}).get('copies')} precomputed copies per "
            "file (speed 0.88-1.12, reverb, time shift, gain, telephone channel, coloured noise "
            "at 8-35 dB SNR) plus SpecAugment-style masks and mixup",
            f"- command: `{tr.get('command', '')}`, seed {tr.get('seed')}",
            "",
            "Licences: RAVDESS (Livingstone & Russo 2018, PLoS ONE 13(5) e0196391, CC BY-NC-SA "
            "4.0), CREMA-D (Cao et al. 2014, IEEE Trans. Affective Computing 5(4), ODbL 1.0 / "
            "DbCL 1.0); the added corpora's sources, commits and licences are in "
            "docs/corpora.md (most are non-commercial). Whether a model trained on them "
            "inherits those terms is a legal question this card does not answer.",
            *(["The voice branch's frozen layers are Resemblyzer's pretrained GE2E encoder "
               "(Corentin Jemine, https://github.com/resemble-ai/Resemblyzer, Apache-2.0; "
               "Wan et al. 2018, arXiv:1710.10467), trained by its authors on speaker-"
               "verification corpora; see `models/NOTICE`."] if voice else []),
            "",
        ]
    lines += [
        "## Evaluation (speaker-disjoint cross-validation)",
        "",
        "No speaker is ever in both the training and the test side of a fold; early stopping "
        "uses held-out *training* speakers, never the test fold. The leave-one-corpus-out "
        "protocol has no target: it estimates what to expect on a corpus never heard in "
        "training (other voices, studio and scripts). Every window is computed by "
        "serd's own front-end (`serd.windows.windows_of`: the daemon's gate as the card's "
        "`training.eval_vad` records it, 2 s windows at 0.5 s hops); int8 figures are "
        "computed by serd's device runtime (`serd.model.Classifier`, "
        "LiteRT). File verdict = argmax of the mean window probabilities. Telephone channel = "
        "the test audio passed through 300-3400 Hz band-pass, 8 kHz 8-bit mu-law and back to "
        "16 kHz.",
        "",
    ]
    status = []
    for name, cv in cvs.items():
        sm = cv.summary
        if sm is None:
            continue
        kind = sm.headline
        b = sm.clean.kinds[kind].file_balanced_accuracy
        d = sm.telephone_drop.get(kind)
        q = sm.float_minus_int8.get("fused_" if kind == "fused_int8" else "")
        if d and q and cv.split == "speakers":
            floor = 0.63 if name == "six" else 0.60
            status.append(
                f"- {name}: int8 balanced accuracy {100 * b.mean:.1f} % "
                f"({'meets' if b.mean >= floor else 'below'} the {100 * floor:.0f} % "
                f"target), float − int8 {100 * q.mean:+.1f} points "
                f"({'within' if abs(q.mean) <= 0.01 else 'outside'} 1), telephone drop "
                f"{100 * d.mean:.1f} points ({'within' if d.mean <= 0.03 else 'above'} 3)")
    if status:
        what = ("int8 CNN fused with the voice branch, as the device runs it" if voice
                else "int8")
        lines += [f"Project targets (speaker-independent, {what}):", "", *status, ""]
    for name, cv in cvs.items():
        if cv.summary is not None:
            lines.append(cv_section(name, cv))
    cal = card.metrics.get("cross_corpus", {}).get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("per_corpus"), dict):
        lines += [
            "## Calibration",
            "",
            f"The device divides the log-probabilities it judges by a temperature, "
            f"{cal.get('temperature')}, fitted on the leave-one-corpus-out folds (what the "
            "model said about corpora it had not heard). Per left-out corpus, with a "
            "temperature fitted on the *other* corpora only (nested), the expected "
            "calibration error of the file verdict (10 bins) before and after, and the share "
            "of files whose calibrated confidence reaches the 0.35 decision threshold:",
            "",
            "| left-out corpus | temperature (nested) | ECE before | ECE after "
            "| files with a verdict |",
            "|---|---|---|---|---|",
            *[f"| {c} | {v['temperature']} | {v['ece_before']:.3f} | {v['ece_after']:.3f} | "
              f"{100 * v['verdict_share_after']:.0f} % |"
              for c, v in cal["per_corpus"].items()],
            f"| **mean** | | {cal.get('mean_ece_before', 0):.3f} | "
            f"{cal.get('mean_ece_after', 0):.3f} | |",
            "",
        ]
    if total_seconds is not None:
        lines += [f"Full `serd-train all` run: {total_seconds / 60:.1f} min on this machine "
                  "(2 CPU cores).", ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "pip install -e '.[train]'",
        "serd-train all          # every CV, then this model, its card, PNGs and this README",
        "```",
        "",
        "See `docs/training.md` for the protocol, the timings and the individual commands.",
        "",
    ]
    return "\n".join(lines)
