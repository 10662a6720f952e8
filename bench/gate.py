"""Gate benchmark: does the voice-activity gate hear quiet speech and ignore office noise?

    .venv/bin/python -m bench.gate --corpora /path/to/corpora          # the comparison
    .venv/bin/python -m bench.gate --corpora DIR --quick               # a minute or two
    .venv/bin/python -m bench.gate --corpora DIR --coverage            # every corpus clip
    .venv/bin/python -m bench --only gate --corpus DIR/cremad          # the default gate only
    .venv/bin/python -m bench.gate --corpora DIR --noise-dir NOISE     # recorded noise instead

``--corpora`` (or ``$SERD_CORPORA``) is a folder with ``cremad/`` and/or ``ravdess/``
(16 kHz clips, read in place); without it the committed CREMA-D fixtures in ``tests/data``
are the speech.  Non-speech sounds are synthetic and seeded (:mod:`bench.gate_sounds`), or,
with ``--noise-dir``, recordings: one sub-folder per category, named after it (see
:class:`RecordedNoise`; docs/gate.md says which public recordings were used).
Each candidate gate runs through :class:`serd.windows.Windower`, the daemon's own gate and
windowing stage, fed in 50 ms chunks like the daemon.  Figures:

* **scenes**: speech clips (trimmed of their edge silence, levelled to -45..-20 dBFS RMS,
  quiet ones included) placed 1.5-5 s apart, at known times, in each kind of non-speech
  sound at a quiet and a loud level.  *Frame precision/recall*: 10 ms blocks inside a gate
  segment against blocks inside a placed clip (a segment's pre-roll and hangover count
  against precision, so precision below 1 is built in).  *Coverage*: share of placed
  clips overlapped by a segment that reached the classifier (one window or more).
* **noise**: only non-speech sound, every category at several levels; *false utterances
  per hour*: segments that reached the classifier, i.e. what would become an utterance
  event.  Gate opens too short to give a window are counted apart.
* **cpu**: CPU seconds per second of audio of the gate alone (block levels, candidates,
  voicing), 50 ms chunks, one thread: room tone (the quiet-room case), typing, continuous
  speech.
* ``--coverage``: every clip of every corpus through the gate stage: a clip "has speech"
  when it gives one window or more, exactly when ``serd --once`` prints a verdict for it
  (``--once`` runs the same Windower over the same decoded samples; the windows do not
  depend on chunking).  Per corpus and per emotion.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.gate_sounds import CATEGORIES, RATE, active_rms, sound

Audio = npt.NDArray[np.float32]
BLOCK = 800  # 50 ms, the daemon's capture block
STEP = RATE // 100  # the gate's 10 ms block

STATIONARY = ("room", "fan")
# Levels (dBFS): RMS for the stationary sounds, RMS of the loud parts for the events.
NOISE_LEVELS = {"stationary": (-60.0, -50.0, -40.0, -30.0), "events": (-50.0, -40.0, -30.0)}
SCENE_LEVELS = {"stationary": (-60.0, -50.0), "events": (-45.0, -35.0)}
SPEECH_LEVELS = (-45.0, -40.0, -35.0, -30.0, -25.0, -20.0)
# Recorded sounds: every category as the synthetic events (RMS of the loud parts).
RECORDED_LEVELS = (-50.0, -40.0, -30.0)
RECORDED_SCENE_LEVELS = (-45.0, -35.0)

RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                    "06": "fearful", "07": "disgust", "08": "surprised"}
CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy",
                   "NEU": "neutral", "SAD": "sad"}


def candidates() -> dict[str, Any]:
    """The gates compared: name -> VadSettings (webrtc only when the package imports)."""
    from serd.gate import VadSettings  # noqa: PLC0415

    out = {
        # The gate before issue 21: energy, 9 dB over the floor, -50 dBFS absolute floor.
        "energy-old": VadSettings(backend="energy", threshold_db=9.0, min_level_dbfs=-50.0,
                                  min_speech_seconds=0.15, confirm="none"),
        # The suggested settings, with the absolute floor lowered as well.
        "energy-6dB": VadSettings(backend="energy", threshold_db=6.0, min_level_dbfs=-70.0,
                                  min_speech_seconds=0.1, confirm="none"),
        # The default of git c284e47 .. 66a158e: voicing alone (docs/gate.md, second round).
        "voiced-only": VadSettings(confirm="none", voiced_seconds=0.06),
        # The default: 40 ms of voicing and Silero VAD tiered (docs/gate.md, fifth round):
        # 2 chunks of 32 ms above 0.3 open at once; 0.99 s with one chunk above 0.1 and a
        # mean above 0.02 open late; either only while the cough check (Silero's states and
        # encoder outputs) reads below 0.3 (seventh round).
        "voiced": VadSettings(),
        # The fifth round's default: the same without the cough check or the mean test.
        "voiced-tiered": VadSettings(confirm_cough_threshold=1.0, confirm_late_mean=0.0),
        # Seventh round: the head at other thresholds, without the late tier's mean test
        # (0.65 was the sixth round's threshold, with its head on the states alone) ...
        **{f"voiced-cough{round(100 * t)}": VadSettings(confirm_cough_threshold=t,
                                                         confirm_late_mean=0.0)
           for t in (0.3, 0.4, 0.5, 0.65)},
        # ... and the mean test at other levels and thresholds.
        **{f"voiced-c{round(100 * t)}m{round(1000 * m)}": VadSettings(
            confirm_cough_threshold=t, confirm_late_mean=m)
           for t, m in ((0.65, 0.03), (0.4, 0.03), (0.35, 0.03), (0.3, 0.03), (0.3, 0.025))},
        # Silero as a veto (1 chunk above 0.1): the default of 1941f7d .. the fourth round.
        "voiced-veto": VadSettings(confirm_threshold=0.1, confirm_chunks=1,
                                   confirm_late_seconds=0.0, confirm_cough_threshold=1.0),
        # Silero as a strict confirm stage (2 chunks above 0.4): the default of 06d648b only.
        "voiced-silero": VadSettings(confirm_threshold=0.4, confirm_chunks=2,
                                     confirm_late_seconds=0.0, confirm_cough_threshold=1.0),
    }
    try:
        import webrtcvad  # noqa: F401, PLC0415
    except ImportError:
        return out
    out["webrtc-2"] = VadSettings(backend="webrtc", webrtc_aggressiveness=2, confirm="none")
    out["webrtc-3"] = VadSettings(backend="webrtc", webrtc_aggressiveness=3, confirm="none")
    return out


# -- speech --------------------------------------------------------------------------------


def corpora_root(arg: Path | Sequence[Path] | None) -> Path | None:
    """The first corpora folder given (``--corpora`` may be repeated), or $SERD_CORPORA."""
    if isinstance(arg, Path):
        return arg
    if arg:
        return arg[0]
    env = os.environ.get("SERD_CORPORA")
    return Path(env) if env else None


MANIFEST = "serd-corpus.csv"  # train.corpora's manifest (docs/corpora.md): path, label, corpus


def manifest_labels(path: Path) -> dict[str, dict[Path, str]]:
    """``{corpus: {clip: label}}`` from a ``serd-corpus.csv`` (paths relative to its folder;
    the corpus column, else the folder's name).  Read here with :mod:`csv` rather than
    ``train.corpora``, which the bench does not import; rows without a path are skipped."""
    out: dict[str, dict[Path, str]] = defaultdict(dict)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            rel = (row.get("path") or "").strip()
            if rel:
                corpus = (row.get("corpus") or "").strip().lower() or path.parent.name
                out[corpus][path.parent / rel] = (row.get("label") or "unknown").strip().lower()
    return dict(out)


_LABELS: dict[Path, str] = {}  # manifest clips: their labels, for emotion()


def corpus_files(root: Path | Sequence[Path]) -> dict[str, list[Path]]:
    """``{corpus: sorted clips}`` for the corpora found under ``root`` (one folder or
    several): ``cremad/`` and ``ravdess/`` by their file names, and every corpus listed in
    a ``serd-corpus.csv`` in the folder or one level below it."""
    roots = [root] if isinstance(root, Path) else list(root)
    out: dict[str, list[Path]] = {}
    for r in roots:
        for name in ("cremad", "ravdess"):
            files = sorted(p for p in (r / name).rglob("*")
                           if p.suffix.lower() in (".flac", ".wav"))
            if files:
                out[name] = files
        for manifest in sorted([*r.glob(MANIFEST), *r.glob(f"*/{MANIFEST}")]):
            for corpus, labels in manifest_labels(manifest).items():
                _LABELS.update(labels)
                out[corpus] = sorted({*out.get(corpus, []), *labels})
    if not out:
        raise FileNotFoundError(f"{', '.join(map(str, roots))}: no cremad/ or ravdess/ clips "
                                f"and no {MANIFEST} under it")
    return out


def emotion(corpus: str, path: Path) -> str:
    if path in _LABELS:
        return _LABELS[path]
    parts = path.stem.split("_" if corpus == "cremad" else "-")
    if corpus == "cremad" and len(parts) >= 3:
        return CREMAD_EMOTIONS.get(parts[2], parts[2])
    if corpus == "ravdess" and len(parts) >= 3:
        return RAVDESS_EMOTIONS.get(parts[2], parts[2])
    return "unknown"


def speech_clips(root: Path | None, count: int) -> list[Path]:
    """``count`` clips spread evenly over the corpora (alternating), or the fixtures."""
    if root is None:
        fixtures = Path(__file__).resolve().parent.parent / "tests" / "data"
        return sorted(fixtures.glob("*.flac"))
    try:
        per = corpus_files(root)
    except FileNotFoundError:  # a folder of clips itself (python -m bench --corpus DIR)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".flac", ".wav"))
        if not files:
            raise
        per = {root.name: files}
    chosen: list[list[Path]] = []
    for files in per.values():
        k = max(1, count // len(per))
        step = max(1, len(files) // k)
        chosen.append(files[::step][:k])
    return [p for group in zip(*chosen, strict=False) for p in group]


def load(path: Path) -> Audio:
    from serd.decode import load as decode  # noqa: PLC0415

    return decode(path, RATE)


# -- running a gate ------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    start: int  # samples
    end: int
    windows: int


def segments(vad: Any, audio: Audio) -> list[Segment]:
    """The gate's segments over ``audio``, fed in 50 ms chunks through the Windower."""
    from serd_testkit.audio import gate_segments  # noqa: PLC0415

    return [Segment(*seg) for seg in gate_segments(audio, vad, BLOCK)]


def gate_cpu(vad: Any, audio: Audio, repeats: int = 3) -> float:
    """CPU s per s of audio of the gate alone (levels, candidates, voicing), 50 ms chunks."""
    from serd.gate import make_gate  # noqa: PLC0415

    n = audio.size // BLOCK
    chunks = [audio[i * BLOCK : (i + 1) * BLOCK].reshape(-1, STEP) for i in range(n)]
    best = float("inf")
    for _ in range(repeats):
        gate = make_gate(vad, STEP / RATE, RATE)
        t0 = time.process_time()
        for c in chunks:
            gate.process(c)
        best = min(best, time.process_time() - t0)
    return best / (n * BLOCK / RATE)


# -- recorded non-speech sounds --------------------------------------------------------------


class RecordedNoise:
    """Recorded non-speech sounds read in place: ``root/<category>/...`` (any depth, any
    format :mod:`serd.decode` reads; a category folder may be a symbolic link).

    A category's files are decoded to 16 kHz mono and joined in name order with 0.3 s
    between them; each file is levelled on its own (RMS of its loud parts, as the synthetic
    events), so a quiet recording counts as much as a loud one, and the whole is laid over
    synthetic room tone at -60 dBFS, so that a recording's digital silence does not read as
    an idle line.
    """

    GAP_S = 0.3

    def __init__(self, root: Path) -> None:
        from serd.decode import find_audio  # noqa: PLC0415

        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder of category folders")
        found = {d.name: list(find_audio([d])) for d in sorted(root.iterdir()) if d.is_dir()}
        self.root = root
        self.files = {k: v for k, v in found.items() if v}
        if not self.files:
            raise FileNotFoundError(f"{root}: no category folder with audio files in it")
        self._unit: dict[str, Audio] = {}
        self._spans: dict[str, list[tuple[int, int]]] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.files)

    def unit(self, category: str) -> Audio:
        """The category's recordings joined, each at 0 dBFS (RMS of its loud parts)."""
        if category not in self._unit:
            gap = np.zeros(round(self.GAP_S * RATE), np.float32)
            parts = []
            spans = []
            at = 0
            for f in self.files[category]:
                x = load(f).astype(np.float64)
                parts += [(x / (active_rms(x) or 1.0)).astype(np.float32), gap]
                spans.append((at, at + x.size))
                at += x.size + gap.size
            self._unit[category] = np.concatenate(parts)
            self._spans[category] = spans
        return self._unit[category]

    def recordings_hit(self, category: str, segs: Sequence[Segment]) -> int:
        """How many of the category's recordings ``segs`` (over all of it) overlap."""
        self.unit(category)
        return sum(any(g.start < e and g.end > s for g in segs)
                   for s, e in self._spans[category])

    def seconds(self, category: str) -> float:
        return self.unit(category).size / RATE

    def sound(self, category: str, seconds: float | None, level_dbfs: float,
              seed: int = 0) -> Audio:
        """``seconds`` of the category (all of it when None; from a seeded offset, wrapping
        round, otherwise) at ``level_dbfs`` over room tone."""
        u = self.unit(category)
        n = u.size if seconds is None else round(seconds * RATE)
        start = 0 if seconds is None else int(np.random.default_rng(seed).integers(u.size))
        x = np.take(u, np.arange(start, start + n), mode="wrap") * 10 ** (level_dbfs / 20)
        x += sound("room", n / RATE, -60.0, seed=seed)
        return np.clip(x, -1, 1).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {c: {"files": len(f), "seconds": self.seconds(c)} for c, f in self.files.items()}


# -- scenes: speech at known times in non-speech sound --------------------------------------


@dataclass(frozen=True)
class Scene:
    category: str
    noise_dbfs: float
    audio: Audio
    spans: list[tuple[int, int, float]]  # speech (start, end, level dBFS), samples


def scene_levels(category: str, noise: RecordedNoise | None) -> tuple[float, ...]:
    if noise is not None:
        return RECORDED_SCENE_LEVELS
    return SCENE_LEVELS["stationary" if category in STATIONARY else "events"]


def build_scenes(clips: Sequence[Audio], per_scene: int, seed: int = 0,
                 noise: RecordedNoise | None = None) -> list[Scene]:
    """Speech placed in each category of sound: synthetic, or ``noise``'s recordings."""
    from bench.signals import level  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    k = 0
    make = noise.sound if noise is not None else sound
    for cat in noise.categories if noise is not None else CATEGORIES:
        for noise_db in scene_levels(cat, noise):
            placed = []
            pos = int(rng.uniform(1.5, 3.0) * RATE)
            for _ in range(per_scene):
                x = clips[k % len(clips)]
                lvl = SPEECH_LEVELS[k % len(SPEECH_LEVELS)]
                k += 1
                placed.append((pos, level(x, lvl), lvl))
                pos += x.size + int(rng.uniform(1.5, 5.0) * RATE)
            audio = make(cat, pos / RATE, noise_db, seed=seed * 100 + len(scenes))
            for start, x, _ in placed:
                audio[start : start + x.size] += x
            np.clip(audio, -1, 1, out=audio)
            scenes.append(Scene(cat, noise_db, audio,
                                [(s, s + x.size, lvl) for s, x, lvl in placed]))
    return scenes


def score_scene(scene: Scene, segs: list[Segment]) -> dict[str, Any]:
    n = scene.audio.size // STEP
    truth = np.zeros(n, bool)
    for s, e, _ in scene.spans:
        truth[s // STEP : e // STEP] = True
    gate = np.zeros(n, bool)
    for g in segs:
        gate[g.start // STEP : g.end // STEP] = True
    utt = [g for g in segs if g.windows > 0]
    found = [any(g.start < e and g.end > s for g in utt) for s, e, _ in scene.spans]
    false = sum(1 for g in utt if not any(g.start < e and g.end > s for s, e, _ in scene.spans))
    by_level: dict[float, list[bool]] = defaultdict(list)
    for (_, _, lvl), f in zip(scene.spans, found, strict=True):
        by_level[lvl].append(f)
    return {"tp": int(np.sum(gate & truth)), "fp": int(np.sum(gate & ~truth)),
            "fn": int(np.sum(~gate & truth)), "clips": len(found), "found": int(sum(found)),
            "false_utterances": false, "found_by_level": {k: sum(v) for k, v in by_level.items()},
            "clips_by_level": {k: len(v) for k, v in by_level.items()}}


def run_scenes(vad: Any, scenes: list[Scene]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    tot: dict[str, float] = defaultdict(float)
    lv_found: dict[float, int] = defaultdict(int)
    lv_clips: dict[float, int] = defaultdict(int)
    for sc in scenes:
        r = score_scene(sc, segments(vad, sc.audio))
        per[f"{sc.category}@{sc.noise_dbfs:g}"] = {
            "coverage": r["found"] / r["clips"],
            "recall": r["tp"] / max(1, r["tp"] + r["fn"]),
            "precision": r["tp"] / max(1, r["tp"] + r["fp"]),
            "false_utterances": r["false_utterances"]}
        for k in ("tp", "fp", "fn", "clips", "found", "false_utterances"):
            tot[k] += r[k]
        for lvl, f in r["found_by_level"].items():
            lv_found[lvl] += f
            lv_clips[lvl] += r["clips_by_level"][lvl]
    return {
        "frame_precision": tot["tp"] / max(1.0, tot["tp"] + tot["fp"]),
        "frame_recall": tot["tp"] / max(1.0, tot["tp"] + tot["fn"]),
        "coverage": tot["found"] / max(1.0, tot["clips"]),
        "clips": int(tot["clips"]),
        "false_utterances_between_speech": int(tot["false_utterances"]),
        "coverage_by_speech_dbfs": {f"{k:g}": lv_found[k] / lv_clips[k] for k in sorted(lv_clips)},
        "scenes": per,
    }


# -- non-speech only ------------------------------------------------------------------------


def run_noise(vad: Any, seconds: float | None, seed: int = 1,
              noise: RecordedNoise | None = None) -> dict[str, Any]:
    """False utterances in non-speech sound only: ``seconds`` of each synthetic category
    at each level, or ``noise``'s recordings (all of each category when ``seconds`` is
    None).  ``false_utterances_at``: where each one started, seconds into the category's
    sound, to find the recording that opened the gate."""
    out: dict[str, Any] = {}
    total_s = total_utt = 0.0
    for cat in noise.categories if noise is not None else CATEGORIES:
        levels = (RECORDED_LEVELS if noise is not None
                  else NOISE_LEVELS["stationary" if cat in STATIONARY else "events"])
        utt = opens = 0
        span = 0.0
        by_level = {}
        at = {}
        hit: dict[str, int] = {}
        for lvl in levels:
            x = (noise.sound(cat, seconds, lvl, seed) if noise is not None
                 else sound(cat, seconds or 300.0, lvl, seed=seed))
            span += x.size / RATE
            segs = segments(vad, x)
            u = [g for g in segs if g.windows > 0]
            utt += len(u)
            opens += len(segs)
            by_level[f"{lvl:g}"] = len(u)
            at[f"{lvl:g}"] = [round(g.start / RATE, 2) for g in u][:50]
            if noise is not None and seconds is None:
                hit[f"{lvl:g}"] = noise.recordings_hit(cat, u)
        hours = span / 3600
        out[cat] = {"false_utterances_per_hour": utt / hours,
                    "gate_opens_per_hour": opens / hours,
                    "false_utterances": utt, "seconds": span,
                    "false_utterances_by_dbfs": by_level, "false_utterances_at": at}
        if hit:  # density-free: the share of the recordings (coughs, knocks...) that open it
            out[cat]["recordings"] = len(noise.files[cat]) if noise is not None else 0
            out[cat]["recordings_opening_by_dbfs"] = hit
        total_s += span
        total_utt += utt
    out["all"] = {"false_utterances_per_hour": total_utt / (total_s / 3600),
                  "false_utterances": int(total_utt), "seconds": total_s}
    return out


# -- coverage over whole corpora -------------------------------------------------------------


def run_coverage(vad: Any, root: Path | Sequence[Path], step: int = 1,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    from serd.windows import windows_of  # noqa: PLC0415

    out: dict[str, Any] = {}
    for corpus, all_files in corpus_files(root).items():
        files = all_files[::step]
        found: dict[str, list[bool]] = defaultdict(list)
        missed = []
        for i, f in enumerate(files):
            ok = bool(windows_of(load(f), vad=vad))
            found[emotion(corpus, f)].append(ok)
            if not ok:
                missed.append(f.name)
            if progress and i % 500 == 0:
                progress(f"{corpus} {i}/{len(files)}")
        n = sum(len(v) for v in found.values())
        out[corpus] = {
            "clips": n, "with_speech": n - len(missed), "coverage": (n - len(missed)) / n,
            "by_emotion": {k: sum(v) / len(v) for k, v in sorted(found.items())},
            "missed": missed[:50]}
    return out


def check_once(root: Path, count: int) -> dict[str, Any]:
    """Does the gate stage alone say what ``serd --once`` says?  ``count`` clips (evenly
    over the corpora, the quietest first) through :func:`serd.once.analyse_file` with the
    default config and the shipped model, against :func:`run_coverage`'s test."""
    from serd.config import Config  # noqa: PLC0415
    from serd.model import load_classifier  # noqa: PLC0415
    from serd.once import analyse_file  # noqa: PLC0415
    from serd.windows import windows_of  # noqa: PLC0415

    cfg = Config()
    clf = load_classifier(cfg.model)
    files = [f for group in corpus_files(root).values() for f in group]
    levels = []
    for f in files[:: max(1, len(files) // (4 * count))]:
        x = load(f)
        levels.append((float(np.mean(x.astype(np.float64) ** 2)), f))
    chosen = [f for _, f in sorted(levels, key=lambda t: t[0])[:count]]
    agree = 0
    verdicts = 0
    for f in chosen:
        once = analyse_file(cfg, clf, f).summary is not None
        gate = bool(windows_of(load(f), clf.card.features, clf.card.windows, cfg.vad))
        agree += once == gate
        verdicts += once
    return {"clips": len(chosen), "agree": agree, "once_verdicts": verdicts}


# -- everything ------------------------------------------------------------------------------


def run(corpora: Path | None, *, clips: int, per_scene: int, noise_seconds: float | None,
        names: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
        noise: RecordedNoise | None = None) -> dict[str, Any]:
    """The comparison: scenes, noise and CPU for each candidate gate, in the synthetic
    sounds or in ``noise``'s recordings (all of them unless ``noise_seconds`` is given)."""
    from bench.signals import continuous_speech, trim  # noqa: PLC0415

    say = log or (lambda _m: None)
    paths = speech_clips(corpora, clips)
    audio = [trim(load(p), pad_s=0.0) for p in paths]
    scenes = build_scenes(audio, per_scene, noise=noise)
    cpu_audio = {"room": sound("room", 60, -60.0, seed=5)}
    if noise is None:
        cpu_audio["keyboard"] = sound("keyboard", 60, -35.0, seed=5)
    else:  # a minute of the recordings, an equal share of each category, at -40 dBFS
        share = 60.0 / len(noise.categories)
        cpu_audio["recorded"] = np.concatenate(
            [noise.sound(c, share, -40.0, seed=5) for c in noise.categories])
    cpu_audio["speech"] = continuous_speech(audio, 60.0)
    res: dict[str, Any] = {
        "speech": {"source": str(corpora) if corpora else "tests/data fixtures",
                   "clips": len(paths), "per_scene": per_scene,
                   "scene_seconds": sum(s.audio.size for s in scenes) / RATE},
        "noise_source": (str(noise.root) if noise is not None
                         else "synthetic (bench.gate_sounds)"),
        "noise_categories": list(noise.categories if noise is not None else CATEGORIES),
        "noise_seconds_per_level": noise_seconds,
        "gates": {}}
    if noise is not None:
        res["noise_files"] = noise.describe()
    for name, vad in candidates().items():
        if names and name not in names:
            continue
        say(f"gate {name}")
        r = {"settings": {k: getattr(vad, k) for k in vad.__dataclass_fields__}}
        r["scenes"] = run_scenes(vad, scenes)
        r["noise"] = run_noise(vad, noise_seconds, noise=noise)
        r["cpu_s_per_audio_s"] = {k: gate_cpu(vad, x) for k, x in cpu_audio.items()}
        res["gates"][name] = r
    return res


def table(res: dict[str, Any]) -> str:
    cats = res.get("noise_categories", list(CATEGORIES))
    first = next(iter(res["gates"].values()), None)
    cpu_keys = list(first["cpu_s_per_audio_s"]) if first else []
    head = (f"{'gate':<11} {'prec':>5} {'recall':>6} {'cover':>6} {'q-cover':>7} "
            + " ".join(f"{c[:5]:>5}" for c in cats)
            + f" {'all/h':>6} " + " ".join(f"{'cpu ' + k[:6]:>10}" for k in cpu_keys))
    hours = first["noise"]["all"]["seconds"] / 3600 if first else 0.0
    lines = [f"noise: {res.get('noise_source', 'synthetic')}, {hours:.2f} h per gate",
             "scenes: frame precision / recall, coverage of placed clips (q-cover: clips at "
             "-45..-35 dBFS);", "noise: false utterances per hour per category; "
             "cpu: gate CPU s per s of audio", head]
    for name, r in res["gates"].items():
        sc, nz, cpu = r["scenes"], r["noise"], r["cpu_s_per_audio_s"]
        lv = sc["coverage_by_speech_dbfs"]
        quiet = [lv[k] for k in ("-45", "-40", "-35") if k in lv]
        lines.append(
            f"{name:<11} {sc['frame_precision']:5.3f} {sc['frame_recall']:6.3f} "
            f"{sc['coverage']:6.3f} {sum(quiet) / max(1, len(quiet)):7.3f} "
            + " ".join(f"{nz[c]['false_utterances_per_hour']:5.1f}" for c in cats)
            + f" {nz['all']['false_utterances_per_hour']:6.1f} "
            + " ".join(f"{cpu[k]:10.2g}" for k in cpu_keys))
    return "\n".join(lines)


def coverage_table(cov: dict[str, Any]) -> str:
    lines = []
    for corpus, r in cov.items():
        lines.append(f"{corpus}: {r['with_speech']}/{r['clips']} clips with speech "
                     f"({100 * r['coverage']:.2f} %)")
        lines.append("  " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in r["by_emotion"].items()))
        if r["missed"]:
            lines.append("  missed: " + " ".join(r["missed"][:20]))
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n")[0])
    p.add_argument("--corpora", type=Path, action="append", default=None,
                   help="folder with cremad/ and/or ravdess/ and/or corpora with a "
                        f"{MANIFEST} (repeat for several; --coverage reads them all, the "
                        "comparison the first; default $SERD_CORPORA; without either: the "
                        "CREMA-D fixtures in tests/data)")
    p.add_argument("--quick", action="store_true", help="fewer clips, 60 s of each noise")
    p.add_argument("--clips", type=int, default=None, help="speech clips for the scenes")
    p.add_argument("--noise-seconds", type=float, default=None,
                   help="seconds of each noise category at each level (default 300, quick 60; "
                        "with --noise-dir: all of each category's recordings)")
    p.add_argument("--noise-dir", type=Path, default=None,
                   help="recorded non-speech sounds instead of the synthetic ones: one "
                        "sub-folder per category, named after it (docs/gate.md)")
    p.add_argument("--gates", default="", help="comma-separated subset of the gates")
    p.add_argument("--coverage", action="store_true",
                   help="instead: every corpus clip through the default gate")
    p.add_argument("--step", type=int, default=1, help="--coverage: every STEP-th clip")
    p.add_argument("--backend", default="voiced",
                   help="--coverage: the gate to measure (a name from the comparison)")
    p.add_argument("--check-once", type=int, default=0, metavar="N",
                   help="instead: N of the quietest clips through serd --once's own "
                        "analyse_file and through the gate stage: do they agree?")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from bench.common import log, machine_info, rounded  # noqa: PLC0415

    root = corpora_root(args.corpora)
    res: dict[str, Any] = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine_info()}
    if (args.coverage or args.check_once) and root is None:
        print("bench.gate: --coverage and --check-once need --corpora DIR (or $SERD_CORPORA)",
              file=sys.stderr)
        return 2
    if args.check_once:
        assert root is not None
        res["check_once"] = check_once(root, args.check_once)
        c = res["check_once"]
        text = (f"serd --once vs the gate stage: {c['agree']}/{c['clips']} of the quietest clips "
                f"agree; --once gave a verdict for {c['once_verdicts']}")
    elif args.coverage:
        assert root is not None
        gates = candidates()
        if args.backend not in gates:
            print(f"bench.gate: unknown gate {args.backend!r}; choose from {list(gates)}",
                  file=sys.stderr)
            return 2
        res["coverage"] = run_coverage(gates[args.backend], args.corpora or [root], args.step,
                                       log)
        res["coverage_gate"] = args.backend
        text = coverage_table(res["coverage"])
    else:
        noise = None
        if args.noise_dir is not None:
            try:
                noise = RecordedNoise(args.noise_dir)
            except FileNotFoundError as exc:
                print(f"bench.gate: --noise-dir {exc}; give a folder with one sub-folder of "
                      "audio files per category", file=sys.stderr)
                return 2
        default_s = None if noise is not None else (60.0 if args.quick else 300.0)
        res.update(run(root, clips=args.clips or (36 if args.quick else 96),
                       per_scene=4 if args.quick else 8,
                       noise_seconds=args.noise_seconds or default_s,
                       names=[g for g in args.gates.split(",") if g], log=log, noise=noise))
        text = table(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rounded(res), indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
