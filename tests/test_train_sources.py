"""Training decodes through serd's decoder, and its keys cover the code they depend on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serd import decode
from train import sources
from train.corpora import CorpusError, load_audio


def test_training_decodes_as_the_device_does(tmp_path: Path) -> None:
    """NaN/Inf become silence and samples are clipped, as ``serd --once`` reads the file."""
    x = np.sin(np.linspace(0, 200, 48000)).astype(np.float32) * 0.5
    x[100], x[200], x[300] = np.nan, np.inf, 1.7
    path = tmp_path / "odd.wav"
    sf.write(str(path), x, 48000, subtype="FLOAT")
    got = load_audio(path)
    assert np.isfinite(got).all() and np.abs(got).max() <= 1.0
    np.testing.assert_array_equal(got, decode.load(path, 16000))


def test_an_undecodable_corpus_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "03-01-05-01-01-01-01.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(CorpusError, match=r"03-01-05-01-01-01-01\.wav: not a readable audio"):
        load_audio(bad)


def test_feature_keys_cover_decoding_and_the_front_end() -> None:
    from train.dataset import FRONTEND_MODULES  # noqa: PLC0415

    names = {n for n, _ in sources.source_files(*FRONTEND_MODULES)}
    assert {"serd.decode", "serd.features", "serd.gate", "serd.windows",
            "train.augment"} <= names
    # What those import is covered too (the settings validation the gate uses).
    assert "serd.validate" in names


def test_source_hash_follows_imports_into_subpackages(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A module moved into a subfolder still counts (a glob of one folder would miss it)."""
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("VALUE = 1\n")
    (pkg / "sub" / "other.py").write_text("from . import deep\n")
    (pkg / "top.py").write_text("from fakepkg.sub.other import deep\nimport numpy\n")
    (pkg / "unused.py").write_text("X = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sources, "_PACKAGES", ("fakepkg",))
    sources.source_files.cache_clear()
    try:
        names = [n for n, _ in sources.source_files("fakepkg.top")]
        assert names == ["fakepkg", "fakepkg.sub", "fakepkg.sub.deep", "fakepkg.sub.other",
                         "fakepkg.top"]
        before = sources.source_hash(["fakepkg.top"])
        (pkg / "unused.py").write_text("X = 1\n")
        assert sources.source_hash(["fakepkg.top"]) == before
        (pkg / "sub" / "deep.py").write_text("VALUE = 2\n")
        assert sources.source_hash(["fakepkg.top"]) != before
    finally:
        sources.source_files.cache_clear()
        for name in [m for m in sys.modules if m.startswith("fakepkg")]:
            del sys.modules[name]


def test_fold_key_code_hash_covers_every_training_module_and_what_it_imports() -> None:
    pytest.importorskip("tensorflow")
    from train.cv import code_hash  # noqa: PLC0415

    root = Path(sources.__file__).parent
    names = {n for n, _ in sources.source_files(
        *(f"train.{f.stem}" for f in root.glob("*.py") if f.stem != "__init__"))}
    assert {"serd.decode", "serd.features", "serd.model", "serd.voice", "train.cv"} <= names
    assert len(code_hash()) == 64
