"""bench.gate --coverage over corpora with a serd-corpus.csv manifest (docs/corpora.md),
beside cremad/ and ravdess/ found by their file names, from several --corpora folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.gate import corpus_files, emotion, main
from bench.gate_sounds import RATE, sound

DATA = Path(__file__).resolve().parent / "data"


def test_manifest_corpora_and_named_corpora_from_two_folders(tmp_path: Path) -> None:
    named = tmp_path / "named"
    (named / "cremad").mkdir(parents=True)
    clip = sorted(DATA.glob("*.flac"))[0]
    shutil.copy(clip, named / "cremad" / clip.name)
    added = tmp_path / "added"
    (added / "mine" / "Angry").mkdir(parents=True)
    speech, _ = sf.read(clip, dtype="float32")
    sf.write(added / "mine" / "Angry" / "a1.wav", speech, RATE)
    sf.write(added / "mine" / "Angry" / "a2.wav", sound("room", 1.0, -60.0), RATE)
    (added / "mine" / "serd-corpus.csv").write_text(
        "path,speaker,label,corpus\n"
        "Angry/a1.wav,s1,angry,mine\n"
        "Angry/a2.wav,s2,sad,mine\n"
        ",s3,neutral,mine\n")  # a row without a path is skipped
    files = corpus_files([named, added])
    assert sorted(files) == ["cremad", "mine"]
    assert [p.name for p in files["mine"]] == ["a1.wav", "a2.wav"]
    assert emotion("mine", files["mine"][1]) == "sad"
    out = tmp_path / "cov.json"
    assert main(["--corpora", str(named), "--corpora", str(added), "--coverage",
                 "--out", str(out)]) == 0
    cov = json.loads(out.read_text())["coverage"]
    assert cov["cremad"]["with_speech"] == 1
    # The room tone has no speech: the manifest's clips are counted one by one.
    assert cov["mine"]["clips"] == 2
    assert cov["mine"]["missed"] == ["a2.wav"]
    assert set(cov["mine"]["by_emotion"]) == {"angry", "sad"}
    assert np.isclose(cov["mine"]["coverage"], 0.5)
