"""A tiny end-to-end run: fake corpus -> CV -> final int8 model that serd can load."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("tensorflow")

from serd.model import ModelSettings, load_classifier, sha256_of
from serd.windows import windows_of
from train.config import TrainConfig, load_config
from train.results import CvResult
from train.taxonomy import SIX

RATE = 16000


def _utterance(label: int, actor: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """Silence, 1.6 s of a 'voice' whose pitch and rhythm depend on the label, silence."""
    n = int(1.6 * rate)
    t = np.arange(n) / rate
    f0 = (90 + 35 * label + 3 * actor) * (1 + 0.05 * np.sin(2 * np.pi * (1 + label) * t))
    ph = 2 * np.pi * np.cumsum(f0) / rate
    v = sum(np.sin(k * ph) * (0.6 ** k if label % 2 else 1 / k) for k in range(1, 25))
    v *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * (2 + label) * t))
    v = 0.2 * v / np.max(np.abs(v)) + 0.003 * rng.standard_normal(n)
    pad = np.zeros(int(0.3 * rate))
    return np.concatenate([pad + 0.001 * rng.standard_normal(pad.size), v,
                           pad + 0.001 * rng.standard_normal(pad.size)])


@pytest.fixture(scope="module")
def fake_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    rng = np.random.default_rng(0)
    codes = {"neutral": "01", "happy": "03", "sad": "04", "angry": "05", "fearful": "06",
             "disgust": "07"}
    for actor in range(1, 9):
        for label, emo in enumerate(SIX):
            rate = 48000 if actor == 3 else RATE  # one actor at another rate
            name = f"03-01-{codes[emo]}-01-01-01-{actor:02d}.{'flac' if actor % 2 else 'wav'}"
            path = root / "ravdess" / f"Actor_{actor:02d}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), _utterance(label, actor, rng, rate), rate)
    return root


def _tiny_config(root: Path, cache: Path) -> TrainConfig:
    return load_config(None, _tiny_sets(root, cache))


def _tiny_sets(root: Path, cache: Path) -> list[str]:
    return [
        f"corpora_roots=[{root}]", f"cache_dir={cache}", "jobs=1",
        "protocols={tiny: {corpora: [ravdess], taxonomy: six, folds: 2}}",
        "final.cv_protocol=tiny",
        "augment.copies=1", "training.epochs=4", "training.patience=4",
        "training.batch_size=16", "training.early_stop_fraction=0.25",
        "training.representative_windows=64", "training.learning_rate=0.01",
        "model.filters=[8, 12]", "model.kernels=[3, 3]", "model.pool=[2, 1]",
    ]


def test_tiny_end_to_end(fake_corpus: Path, tmp_path: Path) -> None:
    from train import report  # noqa: PLC0415
    from train.pipeline import Runner  # noqa: PLC0415

    cfg = _tiny_config(fake_corpus, tmp_path / "cache")
    runner = Runner(cfg, progress=False)
    out = tmp_path / "models"
    cv = runner.run_cv("tiny", None, out)
    assert (out / "cv-tiny.json").is_file()
    assert len(cv.per_fold) == 2
    for fold in cv.per_fold:
        assert not set(fold.test_speakers) & set(fold.early_stop_speakers)
        assert fold.clean.files == 24
        assert fold.clean.agreements["agreement"].window_argmax >= 0.6
    s = cv.summary
    assert s is not None
    assert 0.0 <= s.clean.kinds["int8"].file_balanced_accuracy.mean <= 1.0
    # The JSON written is the typed result's, and reads back into the same result.
    written = (out / "cv-tiny.json").read_text()
    assert written == json.dumps(cv.to_dict(), indent=1) + "\n"
    assert json.dumps(CvResult.from_dict(json.loads(written)).to_dict(), indent=1) + "\n" \
        == written
    report.confusion_png(cv, out / "confusion-tiny.png")
    assert (out / "confusion-tiny.png").stat().st_size > 1000

    # Each fold's result was recorded in the cache: the same CV again (an interrupted
    # `serd-train all` run again) reuses them instead of training, with the same figures.
    assert cv.folds_reused == []
    assert len(list((tmp_path / "cache" / "folds").glob("tiny-fold*.json"))) == 2
    resumed = Runner(cfg, progress=False).run_cv("tiny", None, None)
    assert resumed.folds_reused == [0, 1]
    assert resumed.per_fold == cv.per_fold
    assert resumed.summary == cv.summary
    # Another setting is another fold: nothing is reused.
    other = Runner(load_config(None, [*_tiny_sets(fake_corpus, tmp_path / "cache"),
                                      "training.epochs=3"]), progress=False)
    assert other.fold_record("tiny", 0) != runner.fold_record("tiny", 0)
    assert not other.fold_record("tiny", 0).exists()

    # The folds above ran in worker processes (parallel_folds: 2, one thread each); a
    # fold run in this process gives the same model and the same scores.
    assert cfg.parallel_folds == 2
    again = runner.run_fold("tiny", 1)
    first = cv.per_fold[1]
    assert again.history == first.history
    assert again.clean.kinds["int8"] == first.clean.kinds["int8"]

    card = runner.run_final(out, {"tiny": cv}, "pytest")
    tfl = out / "serd-emotion-6.tflite"
    assert tfl.is_file()
    assert tfl.stat().st_size < 250_000
    clf = load_classifier(ModelSettings(path=str(tfl)))  # serd accepts model + card
    assert clf.labels == SIX
    data = json.loads((out / "serd-emotion-6.card.json").read_text())
    assert data["training"]["speakers"] == 8
    assert data["training"]["files"] == 48
    # The gate as it ran, every key (the daemon's defaults included), and the voice cap.
    from serd.gate import VadSettings  # noqa: PLC0415
    assert data["training"]["eval_vad"] == json.loads(json.dumps(asdict(VadSettings())))
    assert data["training"]["train_vad_effective"]["confirm"] == VadSettings().confirm
    assert data["training"]["voice_max_files_per_corpus"] == 0
    # The head was also fitted on an augmented copy of each training file (the yaml's
    # default), whose statistics are cached beside the evaluation renderings'.
    assert data["training"]["voice_augment_copies"] == 1
    assert list((tmp_path / "cache").glob("voice-aug1-h*.npz"))
    assert runner.sets.voice_train_variants()[-1].name.startswith("aug1-")
    assert "tiny" in data["metrics"]
    assert card.sha256 == data["model_file"]["sha256"]

    # The shipped-model path: raw daemon windows in, probabilities out.
    from train.corpora import load_audio  # noqa: PLC0415

    windows = []
    for it in runner.items[:24]:
        windows += windows_of(load_audio(it.path), keep_audio=True)
    assert clf.voice is not None  # the voice branch is on by default (train/config.yaml)
    q = np.stack([clf(w.features) for w in windows])
    assert q.shape == (len(windows), 6)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)

    report.render(out, cfg, "serd-emotion-6")
    assert "serd-emotion-6" in (out / "README.md").read_text()


def test_all_runs_every_fold_and_the_model_side_by_side(fake_corpus: Path,
                                                         tmp_path: Path) -> None:
    """``serd-train all``: the folds of every protocol share one pool of workers and the
    shipped model trains in a process of its own; the results are those of the steps run
    one at a time (the same thread counts), and the card gets every protocol's metrics."""
    from train.__main__ import main  # noqa: PLC0415
    from train.pipeline import Runner  # noqa: PLC0415

    cache, out = tmp_path / "cache", tmp_path / "models"
    protocols = ("protocols={a: {corpora: [ravdess], taxonomy: six, folds: 2}, "
                 "b: {corpora: [ravdess], taxonomy: six, folds: 2, training: {epochs: 3}}}")
    sets = [s for s in _tiny_sets(fake_corpus, cache) if not s.startswith("protocols=")]
    sets = [*sets, protocols, "final.cv_protocol=a"]
    args = ["--quiet", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert main([*args, "all"]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert timings["folds_reused"] == 0
    assert "one pool" in timings["schedule"]
    card = json.loads((out / "serd-emotion-6.card.json").read_text())
    assert set(card["metrics"]) == {"a", "b"}
    assert card["model_file"]["sha256"] == sha256_of(out / "serd-emotion-6.tflite")
    for name in ("a", "b"):
        cv = json.loads((out / f"cv-{name}.json").read_text())
        assert cv["folds_run"] == [0, 1]
        assert card["metrics"][name]["protocol"] == name
        assert card["metrics"][name]["fold_test_speakers"] == [
            f["test_speakers"] for f in cv["per_fold"]]
        assert (out / f"confusion-{name}.png").is_file()
    # The model trained alongside the folds is the one `serd-train fit` trains alone.
    cfg = load_config(None, sets)
    alone = Runner(cfg, progress=False).run_final(tmp_path / "alone", {}, "pytest")
    assert alone.sha256 == card["model_file"]["sha256"]
    # Each fold is the one `serd-train cv` gives: its record is reused as it stands.
    again = Runner(cfg, progress=False).run_cv("b", None, None)
    assert again.folds_reused == [0, 1]
    assert again.to_dict()["per_fold"] == json.loads((out / "cv-b.json").read_text())["per_fold"]


def test_window_length_travels_from_config_to_card_to_daemon(fake_corpus: Path,
                                                              tmp_path: Path) -> None:
    """``windows.window_seconds`` sets the model's input; the card records it and serd's
    windowing follows the card, so a 1 s model classifies 1 s windows."""
    from serd.windows import Windower  # noqa: PLC0415
    from train.pipeline import Runner  # noqa: PLC0415

    base = _tiny_config(fake_corpus, tmp_path / "cache")
    cfg = load_config(None, [f"corpora_roots=[{fake_corpus}]", f"cache_dir={tmp_path / 'c'}",
                             "jobs=1", "windows.window_seconds=1", "final.cv_protocol=six",
                             "augment.copies=0", "training.epochs=1", "training.min_epochs=1",
                             "training.representative_windows=16",
                             "model.filters=[8, 12]", "model.kernels=[3, 3]",
                             "model.pool=[2, 1]"])
    assert base.windows.window_seconds == 2.0
    out = tmp_path / "models"
    Runner(cfg, progress=False).run_final(out, {}, "pytest")
    clf = load_classifier(ModelSettings(path=str(out / "serd-emotion-6.tflite")))
    assert clf.card.windows.window_seconds == 1.0
    assert clf.card.windows.hop_seconds == 0.5
    windower = Windower(clf.card.features, clf.card.windows)
    assert windower.win_frames == 100
    from train.corpora import load_audio  # noqa: PLC0415

    wins = windows_of(load_audio(str(next(fake_corpus.rglob("*.wav")))), clf.card.features,
                      clf.card.windows, keep_audio=True)
    assert wins and all(w.features.shape == (100, 42) for w in wins)
    assert clf(wins[0].features).shape == (6,)


def test_feature_cache_is_reused(fake_corpus: Path, tmp_path: Path) -> None:
    from serd.features import WindowParams  # noqa: PLC0415
    from train.corpora import scan  # noqa: PLC0415
    from train.dataset import Variant, build  # noqa: PLC0415

    items = scan([fake_corpus])[:6]
    v = Variant("augment", 1, WindowParams(hop_seconds=0.25), "float16")
    a = build(items, v, seed=1, cache_dir=tmp_path, jobs=1, progress=False)
    files = list(tmp_path.glob("windows-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = build(items, v, seed=1, cache_dir=tmp_path, jobs=1, progress=False)
    assert files[0].stat().st_mtime_ns == mtime
    assert np.array_equal(a.x, b.x)
    assert np.array_equal(a.file, b.file)
    assert a.x.dtype == np.float16
    assert a.x.shape[1:] == (200, 42)
    c = build(items, v, seed=2, cache_dir=tmp_path, jobs=1, progress=False)  # new seed: new set
    assert len(list(tmp_path.glob("windows-*.npz"))) == 2
    assert c.x.shape != a.x.shape or not np.array_equal(c.x, a.x)


def _blas_threads(_: int) -> int:
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
               default=1)


def test_extraction_workers_use_one_blas_thread(fake_corpus: Path) -> None:
    """Two workers with a BLAS thread per core each ran extraction 3.6x slower on 2 cores
    (train/dataset.py); with one each, the pool and a single process give the same bits."""
    from serd.features import WindowParams  # noqa: PLC0415
    from train.corpora import scan  # noqa: PLC0415
    from train.dataset import Variant, build, extraction_pool  # noqa: PLC0415

    with extraction_pool(2) as pool:
        assert pool.map(_blas_threads, range(4)) == [1, 1, 1, 1]
    items = scan([fake_corpus])[:40]  # more than 32 files: build() uses its pool
    v = Variant("augment", 1, WindowParams(hop_seconds=0.25), "float16")
    pooled = build(items, v, seed=1, cache_dir=None, jobs=2, progress=False)
    serial = build(items, v, seed=1, cache_dir=None, jobs=1, progress=False)
    assert len(pooled) > 0
    assert np.array_equal(pooled.x, serial.x)
    assert np.array_equal(pooled.file, serial.file)


def _sigterm_is_default(_: int) -> bool:
    import signal  # noqa: PLC0415

    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_extraction_workers_die_on_sigterm_whatever_serd_train_catches() -> None:
    """serd-train catches SIGTERM to clean up (train/__main__.py); a forked extraction
    worker that inherited that handler ran Python cleanup when Pool.terminate sent it
    SIGTERM, blocked on the task queue's lock, and `serd-train all` hung after its first
    corpus.  The workers' initialiser gives SIGTERM back its default action."""
    import signal  # noqa: PLC0415

    from train.__main__ import _exit_on_sigterm  # noqa: PLC0415
    from train.dataset import extraction_pool  # noqa: PLC0415

    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with extraction_pool(2) as pool:
            assert pool.map(_sigterm_is_default, range(4)) == [True] * 4
            # The handler is the parent's again; its workers were forked without it.
            assert signal.getsignal(signal.SIGTERM) is _exit_on_sigterm
            pool.terminate()  # what an error on the way out does: the workers just end
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_worker_still_starting_dies_on_terminate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race behind a hung CI run: Pool.terminate's SIGTERM reaching a worker forked
    with serd-train's handler before its initialiser reset it.  With the initialiser
    held back, every worker is still starting when the pool is terminated; forked while
    SIGTERM has its default action, each is killed by the signal (it does not run the
    handler, exit 1, or hang on the queue's lock)."""
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415

    import train.dataset as ds  # noqa: PLC0415
    from train.__main__ import _exit_on_sigterm  # noqa: PLC0415

    reset = ds._one_blas_thread

    def slow_start() -> None:
        time.sleep(2.0)
        reset()

    monkeypatch.setattr(ds, "_one_blas_thread", slow_start)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with ds.extraction_pool(2) as pool:
            workers = list(pool._pool)  # type: ignore[attr-defined]
            time.sleep(0.3)
            pool.terminate()
        assert [w.exitcode for w in workers] == [-signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_cache_key_follows_content_not_mtime(fake_corpus: Path, tmp_path: Path) -> None:
    """A corpus restored or re-mounted in place (new mtimes, same bytes) keeps its cache;
    a changed file does not."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from serd.features import FeatureParams  # noqa: PLC0415
    from serd.gate import VadSettings  # noqa: PLC0415
    from train.augment import AugmentParams  # noqa: PLC0415
    from train.corpora import scan  # noqa: PLC0415
    from train.dataset import Variant, cache_key  # noqa: PLC0415

    root = tmp_path / "corpus"
    shutil.copytree(fake_corpus, root)
    items = scan([root])[:3]

    def key() -> str:
        return cache_key(items, Variant("clean"), aug=AugmentParams(), seed=1,
                         features=FeatureParams(), vad=VadSettings())

    before = key()
    for it in items:
        st = os.stat(it.path)
        os.utime(it.path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_600_000_000_000))
    assert key() == before
    path = Path(items[0].path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, new content
    path.write_bytes(bytes(data))
    assert key() != before


def test_cache_key_follows_the_gate_s_weights(fake_corpus: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A refitted cough head (same settings, same code) opens other segments: new key."""
    import shutil  # noqa: PLC0415

    import train.dataset as ds  # noqa: PLC0415
    from serd.features import FeatureParams  # noqa: PLC0415
    from serd.gate import VadSettings  # noqa: PLC0415
    from train.augment import AugmentParams  # noqa: PLC0415
    from train.corpora import scan  # noqa: PLC0415

    items = scan([fake_corpus])[:2]

    def key() -> str:
        return ds.cache_key(items, ds.Variant("clean"), aug=AugmentParams(), seed=1,
                            features=FeatureParams(), vad=VadSettings())

    before = key()
    head = tmp_path / "cough_check.npz"
    shutil.copy(ds.COUGH_WEIGHTS, head)
    monkeypatch.setattr(ds, "COUGH_WEIGHTS", head)
    assert key() == before
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    assert key() != before


def test_ensure_cached_writes_once_and_build_reads_it(fake_corpus: Path, tmp_path: Path) -> None:
    """CV folds in worker processes: the parent only makes sure the cache is complete."""
    from serd.features import WindowParams  # noqa: PLC0415
    from train.corpora import scan  # noqa: PLC0415
    from train.dataset import Variant, build, ensure_cached  # noqa: PLC0415

    items = scan([fake_corpus])[:4]
    v = Variant("clean", 0, WindowParams(), "float32")
    path = ensure_cached(items, v, cache_dir=tmp_path, jobs=1, progress=False)
    assert path.is_file()
    assert list(tmp_path.glob("windows-*.npz")) == [path]
    mtime = path.stat().st_mtime_ns
    assert ensure_cached(items, v, cache_dir=tmp_path, jobs=1, progress=False) == path
    ws = build(items, v, cache_dir=tmp_path, jobs=1, progress=False)
    assert path.stat().st_mtime_ns == mtime  # neither call extracted again
    assert len(ws) > 0


def test_cache_prune_deletes_only_stale_window_files(fake_corpus: Path, tmp_path: Path) -> None:
    """``serd-train cache --prune``: after a corpus or setting change the old window files
    (about 1 GB per configuration on the real corpora) would otherwise stay for ever."""
    from train.__main__ import main  # noqa: PLC0415

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / "windows-clean-h0.5-0123456789abcdef0123.npz"
    stale.write_bytes(b"old")
    other = cache / "notes.txt"  # not a window file: never touched
    other.write_text("mine")
    (cache / "folds").mkdir()
    old_fold = cache / "folds" / "tiny-fold0-0123456789abcdef01234567.json"
    old_fold.write_text("{}")
    args = ["--quiet", "--corpora", str(fake_corpus), "--cache", str(cache), "--jobs", "1",
            "--set", "protocols={tiny: {corpora: [ravdess], taxonomy: six, folds: 2}}",
            "--set", "augment.copies=1"]
    assert main([*args, "cache"]) == 0
    current = set(cache.glob("windows-*.npz")) - {stale}
    assert len(current) == 4  # clean + 1 augmented (training), clean + telephone (evaluation)
    assert main([*args, "cache", "--prune"]) == 0
    assert set(cache.glob("windows-*.npz")) == current
    assert not old_fold.exists()
    assert other.read_text() == "mine"


def test_without_the_voice_branch_the_model_is_the_cnn_alone(fake_corpus: Path,
                                                               tmp_path: Path) -> None:
    """``voice.enabled: false`` (as the models before the voice branch): no head file, no
    voice section on the card, and the CV reports the CNN alone."""
    from train.pipeline import Runner  # noqa: PLC0415

    cfg = load_config(None, [f"corpora_roots=[{fake_corpus}]", f"cache_dir={tmp_path / 'c'}",
                             "jobs=1", "parallel_folds=1", "voice.enabled=false",
                             "augment.copies=0", "training.epochs=1", "training.min_epochs=1",
                             "training.representative_windows=16",
                             "model.filters=[8, 12]", "model.kernels=[3, 3]",
                             "model.pool=[2, 1]",
                             "protocols={t: {corpora: [ravdess], taxonomy: six, folds: 2}}"])
    runner = Runner(cfg, progress=False)
    cv = runner.run_cv("t", [0], None)
    assert "clean.int8.file.balanced_accuracy" in cv.to_dict()["summary"]
    assert not any(k.startswith("clean.fused") for k in cv.to_dict()["summary"])
    out = tmp_path / "models"
    runner.run_final(out, {"t": cv}, "pytest")
    clf = load_classifier(ModelSettings(path=str(out / "serd-emotion-6.tflite")))
    assert clf.voice is None and not clf.card.voice
    assert not (out / "serd-emotion-6.voice.npz").exists()
