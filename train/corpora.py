"""Corpus loaders: file names in each corpus's official scheme -> labelled items.

Supported schemes (``.wav`` or ``.flac``, any folder depth, any sample rate/channels):

* RAVDESS ``03-01-EE-II-SS-RR-AA``: emotion EE, actor AA (odd = male).  Only the speech
  part (vocal channel 01) is used; song files (02) are skipped.
* CREMA-D ``AAAA_SSS_EEE_LL``: actor AAAA, emotion EEE.  Gender from a
  ``VideoDemographics.csv`` anywhere under the root when present, else unknown.
* TESS ``OAF_back_angry`` / ``YAF_..._ps``: speakers OAF and YAF (both female).
* SAVEE ``DC_a01`` or ``DC/a01``: speakers DC JE JK KL (all male).
* EmoDB ``03a01Fa``: speaker 03, text a01, emotion letter (German initials), version.
* Your own recordings: a ``serd-corpus.csv`` manifest anywhere under a root (see
  :func:`read_manifest`): one row per file with its speaker and emotion, for data that
  follows no published naming scheme (e.g. labelled calls from your own lines).

Emotions are mapped to one canonical vocabulary (:data:`CANONICAL`); the taxonomy that a
model uses is chosen later (:mod:`train.taxonomy`).  Speaker ids are prefixed by the
corpus (``ravdess:01``), so ids never collide across corpora.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from serd import decode

_LOGGER = logging.getLogger(__name__)

CANONICAL = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom",
)
AUDIO_EXTENSIONS = (".wav", ".flac")
CORPORA = ("ravdess", "cremad", "tess", "savee", "emodb")
MANIFEST_NAME = "serd-corpus.csv"
# Spellings a manifest may use for the canonical emotions (lower-cased).
LABEL_ALIASES = {
    "neu": "neutral", "calmness": "calm", "happiness": "happy", "joy": "happy",
    "hap": "happy", "sadness": "sad", "anger": "angry", "ang": "angry", "fear": "fearful",
    "afraid": "fearful", "fea": "fearful", "disgusted": "disgust", "dis": "disgust",
    "surprise": "surprised", "bored": "boredom",
}
_CORPUS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class CorpusError(ValueError):
    """Corpus, protocol or configuration input that training cannot use; the message says
    what and where (``serd-train`` prints it as one line)."""


class ManifestError(CorpusError):
    """A ``serd-corpus.csv`` that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Item:
    """One labelled recording."""

    path: str
    corpus: str
    speaker: str
    """Corpus-prefixed speaker id, e.g. ``ravdess:07``."""
    label: str
    """Canonical emotion (one of :data:`CANONICAL`)."""
    gender: str = ""
    """``"m"``, ``"f"`` or ``""`` when unknown."""
    text: str = ""
    """Sentence/text code where the scheme has one."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# -- per-corpus parsers: stem (and parent folder) -> Item fields or None ----------------

_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_RAVDESS_EMO = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}

_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_CREMAD_EMO = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fearful",
    "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}

_TESS = re.compile(r"^(OAF|YAF)_([A-Za-z]+)_([A-Za-z]+)$", re.IGNORECASE)
_TESS_EMO = {
    "angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
    "neutral": "neutral", "ps": "surprised", "sad": "sad",
}

_SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
_SAVEE_FLAT = re.compile(r"^(DC|JE|JK|KL)_(sa|su|a|d|f|h|n)(\d\d)$")
_SAVEE_NESTED = re.compile(r"^(sa|su|a|d|f|h|n)(\d\d)$")
_SAVEE_EMO = {
    "a": "angry", "d": "disgust", "f": "fearful", "h": "happy",
    "n": "neutral", "sa": "sad", "su": "surprised",
}

_EMODB = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")
_EMODB_EMO = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fearful",
    "F": "happy", "T": "sad", "N": "neutral",
}
# From the EmoDB documentation (speaker: sex, age).
_EMODB_GENDER = {
    "03": "m", "08": "f", "09": "f", "10": "m", "11": "m",
    "12": "m", "13": "f", "14": "f", "15": "m", "16": "f",
}


def parse_name(path: Path) -> Item | None:
    """Recognise ``path`` by its name (and parent folder for nested SAVEE); None if no scheme."""
    stem = path.stem
    p = str(path)
    m = _RAVDESS.match(stem)
    if m:
        modality, channel, emo, _intensity, stmt, _rep, actor = m.groups()
        if channel != "01" or emo not in _RAVDESS_EMO or not 1 <= int(actor) <= 99:
            return None  # song (02) or unknown codes
        del modality  # 01/02 video files would be rejected by the audio reader anyway
        gender = "m" if int(actor) % 2 == 1 else "f"
        return Item(p, "ravdess", f"ravdess:{actor}", _RAVDESS_EMO[emo], gender, stmt)
    m = _CREMAD.match(stem)
    if m and m.group(3) in _CREMAD_EMO:
        actor, sentence, emo, _level = m.groups()
        return Item(p, "cremad", f"cremad:{actor}", _CREMAD_EMO[emo], "", sentence)
    m = _TESS.match(stem)
    if m and m.group(3).lower() in _TESS_EMO:
        spk, word, emo = m.groups()
        return Item(p, "tess", f"tess:{spk.upper()}", _TESS_EMO[emo.lower()], "f", word.lower())
    m = _SAVEE_FLAT.match(stem)
    if m:
        spk, emo, num = m.groups()
        return Item(p, "savee", f"savee:{spk}", _SAVEE_EMO[emo], "m", f"{emo}{num}")
    m = _SAVEE_NESTED.match(stem)
    if m and path.parent.name in _SAVEE_SPEAKERS:
        emo, num = m.groups()
        spk = path.parent.name
        return Item(p, "savee", f"savee:{spk}", _SAVEE_EMO[emo], "m", f"{emo}{num}")
    m = _EMODB.match(stem)
    if m:
        spk, text, emo, _version = m.groups()
        return Item(p, "emodb", f"emodb:{spk}", _EMODB_EMO[emo], _EMODB_GENDER.get(spk, ""), text)
    return None


def _cremad_genders(root: Path) -> dict[str, str]:
    """Actor -> gender from CREMA-D's VideoDemographics.csv, when one lies under root."""
    out: dict[str, str] = {}
    for csv_path in sorted(root.rglob("VideoDemographics.csv")):
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                sex = (row.get("Sex") or "").strip().lower()
                actor = (row.get("ActorID") or "").strip()
                if actor and sex in ("male", "female"):
                    out[f"cremad:{actor}"] = sex[0]
    return out


def read_manifest(path: Path) -> list[Item]:
    """The items of one ``serd-corpus.csv``.

    Columns (header row, any order): ``path`` (relative to the manifest's folder, or
    absolute), ``speaker`` and ``label`` are required; ``corpus`` (default: the manifest's
    folder name), ``gender`` (``m``/``f``/empty) and ``text`` (a sentence or prompt id)
    are optional.  Labels are the canonical emotions (:data:`CANONICAL`) or a common
    spelling of one (``anger``, ``fear``, ``happiness``...).  Speakers matter: the splits
    are by speaker, so give every person their own id.
    """
    base = path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = {(f or "").strip().lower() for f in reader.fieldnames or []}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read it as CSV ({exc})") from exc
    missing = {"path", "speaker", "label"} - fields
    if not rows or missing:
        raise ManifestError(f"{path}: needs a header row with path, speaker and label columns"
                            + (f" (missing: {', '.join(sorted(missing))})" if rows else
                               " and at least one row"))
    items = []
    for line, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        corpus = (row.get("corpus") or base.name).lower()
        if not _CORPUS_NAME.match(corpus) or corpus in CORPORA:
            raise ManifestError(
                f"{path}, line {line}: corpus name {corpus!r} must be lower-case letters, "
                f"digits, '-' or '_' and not one of {', '.join(CORPORA)} (set a corpus column)")
        label = row["label"].lower()
        label = LABEL_ALIASES.get(label, label)
        if label not in CANONICAL:
            raise ManifestError(f"{path}, line {line}: unknown label {row['label']!r}; use one "
                                f"of {', '.join(CANONICAL)}")
        if not row["speaker"]:
            raise ManifestError(f"{path}, line {line}: empty speaker")
        gender = row.get("gender", "").lower()[:1]
        if gender not in ("", "m", "f"):
            raise ManifestError(f"{path}, line {line}: gender must be m, f or empty")
        audio = Path(row["path"])
        audio = audio if audio.is_absolute() else base / audio
        if not audio.is_file():
            raise ManifestError(f"{path}, line {line}: no such file {audio}")
        items.append(Item(str(audio), corpus, f"{corpus}:{row['speaker']}", label, gender,
                          row.get("text", "")))
    return items


def scan(
    roots: Iterable[str | os.PathLike[str]], corpora: Iterable[str] | None = None
) -> list[Item]:
    """All recognised audio files under ``roots`` (recursive), sorted by path.

    ``corpora`` keeps only those corpora (None = every corpus found).  Files listed in a
    ``serd-corpus.csv`` take their labels from it, whatever their names.
    """
    wanted = set(corpora) if corpora is not None else None
    items: list[Item] = []
    for root_arg in roots:
        root = Path(root_arg)
        if not root.exists():
            raise CorpusError(f"corpus root {root} does not exist (give it with --corpora DIR)")
        genders = _cremad_genders(root)
        listed: set[str] = set()
        for manifest in sorted(root.rglob(MANIFEST_NAME)):
            for item in read_manifest(manifest):
                listed.add(os.path.realpath(item.path))
                if wanted is None or item.corpus in wanted:
                    items.append(item)
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                if not name.lower().endswith(AUDIO_EXTENSIONS):
                    continue
                if listed and os.path.realpath(os.path.join(dirpath, name)) in listed:
                    continue
                found = parse_name(Path(dirpath) / name)
                if found is None or (wanted is not None and found.corpus not in wanted):
                    continue
                if found.corpus == "cremad" and found.speaker in genders:
                    found = Item(found.path, found.corpus, found.speaker, found.label,
                                 genders[found.speaker], found.text)
                items.append(found)
    items.sort(key=lambda it: it.path)
    return items


def load_audio(path: str | os.PathLike[str], sample_rate: int = 16000) -> npt.NDArray[np.float32]:
    """A corpus file as mono float32 at ``sample_rate``, decoded by serd's own decoder
    (:func:`serd.decode.load`: downmix, NaN/Inf to silence, clip to [-1, 1], streaming
    soxr resampling), so training sees the samples the device sees from the same file.
    A file serd cannot decode is a :class:`CorpusError` naming it."""
    try:
        return np.ascontiguousarray(decode.load(str(path), sample_rate), dtype=np.float32)
    except decode.AudioError as exc:
        raise CorpusError(f"{path}: {exc}") from None


FINGERPRINT_CHUNKS = 64
DUPLICATE_TOLERANCE = 2e-3
"""Two clips are the same recording when equally long and no sample differs by more than
this (about 65 LSB at 16 bit): the corpora were converted with dither, so copies of one
recording differ by a few LSB and an exact hash would miss them."""


def audio_fingerprint(x: npt.NDArray[np.float32]) -> list[float]:
    """Content fingerprint: length, then the RMS of :data:`FINGERPRINT_CHUNKS` equal chunks."""
    n = x.size
    edges = np.linspace(0, n, FINGERPRINT_CHUNKS + 1).astype(int)
    rms = [
        float(np.sqrt(np.mean(np.square(x[a:b], dtype=np.float64)))) if b > a else 0.0
        for a, b in itertools.pairwise(edges)
    ]
    return [float(n), *(round(r, 6) for r in rms)]


def same_audio(fp_a: list[float], fp_b: list[float], path_a: str, path_b: str) -> bool:
    """True when two clips are the same recording (fingerprints first, then the samples)."""
    if fp_a[0] != fp_b[0]:
        return False
    if np.max(np.abs(np.subtract(fp_a[1:], fp_b[1:]))) > DUPLICATE_TOLERANCE:
        return False
    a, b = load_audio(path_a), load_audio(path_b)
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0.0)) <= DUPLICATE_TOLERANCE


def dedupe(
    items: list[Item], fingerprints: dict[str, list[float]]
) -> tuple[list[Item], list[tuple[str, str]]]:
    """Drop items whose audio duplicates an earlier one (first by path wins).

    Identical audio under two different labels (a release error) is ambiguous: every copy
    is dropped.  Returns the kept items and (dropped path, reason) pairs.
    """
    by_len: dict[float, list[Item]] = {}
    for it in sorted(items, key=lambda i: i.path):
        by_len.setdefault(fingerprints[it.path][0], []).append(it)
    groups: list[list[Item]] = []
    for same_len in by_len.values():
        local: list[list[Item]] = []
        for it in same_len:
            for g in local:
                if same_audio(fingerprints[g[0].path], fingerprints[it.path], g[0].path, it.path):
                    g.append(it)
                    break
            else:
                local.append([it])
        groups.extend(local)
    keep: list[Item] = []
    dropped: list[tuple[str, str]] = []
    for group in groups:
        if len(group) == 1:
            keep.append(group[0])
            continue
        labels = {it.label for it in group}
        if len(labels) > 1:
            for it in group:
                dropped.append((it.path, f"identical audio with different labels {sorted(labels)}"))
        else:
            keep.append(group[0])
            for it in group[1:]:
                dropped.append((it.path, f"duplicate of {group[0].path}"))
    keep.sort(key=lambda it: it.path)
    dropped.sort()
    return keep, dropped


def fingerprint_cache_path(cache_dir: Path) -> Path:
    return cache_dir / "audio-fingerprints.json"


# (path, size, mtime_ns) -> digest, for this process: the cache keys of every rendering
# ask for the same files' digests.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_digest(path: str) -> str:
    """BLAKE2b-128 of a file's bytes (hex), memoised per process by (path, size, mtime).

    Feature caches are keyed by content, not modification time: a corpus restored from a
    backup or re-mounted at the same path (every file gets a new mtime) keeps its cache.
    """
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns)
    digest = _DIGESTS.get(memo)
    if digest is None:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _DIGESTS[memo] = h.hexdigest()
    return digest


def audio_fingerprints(items: list[Item], cache_dir: Path | None = None) -> dict[str, list[float]]:
    """Fingerprint per item path, cached by (path, content digest) in ``cache_dir``."""
    cache: dict[str, list] = {}
    cpath = fingerprint_cache_path(cache_dir) if cache_dir else None
    if cpath and cpath.is_file():
        try:
            cache = json.loads(cpath.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    out: dict[str, list[float]] = {}
    changed = False
    for it in items:
        digest = content_digest(it.path)
        hit = cache.get(it.path)
        if hit and hit[0] == digest:
            out[it.path] = hit[1]
            continue
        fp = audio_fingerprint(load_audio(it.path))
        cache[it.path] = [digest, fp]
        out[it.path] = fp
        changed = True
    if cpath and changed:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cpath)
    return out


def load_corpora(
    roots: Iterable[str | os.PathLike[str]],
    corpora: Iterable[str] | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[Item], list[tuple[str, str]]]:
    """Scan, hash and de-duplicate: the items to use and the (path, reason) dropped."""
    items = scan(roots, corpora)
    return dedupe(items, audio_fingerprints(items, cache_dir))
