"""Cough probe (docs/gate.md, sixth and seventh rounds): Silero's chunk traces (its LSTM
states and encoder outputs, ``serd.speechcheck.chunk_trace``) over the segments the default
gate opens, on speech and on coughs, to fit and test a cough check for the confirm stage.

For every segment the default gate (``VadSettings()``) opens in a clip, it records where
the confirm stage started checking (the segment's pre-roll start) and the chunk at which
it confirmed, then runs a fresh Silero VAD (as the confirm stage does) from that start to
the segment's end (at most ``MAX_CHUNKS`` chunks after the confirmation) and keeps
the chunk traces at every chunk
(cough_fit.py pools them).  Output: one ``.npz`` per source with a row per chunk
``(trace, clip, segment, chunk offset from the confirming chunk)`` and the clip list.

    python docs/experiments/cough_probe.py speech OUT.npz --corpora ROOT... [--half 0|1]
    python docs/experiments/cough_probe.py covid-list --dir ~/.cache/serd/noise/covid19-cough
    python docs/experiments/cough_probe.py covid OUT.npz --dir ~/.cache/serd/noise/covid19-cough
    python docs/experiments/cough_probe.py folder OUT.npz --dir DIR    # any audio, levelled

A probe, not part of serd: run from the repository root with the project's venv.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gate import segments
from bench.gate_sounds import active_rms, sound
from serd import gate as gate_mod
from serd.decode import find_audio
from serd.decode import load as decode
from serd.gate import VadSettings
from serd.speechcheck import CHUNK, TRACE_WIDTH, SileroVad, chunk_trace

RATE = 16000
STEP = 160
MAX_CHUNKS = 96  # ~3 s of chunks after the first decision
_LOG: list[tuple[int, int]] = []

_start = gate_mod.SpeechConfirm.start
_confirmed = gate_mod.EnergyGate._confirmed_start


def _start_hook(self, from_block, block):  # type: ignore[no-untyped-def]
    self._probe_from = from_block
    return _start(self, from_block, block)


def _confirmed_hook(self, b):  # type: ignore[no-untyped-def]
    _LOG.append((self._confirm._probe_from, b))
    return _confirmed(self, b)


gate_mod.SpeechConfirm.start = _start_hook  # type: ignore[method-assign]
gate_mod.EnergyGate._confirmed_start = _confirmed_hook  # type: ignore[method-assign]


def probe(audio: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(Silero's chunk traces from the check's start to the segment's end, at most
    ``MAX_CHUNKS`` past the confirmation; the chunk count at the confirmation) per
    segment."""
    _LOG.clear()
    # The gate without the cough check (and without the late tier's mean test, as when
    # the shipped head's rows were probed): every segment it could be asked about.
    segs = segments(VadSettings(confirm_cough_threshold=1.0, confirm_late_mean=0.0), audio)
    out = []
    if len(_LOG) != len(segs):  # a max_segment_seconds split: pairs would not line up
        return out
    for (from_block, b), seg in zip(list(_LOG), segs, strict=True):
        s0 = from_block * STEP
        kc = max(1, ((b + 1) * STEP - s0) // CHUNK)
        end = min(seg.end, s0 + (kc + MAX_CHUNKS) * CHUNK, audio.size)
        n = (end - s0) // CHUNK
        n = max(n, kc)
        x = audio[s0 : s0 + n * CHUNK]
        n = x.size // CHUNK
        if n < 1:
            continue
        v = SileroVad()
        p = v.process(x[: n * CHUNK].reshape(n, CHUNK))
        # The gate decides first at the chunk where the strong tier passes (2 chunks in a
        # row above 0.3), which the check at the run's start often reaches before the
        # block it opened at; a late opening decides first at its own block.
        strong = np.flatnonzero((p[1:] > 0.3) & (p[:-1] > 0.3))
        if strong.size and strong[0] + 2 < kc:
            kc = int(strong[0]) + 2
        out.append((chunk_trace(v).astype(np.float16), kc))
    return out


# Synthetic office sounds (bench.gate_sounds; the synthetic cough left out) laid under half
# of the renderings, speech and coughs alike, so that what is under a sound is no cue.
BACKGROUNDS = ("fan", "keyboard", "mouse", "paper", "knock", "breath", "ceramic")


def _level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lvl = rng.uniform(-50, -20)
    y = x.astype(np.float64) / (active_rms(x.astype(np.float64)) or 1.0) * 10 ** (lvl / 20)
    y += sound("room", y.size / RATE, -60.0, seed=int(rng.integers(1 << 30)))
    if rng.random() < 0.5:
        cat = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        y += sound(cat, y.size / RATE, rng.uniform(-55, -35), seed=int(rng.integers(1 << 30)))
    return np.clip(y, -1, 1).astype(np.float32)


def _job(args: tuple[str, str, int]) -> list[tuple[np.ndarray, int]]:
    path, render, seed = args
    rng = np.random.default_rng(seed)
    try:
        # "a|b|c": recordings joined with 0.1-0.5 s between them (a fit of coughs).
        parts = [decode(Path(p), RATE) for p in path.split("|")]
    except Exception:
        return []
    x = parts[0]
    for part in parts[1:]:
        gap = np.zeros(int(rng.uniform(0.1, 0.5) * RATE), np.float32)
        x = np.concatenate([x, gap, part])
    if render.startswith("telephone"):
        from train.augment import telephone  # noqa: PLC0415

        x = telephone(x)
    if render.endswith("level"):
        x = _level(x, rng)
    return probe(x)


def _speaker_half(speaker: str) -> int:
    return hashlib.sha1(speaker.encode()).digest()[0] & 1


def speech_jobs(roots: list[str], half: int, per_corpus: int) -> list[tuple[str, str, int]]:
    from train.corpora import scan  # noqa: PLC0415

    by_corpus: dict[str, list] = {}
    for it in scan(roots):
        if _speaker_half(f"{it.corpus}/{it.speaker}") == half:
            by_corpus.setdefault(it.corpus, []).append(it)
    jobs = []
    for corpus, items in sorted(by_corpus.items()):
        rng = np.random.default_rng(0)
        idx = rng.permutation(len(items))[:per_corpus]
        for j, i in enumerate(idx):
            path = items[i].path
            # Speech rendered as the coughs are (a random level over room tone, so that
            # level is no cue), a third also at its own level, a third by telephone.
            jobs.append((path, "level", j))
            if j % 3 == 0:
                jobs.append((path, "native", j))
            elif j % 3 == 1:
                jobs.append((path, "telephone-level", j))
        print(corpus, len(items), "speakers-half items;", min(per_corpus, len(items)), "used",
              file=sys.stderr)
    return jobs


def covid_list(d: Path) -> None:
    """``unique_le8s.tsv``: the readable recordings of 8 s or less, one of each group of
    byte-identical or sample-identical files (resubmissions), in name order."""
    seen: set[str] = set()
    meta = {}
    with open(d / "metadata.json") as f:
        import json  # noqa: PLC0415

        for m in json.load(f):
            name = Path(str(m.get("file", m.get("filename", "")))).name
            meta[name] = str(m.get("source", ""))
    rows = []
    for path in sorted((d / "raw").glob("*.mp3")):
        blob = hashlib.sha1(path.read_bytes()).hexdigest()
        try:
            x = decode(path, RATE)
        except Exception:
            continue
        pcm = hashlib.sha1(np.round(x * 32767).astype(np.int16).tobytes()).hexdigest()
        dur = x.size / RATE
        if blob in seen or pcm in seen or dur > 8.0 or dur == 0:
            seen |= {blob, pcm}
            continue
        seen |= {blob, pcm}
        rows.append((path.name, meta.get(path.name, ""), f"{dur:.2f}"))
    with open(d / "unique_le8s.tsv", "w") as f:
        f.write("file\tsource\tdur_s\n")
        f.writelines("\t".join(r) + "\n" for r in rows)
    print(len(rows), "recordings listed", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["speech", "covid", "covid-list", "folder"])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--corpora", nargs="*", default=[])
    ap.add_argument("--half", type=int, default=0)
    ap.add_argument("--per-corpus", type=int, default=300)
    ap.add_argument("--dir")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fits", action="store_true", help="covid: add joined recordings")
    a = ap.parse_args()
    if a.kind == "covid-list":
        covid_list(Path(a.dir).expanduser())
        return
    if a.kind == "speech":
        jobs = speech_jobs(a.corpora, a.half, a.per_corpus)
    elif a.kind == "covid":
        d = Path(a.dir).expanduser()
        with open(d / "unique_le8s.tsv") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        files = [str(d / "raw" / r["file"]) for r in rows]
        jobs = [(f, "level", 1000 * c + i)
                for i, f in enumerate(files) for c in range(a.copies)]
        if a.fits:
            # Besides: each recording once more, joined with one or two others (a fit).
            rng = np.random.default_rng(7)
            jobs += [("|".join([f, *rng.choice(files, int(rng.integers(1, 3)))]), "level",
                      5000 + i) for i, f in enumerate(files)]
    else:
        files = sorted(find_audio([Path(a.dir).expanduser()]))
        jobs = [(str(f), "level", 1000 * c + i) for i, f in enumerate(files)
                for c in range(a.copies)]
    with ProcessPoolExecutor(a.jobs) as ex:
        results = list(ex.map(_job, jobs, chunksize=8))
    feats, clip, seg, offs, kcs = [], [], [], [], []
    sid = 0
    for ci, res in enumerate(results):
        for f, kc in res:
            feats.append(f)
            clip += [ci] * len(f)
            seg += [sid] * len(f)
            sid += 1
            offs += list(range(1 - kc, len(f) - kc + 1))  # 0: the confirming chunk
            kcs += [kc] * len(f)
    np.savez_compressed(
        a.out, x=np.concatenate(feats) if feats else np.zeros((0, TRACE_WIDTH), np.float16),
        clip=np.array(clip), seg=np.array(seg), offset=np.array(offs), kc=np.array(kcs),
        paths=np.array([j[0] for j in jobs]), render=np.array([j[1] for j in jobs]),
        segments=np.array([len(r) for r in results]))
    print(a.kind, len(jobs), "clips,", sum(len(r) for r in results), "segments,",
          len(clip), "rows", file=sys.stderr)


if __name__ == "__main__":
    main()
