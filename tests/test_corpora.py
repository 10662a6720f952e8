"""Corpus loaders: every naming scheme, any rate/channels/format, de-duplication."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.corpora import (
    CorpusError,
    Item,
    ManifestError,
    dedupe,
    load_audio,
    load_corpora,
    parse_name,
    scan,
)


def _tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.01 * rng.standard_normal(t.size)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _write(path: Path, rate: int = 16000, channels: int = 1, seconds: float = 0.5,
           seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _tone(seconds, rate, channels, seed), rate)
    return path


@pytest.fixture
def corpus_tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpora"
    _write(root / "RAVDESS" / "Actor_01" / "03-01-05-02-01-01-01.wav", 48000, 2, seed=1)
    _write(root / "RAVDESS" / "Actor_02" / "03-01-02-01-02-02-02.flac", 16000, 1, seed=2)
    _write(root / "RAVDESS" / "Actor_02" / "03-02-03-01-01-01-02.wav", 16000, seed=3)  # song
    _write(root / "crema" / "AudioWAV" / "1001_DFA_ANG_XX.wav", 16000, seed=4)
    _write(root / "crema" / "1091_TIE_SAD_LO.flac", 22050, 1, seed=5)
    _write(root / "tess" / "OAF_angry" / "OAF_back_angry.wav", 24414, seed=6)
    _write(root / "tess" / "YAF_pleasant_surprised" / "YAF_young_ps.wav", 24414, seed=7)
    _write(root / "tess" / "YAF_fear" / "YAF_dog_fear.flac", 24414, seed=8)
    _write(root / "savee" / "DC_sa03.wav", 44100, seed=9)
    _write(root / "savee" / "AudioData" / "JK" / "su12.wav", 44100, 2, seed=10)
    _write(root / "savee" / "KL_a01.wav", 44100, seed=11)
    _write(root / "emodb" / "wav" / "03a01Fa.wav", 16000, seed=12)
    _write(root / "emodb" / "wav" / "16b10Lb.wav", 16000, seed=13)
    _write(root / "other" / "hello.wav", 16000, seed=14)  # no scheme: ignored
    (root / "other" / "notes.txt").write_text("not audio")
    return root


def test_scan_parses_every_scheme(corpus_tree: Path) -> None:
    items = {Path(it.path).name: it for it in scan([corpus_tree])}
    assert set(items) == {
        "03-01-05-02-01-01-01.wav", "03-01-02-01-02-02-02.flac", "1001_DFA_ANG_XX.wav",
        "1091_TIE_SAD_LO.flac", "OAF_back_angry.wav", "YAF_young_ps.wav", "YAF_dog_fear.flac",
        "DC_sa03.wav", "su12.wav", "KL_a01.wav", "03a01Fa.wav", "16b10Lb.wav",
    }
    expect = {
        "03-01-05-02-01-01-01.wav": ("ravdess", "ravdess:01", "angry", "m"),
        "03-01-02-01-02-02-02.flac": ("ravdess", "ravdess:02", "calm", "f"),
        "1001_DFA_ANG_XX.wav": ("cremad", "cremad:1001", "angry", ""),
        "1091_TIE_SAD_LO.flac": ("cremad", "cremad:1091", "sad", ""),
        "OAF_back_angry.wav": ("tess", "tess:OAF", "angry", "f"),
        "YAF_young_ps.wav": ("tess", "tess:YAF", "surprised", "f"),
        "YAF_dog_fear.flac": ("tess", "tess:YAF", "fearful", "f"),
        "DC_sa03.wav": ("savee", "savee:DC", "sad", "m"),
        "su12.wav": ("savee", "savee:JK", "surprised", "m"),
        "KL_a01.wav": ("savee", "savee:KL", "angry", "m"),
        "03a01Fa.wav": ("emodb", "emodb:03", "happy", "m"),
        "16b10Lb.wav": ("emodb", "emodb:16", "boredom", "f"),
    }
    for name, (corpus, speaker, label, gender) in expect.items():
        it = items[name]
        got = (it.corpus, it.speaker, it.label, it.gender)
        assert got == (corpus, speaker, label, gender), name


def test_scan_filters_corpora(corpus_tree: Path) -> None:
    items = scan([corpus_tree], corpora=["tess", "emodb"])
    assert {it.corpus for it in items} == {"tess", "emodb"}
    assert len(items) == 5


def test_speaker_ids_are_prefixed_so_corpora_never_collide() -> None:
    a = parse_name(Path("x/03a01Fa.wav"))  # EmoDB speaker 03
    b = parse_name(Path("x/03-01-05-02-01-01-03.wav"))  # RAVDESS actor 03
    assert a is not None
    assert b is not None
    assert a.speaker != b.speaker


def test_unrecognised_names_are_none() -> None:
    for name in ("03-02-05-02-01-01-03.wav",  # RAVDESS song
                 "1001_DFA_XYZ_XX.wav", "OAF_back_bored.wav", "ZZ_a01.wav",
                 "03a01Xa.wav", "a01.wav"):
        assert parse_name(Path("root") / name) is None, name


def test_cremad_gender_from_demographics(corpus_tree: Path) -> None:
    (corpus_tree / "crema" / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
        "1091,29,Female,Asian,Not Hispanic\n")
    g = {it.speaker: it.gender for it in scan([corpus_tree], ["cremad"])}
    assert g == {"cremad:1001": "m", "cremad:1091": "f"}


@pytest.mark.parametrize(("rate", "channels", "ext"), [
    (16000, 1, "wav"), (48000, 2, "wav"), (22050, 1, "flac"), (44100, 2, "flac"), (8000, 3, "wav"),
])
def test_load_audio_resamples_and_downmixes(
    tmp_path: Path, rate: int, channels: int, ext: str
) -> None:
    p = _write(tmp_path / f"x.{ext}", rate, channels, seconds=0.75)
    x = load_audio(p)
    assert x.dtype == np.float32
    assert x.ndim == 1
    assert abs(x.size - 12000) <= 2
    assert 0.15 < float(np.sqrt(np.mean(x[1000:-1000] ** 2))) < 0.3  # level kept (sine 0.3 peak)


def test_dedupe_catches_dithered_copies_and_label_conflicts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = _tone(0.5, 16000, seed=3)
    dither = base + rng.integers(-2, 3, base.size) / 32768.0
    a = _write(tmp_path / "ravdess" / "Actor_07" / "03-01-03-01-02-01-07.wav", seed=3)
    b = tmp_path / "ravdess" / "Actor_07" / "03-01-03-01-02-02-07.wav"
    sf.write(str(b), dither, 16000)
    c = _write(tmp_path / "cremad" / "1013_WSI_DIS_XX.flac", seed=9)
    d = _write(tmp_path / "cremad" / "1013_WSI_SAD_XX.flac", seed=9)
    e = _write(tmp_path / "cremad" / "1013_IEO_SAD_XX.flac", seed=10)
    items, dropped = load_corpora([tmp_path], cache_dir=tmp_path / "cache")
    kept = {Path(it.path).name for it in items}
    assert kept == {a.name, e.name}
    assert {Path(p).name for p, _ in dropped} == {b.name, c.name, d.name}
    # The fingerprint cache is reused on a second run.
    assert (tmp_path / "cache" / "audio-fingerprints.json").is_file()
    items2, dropped2 = load_corpora([tmp_path], cache_dir=tmp_path / "cache")
    assert items2 == items
    assert dropped2 == dropped


def test_dedupe_keeps_distinct_audio_of_equal_length() -> None:
    fps = {"a": [100.0] + [0.1] * 64, "b": [100.0] + [0.2] * 64}
    items = [Item("a", "cremad", "cremad:1", "sad"), Item("b", "cremad", "cremad:1", "sad")]
    kept, dropped = dedupe(items, fps)
    assert len(kept) == 2
    assert not dropped


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        scan([tmp_path / "nope"])


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "serd-corpus.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_labels_own_recordings(corpus_tree: Path) -> None:
    calls = corpus_tree / "Desk-Calls"
    _write(calls / "2026-03-01" / "a.wav", 8000, seed=20)
    _write(calls / "b.flac", 16000, seed=21)
    # A file that happens to follow the RAVDESS scheme: the manifest's label wins.
    _write(calls / "03-01-05-02-01-01-09.wav", 16000, seed=22)
    _manifest(calls, "path,speaker,label,gender\n"
                     "2026-03-01/a.wav,agent7,Anger,F\n"
                     "b.flac,caller-12,neutral,\n"
                     "03-01-05-02-01-01-09.wav,agent7,sadness,f\n")
    items = {Path(it.path).name: it for it in scan([corpus_tree])}
    assert items["a.wav"] == Item(str(calls / "2026-03-01" / "a.wav"), "desk-calls",
                                  "desk-calls:agent7", "angry", "f", "")
    assert items["b.flac"].speaker == "desk-calls:caller-12"
    assert items["b.flac"].label == "neutral"
    assert items["03-01-05-02-01-01-09.wav"].corpus == "desk-calls"
    assert items["03-01-05-02-01-01-09.wav"].label == "sad"
    assert len([it for it in scan([corpus_tree]) if it.corpus == "ravdess"]) == 2
    assert {it.corpus for it in scan([corpus_tree], ["desk-calls"])} == {"desk-calls"}


@pytest.mark.parametrize(("text", "message"), [
    ("file,speaker,label\nx.wav,a,angry\n", "missing: path"),
    ("path,speaker,label\n", "at least one row"),
    ("path,speaker,label\nx.wav,a,grumpy\n", "line 2: unknown label 'grumpy'"),
    ("path,speaker,label\nnope.wav,a,angry\n", "line 2: no such file"),
    ("path,speaker,label\nx.wav,,angry\n", "line 2: empty speaker"),
    ("path,speaker,label,corpus\nx.wav,a,angry,ravdess\n", "corpus name 'ravdess'"),
    ("path,speaker,label,gender\nx.wav,a,angry,x\n", "gender must be"),
])
def test_bad_manifest_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    folder = tmp_path / "mine"
    _write(folder / "x.wav")
    path = _manifest(folder, text)
    with pytest.raises(ManifestError, match=message) as err:
        scan([tmp_path])
    assert str(path) in str(err.value)


def test_serd_train_reports_bad_corpus_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.__main__ import main  # noqa: PLC0415

    assert main(["--out", str(tmp_path / "o"), "cv", "--protocol", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("serd-train: error: unknown protocol 'nope'; train/config.yaml has "
                   "ravdess8, six, cross_corpus")
    pytest.importorskip("tensorflow")  # the runner sets TensorFlow's threads
    folder = tmp_path / "mine"
    _write(folder / "x.wav")
    _manifest(folder, "path,speaker,label\nx.wav,a,grumpy\n")
    args = ["--corpora", str(tmp_path), "--cache", str(tmp_path / "c"), "--out",
            str(tmp_path / "o"), "cache"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("serd-train: error: ") and "unknown label 'grumpy'" in err
    assert "\n" not in err
    args = ["--corpora", str(tmp_path), "--cache", str(tmp_path / "c"), "--out",
            str(tmp_path / "o"), "--set", "normalisation.window_centred=[c0, pitch]", "cache"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("serd-train: error: normalisation.window_centred: unknown feature "
                          "channels ['pitch']") and "\n" not in err
