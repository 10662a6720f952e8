"""Manifests for public emotional-speech corpora that follow no built-in naming scheme.

Each corpus here is extracted (outside the repository) from a public mirror named in
``docs/corpora.md``; this module writes the ``serd-corpus.csv`` that
:func:`train.corpora.read_manifest` reads, so ``serd-train --corpora DIR`` trains on the
files in place without new naming-scheme code::

    python -m train.prepare_corpora --list
    python -m train.prepare_corpora urdu ~/.cache/serd/corpora/urdu
    python -m train.prepare_corpora nemo ~/.cache/serd/corpora/nemo --verify
    python -m train.prepare_corpora nemo ~/.cache/serd/corpora/nemo --predict 20

The manifest's ``language`` column (an ISO 639-1 code) is not read by training today; it
rides along so the corpus-level attribute travels with the rows.  ``--verify`` decodes every
listed file with soundfile, writes ``SHA256SUMS`` beside the audio (``sha256sum -c`` reads
it) and prints duration statistics and the counts per label and speaker.  ``--predict N``
runs the installed model (``serd --once``'s pipeline, default config) over N random files of
each label and prints what it called them: listening is not possible here, and a label
mapping gone wrong (a swapped folder, a mis-read code) shows as a class that the model
calls something else far more often than on the other corpora.

Speaker ids are those of the corpus's own metadata (file names or its table); the manifest
reader prefixes them with the corpus name, so they never collide across corpora.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile

from serd import config as serd_config
from serd.decode import AudioError
from serd.model import load_classifier
from serd.once import analyse_file
from train.corpora import CANONICAL, MANIFEST_NAME, CorpusError, Item, read_manifest

_LOGGER = logging.getLogger(__name__)

SUMS_NAME = "SHA256SUMS"
MANIFEST_COLUMNS = ("path", "speaker", "label", "gender", "text", "corpus", "language")


@dataclass(frozen=True)
class Row:
    """One manifest row: a file relative to the corpus root and what it holds."""

    path: str
    speaker: str
    label: str
    gender: str = ""
    text: str = ""


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus this module knows: its manifest name, language and row reader."""

    name: str
    language: str
    """ISO 639-1 code of the spoken language."""
    title: str
    rows: Callable[[Path], list[Row]]
    """Root folder -> one row per usable file (raises :class:`CorpusError` on surprises)."""


@dataclass(frozen=True)
class Verification:
    """What ``--verify`` measured over a manifest's files."""

    files: int
    hours: float
    min_seconds: float
    median_seconds: float
    max_seconds: float
    sample_rates: tuple[int, ...]
    channels: tuple[int, ...]
    sums_path: Path


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac"))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _named_in_folders(root: Path, pattern: re.Pattern[str], group: int,
                      folder_code: Callable[[str], str | None], what: str,
                      folder: str = "emotion") -> list[tuple[Path, re.Match[str]]]:
    """Every audio file under ``root`` with its name's match; the code in ``group``
    (lower-cased: the emotion, or the speaker where ``folder`` says so) must be the one
    its folder stands for."""
    out = []
    for path in _audio_files(root):
        m = pattern.match(path.stem)
        if not m or folder_code(path.parent.name) != m.group(group).lower():
            raise CorpusError(f"{path}: not {what} name in its {folder} folder")
        out.append((path, m))
    return out


# -- URDU (Latif et al. 2018): <Emotion>/S<M|F><n>_F<k>_<A|H|N|S><k>.wav ----------------

_URDU_NAME = re.compile(r"^S([MF])(\d+)_F\d+_([AHNS])\d+$")
_URDU_LABEL = {"a": "angry", "h": "happy", "n": "neutral", "s": "sad"}
_URDU_FOLDER = {"Angry": "a", "Happy": "h", "Neutral": "n", "Sad": "s"}


def _urdu_rows(root: Path) -> list[Row]:
    return [Row(_rel(path, root), f"S{m.group(1)}{m.group(2)}", _URDU_LABEL[m.group(3).lower()],
                m.group(1).lower())
            for path, m in _named_in_folders(root, _URDU_NAME, 3, _URDU_FOLDER.get,
                                             "an URDU-Dataset")]


# -- ASED v1 (Retta et al. 2023): <nn><Emotion>/<e><n>-<sentence>-<rep>-<gender>-<speaker> --

_ASED_NAME = re.compile(r"^([nfhsa])(\d)-(\d\d)-(\d\d)-(0[12])-(\d\d)$", re.IGNORECASE)
_ASED_LABEL = {"n": "neutral", "f": "fearful", "h": "happy", "s": "sad", "a": "angry"}


def _ased_rows(root: Path) -> list[Row]:
    # Folders are 01Neutral, 02Fearful...: the letter after the number is the name's code.
    found = _named_in_folders(root, _ASED_NAME, 1, lambda folder: folder[2:3].lower(),
                              "an ASED")
    # The gender field disagrees with the rest of one speaker's files in a handful of names
    # (one file each for five speakers): a speaker's gender is the one most of their files
    # say.  The splits stratify speakers by gender, so a speaker must have just one.
    votes: dict[str, Counter[str]] = {}
    for _path, m in found:
        votes.setdefault(m.group(6), Counter())[m.group(5)] += 1
    sex = {spk: "f" if c.most_common(1)[0][0] == "01" else "m" for spk, c in votes.items()}
    return [Row(_rel(path, root), m.group(6), _ASED_LABEL[m.group(1).lower()], sex[m.group(6)],
                f"{m.group(1).lower()}{m.group(3)}")
            for path, m in found]


# -- TurEV-DB (Canpolat et al. 2020): Sound Source/<Emotion>/<speaker>_<emo>_<word>.wav ------

_TUREV_NAME = re.compile(r"^(\d{4})_(kz|sk|mt|hl)_([a-z]+\d*)$")
# Turkish codes: kizgin (angry), sakin (calm), mutlu (happy), hüzünlü (sad).
_TUREV_LABEL = {"kz": "angry", "sk": "calm", "mt": "happy", "hl": "sad"}
_TUREV_FOLDER = {"Angry": "kz", "Calm": "sk", "Happy": "mt", "Sad": "hl"}


def _turev_rows(root: Path) -> list[Row]:
    return [Row(_rel(path, root), m.group(1), _TUREV_LABEL[m.group(2)], "", m.group(3))
            for path, m in _named_in_folders(root, _TUREV_NAME, 2, _TUREV_FOLDER.get,
                                             "a TurEV-DB")]


# -- nEMO (Christop 2024): samples/<speaker>_<emotion>_<n>.wav, metadata in data.tsv ----------

_NEMO_LABEL = {"anger": "angry", "fear": "fearful", "happiness": "happy", "sadness": "sad",
               "surprised": "surprised", "neutral": "neutral"}


def _nemo_rows(root: Path) -> list[Row]:
    table = root / "data.tsv"
    if not table.is_file():
        raise CorpusError(f"{table}: nEMO's metadata table is missing")
    rows = []
    with table.open(newline="", encoding="utf-8") as fh:
        for line, rec in enumerate(csv.DictReader(fh, delimiter="\t"), start=2):
            name = (rec.get("file_id") or "").strip()
            emotion = (rec.get("emotion") or "").strip()
            speaker = (rec.get("speaker_id") or "").strip()
            sex = (rec.get("gender") or "").strip().lower()[:1]
            if emotion not in _NEMO_LABEL or not speaker or not name:
                raise CorpusError(f"{table}, line {line}: unexpected row {rec!r}")
            if not name.startswith(f"{speaker}_{emotion}_"):
                raise CorpusError(f"{table}, line {line}: {name} disagrees with its columns")
            rows.append(Row(f"samples/{name}", speaker, _NEMO_LABEL[emotion],
                            sex if sex in ("m", "f") else "",
                            (rec.get("normalized_text") or "").strip()))
    return rows


# -- EMOVO (Costantini et al. 2014): <speaker>/<emotion>-<speaker>-<sentence>.wav -----------

_EMOVO_NAME = re.compile(r"^(dis|gio|neu|pau|rab|sor|tri)-([fm]\d)-([bdln]\d)$")
# Italian codes: disgusto, gioia, neutrale, paura, rabbia, sorpresa, tristezza.
_EMOVO_LABEL = {"dis": "disgust", "gio": "happy", "neu": "neutral", "pau": "fearful",
                "rab": "angry", "sor": "surprised", "tri": "sad"}


def _emovo_rows(root: Path) -> list[Row]:
    # The folder is the speaker (f1..m3), checked against the name; gender is its letter.
    return [Row(_rel(path, root), m.group(2), _EMOVO_LABEL[m.group(1)], m.group(2)[0],
                m.group(3))
            for path, m in _named_in_folders(root, _EMOVO_NAME, 2, str.lower, "an EMOVO",
                                             "speaker")]


# -- emotiontts_open_db, Emotional (KAIST / Selvas AI): <half>/<speaker>/wav/<speaker><n>.wav --

_KO_NAME = re.compile(r"^((em|ne)[a-z])(\d{5})$")
_KO_HALF = {"em": "plain-to-emotional", "ne": "emotional-to-emotional"}
# Speakers and genders as the corpus README lists them (여성 female, 남성 male).
_KO_GENDER = {**{f"em{c}": "f" for c in "ab"}, **{f"em{c}": "m" for c in "fgh"},
              **{f"ne{c}": "f" for c in "abcde"}, **{f"ne{c}": "m" for c in "klmno"}}
# Files <speaker>00001-00100 are block 000, 00101-00200 block 001 and so on.  The README
# calls the blocks neutral, happy, angry, sad; the recordings say 002 is sad and 003 angry
# (emotion-specific scripts, levels, the model's verdicts: docs/corpora.md).
_KO_LABEL = ("neutral", "happy", "sad", "angry")


def _script_key(script: Path) -> str:
    """The ``text`` id of a Korean file: ``s`` and the first 8 hex digits of the SHA-1 of
    its one-line script (UTF-8, byte-order mark and surrounding white space removed), so
    files that read the same sentence share an id."""
    try:
        sentence = script.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{script}: cannot read the script ({exc})") from None
    if not sentence or "\n" in sentence:
        raise CorpusError(f"{script}: not a one-sentence script")
    return "s" + hashlib.sha1(sentence.encode("utf-8")).hexdigest()[:8]


def _emotiontts_rows(root: Path) -> list[Row]:
    rows = []
    for path in _audio_files(root):
        m = _KO_NAME.match(path.stem)
        speaker_dir = path.parent.parent
        if (not m or path.parent.name != "wav" or speaker_dir.name != m.group(1)
                or speaker_dir.parent.name != _KO_HALF[m.group(2)]):
            raise CorpusError(f"{path}: not an emotiontts name in its <half>/<speaker>/wav "
                              "folder")
        speaker, number = m.group(1), int(m.group(3))
        if speaker not in _KO_GENDER:
            raise CorpusError(f"{path}: speaker {speaker} is not in the corpus README")
        if not 1 <= number <= 100 * len(_KO_LABEL):
            raise CorpusError(f"{path}: utterance number {number} is outside 1-400")
        rows.append(Row(_rel(path, root), speaker, _KO_LABEL[(number - 1) // 100],
                        _KO_GENDER[speaker],
                        _script_key(speaker_dir / "script" / f"{path.stem}.txt")))
    return rows


SPECS: dict[str, CorpusSpec] = {
    spec.name: spec for spec in (
        CorpusSpec("urdu", "ur", "URDU-Dataset (Urdu talk-show speech)", _urdu_rows),
        CorpusSpec("ased", "am", "Amharic Speech Emotional Dataset v1", _ased_rows),
        CorpusSpec("turevdb", "tr", "Turkish Emotion-Voice Database", _turev_rows),
        CorpusSpec("nemo", "pl", "nEMO, emotional speech in Polish", _nemo_rows),
        CorpusSpec("emovo", "it", "EMOVO, Italian emotional speech", _emovo_rows),
        CorpusSpec("emotiontts", "ko", "Korean emotional TTS corpus (emotiontts_open_db, "
                   "public part)", _emotiontts_rows),
    )
}


def write_manifest(spec: CorpusSpec, root: Path) -> tuple[Path, list[Item]]:
    """Write ``root/serd-corpus.csv`` for ``spec`` and read it back as training will.

    Every audio file under ``root`` must be listed: an unlisted file whose name happens to
    match a built-in scheme (RAVDESS-like digits, say) would otherwise be scanned as that
    corpus.
    """
    rows = spec.rows(root)
    if not rows:
        raise CorpusError(f"{root}: no {spec.name} audio found")
    paths = [r.path for r in rows]
    if len(set(paths)) != len(paths):
        raise CorpusError(f"{root}: a file is listed twice")
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise CorpusError(f"{root}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    unlisted = sorted({_rel(p, root) for p in _audio_files(root)} - set(paths))
    if unlisted:
        raise CorpusError(f"{root}: {len(unlisted)} audio files are not in the manifest, "
                          f"e.g. {unlisted[0]}")
    bad = sorted({r.label for r in rows} - set(CANONICAL))
    if bad:
        raise CorpusError(f"{spec.name}: labels outside the canonical set: {bad}")
    out = root / MANIFEST_NAME
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for r in sorted(rows, key=lambda r: r.path):
            writer.writerow((r.path, r.speaker, r.label, r.gender, r.text, spec.name,
                             spec.language))
    tmp.replace(out)
    return out, read_manifest(out)


def verify(items: Sequence[Item], root: Path) -> Verification:
    """Decode every file with soundfile, write ``root/SHA256SUMS``, measure durations."""
    durations: list[float] = []
    rates: set[int] = set()
    channels: set[int] = set()
    lines = []
    for it in sorted(items, key=lambda i: i.path):
        path = Path(it.path)
        try:
            info = soundfile.info(str(path))
            data, _rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as exc:
            raise CorpusError(f"{path}: soundfile cannot decode it ({exc})") from None
        if data.shape[0] == 0:
            raise CorpusError(f"{path}: no samples")
        durations.append(data.shape[0] / info.samplerate)
        rates.add(info.samplerate)
        channels.add(info.channels)
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {_rel(path, root)}\n")
    sums = root / SUMS_NAME
    sums.write_text("".join(lines), encoding="utf-8")
    return Verification(len(durations), sum(durations) / 3600.0, min(durations),
                        statistics.median(durations), max(durations), tuple(sorted(rates)),
                        tuple(sorted(channels)), sums)


@dataclass(frozen=True)
class LabelCheck:
    """The model's file verdicts on a sample of one label's files."""

    label: str
    expected: str | None
    """The model label this label should be called: itself, calm as neutral (as the
    six-class taxonomy trains it), None when the model has no such label."""
    files: int
    verdicts: dict[str, int]
    """Verdict -> files; ``none`` below the confidence threshold, ``no speech`` when the
    gate found none."""

    @property
    def agreement(self) -> float | None:
        if self.expected is None:
            return None
        return self.verdicts.get(self.expected, 0) / self.files


# Canonical emotions that a model without them should call another of its labels.
_AS_MODEL_LABEL = {"calm": "neutral"}


def predict_sample(items: Sequence[Item], per_label: int, seed: int = 0) -> list[LabelCheck]:
    """The shipped model's verdicts on up to ``per_label`` random files of every label."""
    cfg = serd_config.load(None)
    clf = load_classifier(cfg.model)
    rng = random.Random(seed)
    by_label: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda i: i.path):
        by_label.setdefault(it.label, []).append(it)
    checks = []
    for label in (lab for lab in CANONICAL if lab in by_label):
        verdicts: Counter[str] = Counter()
        sample = rng.sample(by_label[label], min(per_label, len(by_label[label])))
        for it in sample:
            try:
                result = analyse_file(cfg, clf, Path(it.path))
            except AudioError as exc:
                raise CorpusError(f"{it.path}: {exc}") from None
            verdict = result.summary
            verdicts["no speech" if verdict is None else verdict.label or "none"] += 1
        expected = label if label in clf.card.labels else _AS_MODEL_LABEL.get(label)
        if expected not in clf.card.labels:
            expected = None
        checks.append(LabelCheck(label, expected, len(sample), dict(verdicts.most_common())))
    return checks


def summary(items: Iterable[Item]) -> str:
    """Counts per label, speakers (with gender split) as a few lines of text."""
    items = list(items)
    labels = Counter(it.label for it in items)
    speakers = {it.speaker: it.gender for it in items}
    genders = Counter(speakers.values())
    per_speaker = Counter(it.speaker for it in items)
    lines = [
        f"{len(items)} files, {len(speakers)} speakers "
        f"({genders.get('f', 0)} f, {genders.get('m', 0)} m, {genders.get('', 0)} unknown), "
        f"{min(per_speaker.values())}-{max(per_speaker.values())} files per speaker",
        "labels: " + ", ".join(f"{lab} {labels[lab]}" for lab in CANONICAL if labels[lab]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a corpus that does not look as expected is one line on stderr
    and exit status 2."""
    ap = argparse.ArgumentParser(prog="python -m train.prepare_corpora",
                                 description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("name", nargs="?", help="corpus name (see --list)")
    ap.add_argument("root", nargs="?", help="the folder the corpus was extracted into")
    ap.add_argument("--list", action="store_true", help="list the corpora this knows")
    ap.add_argument("--verify", action="store_true",
                    help="decode every file, write SHA256SUMS, print durations")
    ap.add_argument("--predict", type=int, metavar="N",
                    help="the installed model's verdicts on N random files of each label")
    args = ap.parse_args(argv)
    if args.list:
        for spec in SPECS.values():
            print(f"{spec.name:10s} {spec.language}  {spec.title}")
        return 0
    if not args.name or not args.root:
        ap.error("give a corpus NAME and its ROOT folder (or --list)")
    if args.name not in SPECS:
        print(f"unknown corpus {args.name!r}; known: {', '.join(SPECS)}", file=sys.stderr)
        return 2
    spec = SPECS[args.name]
    root = Path(args.root).expanduser().resolve()
    try:
        if not root.is_dir():
            raise CorpusError(f"{root} is not a folder (extract the corpus there first)")
        out, items = write_manifest(spec, root)
        print(f"{out}: {summary(items)}")
        if args.verify:
            v = verify(items, root)
            print(f"decoded {v.files} files, {v.hours:.2f} h, {v.min_seconds:.2f}/"
                  f"{v.median_seconds:.2f}/{v.max_seconds:.2f} s min/median/max, "
                  f"rates {list(v.sample_rates)} Hz, channels {list(v.channels)}; "
                  f"checksums in {v.sums_path}")
        if args.predict:
            for check in predict_sample(items, args.predict):
                agreement = ("not a model label" if check.agreement is None else
                             f"called {check.expected} {check.agreement:4.0%}")
                print(f"{check.label:9s} {check.files:4d} files, {agreement}: "
                      + ", ".join(f"{k} {n}" for k, n in check.verdicts.items()))
    except CorpusError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
