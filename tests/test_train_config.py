"""serd-train's configuration: train/config.yaml + --config FILE + --set, validated into
frozen dataclasses; a bad key or value is one line naming the key."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import yaml

from serd.features import FeatureParams
from serd.gate import VadSettings
from train.augment import AugmentParams
from train.config import (
    DEFAULT_CONFIG,
    ModelConfig,
    TrainConfig,
    TrainConfigError,
    TrainingConfig,
    load_config,
    load_raw,
)
from train.corpora import CorpusError

DEFAULTS = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def test_defaults_load_as_frozen_dataclasses() -> None:
    cfg = load_config()
    assert isinstance(cfg, TrainConfig)
    assert cfg.seed == DEFAULTS["seed"]
    assert cfg.corpora_roots == tuple(DEFAULTS["corpora_roots"])
    assert cfg.model.filters == tuple(DEFAULTS["model"]["filters"])
    assert cfg.normalisation.window_centred == ("c0", "log_f0")
    assert isinstance(cfg.augment.params, AugmentParams)
    assert cfg.augment.params == AugmentParams.from_dict(DEFAULTS["augment"]["params"])
    # Code that builds windows without a configuration (train.dataset.build(aug=None))
    # gets the same recipe as serd-train.
    assert AugmentParams() == cfg.augment.params
    assert list(cfg.protocols) == list(DEFAULTS["protocols"])
    assert cfg.taxonomies["six"].taxonomy("six").labels == tuple(DEFAULTS["taxonomies"]["six"]
                                                                   ["labels"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    # The CV fold workers get the configuration pickled.
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_sections_as_dicts_are_the_yaml() -> None:
    """What cv-*.json and the card record (dataclasses.asdict) is the merged YAML itself:
    same keys, same order, same values."""
    cfg = load_config()
    for section in ("windows", "normalisation", "augment", "model", "training"):
        d = dataclasses.asdict(getattr(cfg, section))
        assert json.dumps(d) == json.dumps(DEFAULTS[section]), section
    assert json.dumps(dataclasses.asdict(cfg.protocols["ravdess8"].training)) == json.dumps(
        DEFAULTS["training"])


def test_user_file_merges_over_the_defaults(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("seed: 7\ntraining: {epochs: 25}\nmodel:\n  filters: [16, 24, 32, 48]\n"
                    "protocols:\n  six: {folds: 4}\n", encoding="utf-8")
    cfg = load_config(user)
    assert cfg.seed == 7
    assert cfg.training.epochs == 25
    assert cfg.training.patience == DEFAULTS["training"]["patience"]  # untouched keys stay
    assert cfg.model.filters == (16, 24, 32, 48)
    assert cfg.model.kernels == tuple(DEFAULTS["model"]["kernels"])
    assert cfg.protocols["six"].folds == 4
    assert cfg.protocols["six"].corpora == ("ravdess", "cremad")
    # six overrides epochs itself; ravdess8 inherits the user's 25
    six_epochs = DEFAULTS["protocols"]["six"]["training"]["epochs"]
    assert cfg.protocols["six"].training.epochs == six_epochs
    assert cfg.protocols["ravdess8"].training.epochs == 25


def test_set_scalars_lists_and_all() -> None:
    cfg = load_config(None, ["training.epochs=30", "model.filters=[48,64,96,128]",
                             "normalisation.window_centred=all", "cache_dir=/tmp/x",
                             "training.learning_rate=1e-3", "windows.train_vad=null"])
    assert cfg.training.epochs == 30
    assert cfg.model.filters == (48, 64, 96, 128)
    assert cfg.normalisation.window_centred == "all"
    assert cfg.normalisation.centred_channels(FeatureParams()) is None
    assert cfg.cache_dir == "/tmp/x"
    assert cfg.training.learning_rate == 1e-3
    assert cfg.windows.train_vad is None
    assert cfg.windows.train_vad_settings() == VadSettings()


def test_set_a_mapping_replaces_it() -> None:
    cfg = load_config(None, ["protocols={tiny: {corpora: [ravdess], taxonomy: six, folds: 2}}",
                             "final.cv_protocol=tiny"])
    assert list(cfg.protocols) == ["tiny"]
    assert cfg.protocols["tiny"].split == "speakers"
    assert cfg.protocols["tiny"].training == cfg.training


def test_options_win_and_are_validated() -> None:
    cfg = load_config(None, ["seed=3", "jobs=4"], {"seed": 5, "corpora_roots": ["/data"]})
    assert (cfg.seed, cfg.jobs, cfg.corpora_roots) == (5, 4, ("/data",))
    with pytest.raises(TrainConfigError, match=r"^jobs: must be >= 1$"):
        load_config(None, None, {"jobs": 0})


def test_integers_in_float_keys_are_kept_as_written() -> None:
    """The augmentation and VAD values enter the feature-cache keys as JSON (1 != 1.0)."""
    cfg = load_config(None, ["augment.params.p_gain=1", "windows.train_vad.threshold_db=6"])
    assert type(cfg.augment.params.p_gain) is int
    assert type(cfg.windows.train_vad_settings().threshold_db) is int


def test_window_length_is_configurable_and_reaches_both_window_kinds() -> None:
    """The card's window (evaluation, daemon) and the training windows share the length;
    a YAML integer gives the same windows as its float (both enter the cache keys)."""
    from serd.features import WindowParams  # noqa: PLC0415

    default = load_config(None, []).windows
    assert default.windows() == WindowParams()
    assert default.train_windows() == WindowParams(hop_seconds=0.25)
    three = load_config(None, ["windows.window_seconds=3"]).windows
    assert three.windows().to_dict() == {"window_seconds": 3.0, "hop_seconds": 0.5}
    assert three.train_windows().to_dict() == {"window_seconds": 3.0, "hop_seconds": 0.25}


@pytest.mark.parametrize(("sets", "message"), [
    (["training.epoch=30"], "training.epoch: unknown key; allowed here: batch_size, "
                            "class_weighting, "),
    (["model.filterz=[8]"], "model.filterz: unknown key; allowed here: dropout, filters, "),
    (["trainin.epochs=3"], "trainin: unknown key; allowed here: augment, cache_dir, "),
    (["training.epochs=-1"], "training.epochs: must be >= 1"),
    (["training.epochs=ten"], "training.epochs: expected an integer, got 'ten'"),
    (["training.epochs=2.5"], "training.epochs: expected an integer, got 2.5"),
    (["training.learning_rate=.nan"], "training.learning_rate: expected a finite number"),
    (["training.class_weighting=yes please"], "training.class_weighting: expected true or "
                                              "false"),
    (["training.select=f1"], "training.select: 'f1' is not allowed; use one of "
                             "'smooth_bacc', 'bacc', 'loss'"),
    (["training.early_stop_fraction=1"], "training.early_stop_fraction: must be between 0 "
                                         "and 1"),
    (["model.pooling=attentive"], "model.pooling: 'attentive' is not allowed; use one of "
                                  "'mean_std', 'mean_max'"),
    (["model.filters=[8, 16, 32]"], "model.kernels: has 4 entries but filters has 3"),
    (["model.pool=[2, 2, 0, 1]"], "model.pool: every entry must be >= 1"),
    (["model.filters=8"], "model.filters: expected a list of integers, got 8"),
    (["augment.copies=-1"], "augment.copies: must be >= 0"),
    (["voice.augment_copies=-1"], "voice.augment_copies: must be >= 0"),
    (["augment.params.p_noise=2"], "augment.params.p_noise: must be a probability"),
    (["augment.params.snr_db_range=[30, 8]"], "augment.params.snr_db_range: must be [low, "
                                              "high]"),
    (["augment.params.speed_range=[1.1]"], "augment.params.speed_range: expected a list of "
                                           "2 numbers"),
    (["augment.params.p_nois=1"], "augment.params.p_nois: unknown key"),
    (["windows.train_hop_seconds=0"], "windows.train_hop_seconds: must be > 0"),
    (["windows.train_hop_seconds=2.5"], "windows.train_hop_seconds: must be > 0 and <= "
                                        "window_seconds (2 s)"),
    (["windows.window_seconds=0.2"], "windows.window_seconds: must be between 0.5 and 10"),
    (["windows.train_vad.threshold=3"], "windows.train_vad.threshold: unknown key; allowed "
                                        "here: backend, "),
    (["windows.train_vad.threshold_db=-1"], "windows.train_vad.threshold_db: must be > 0 dB"),
    (["normalisation.window_centred=[c0, pitch]"],
     "normalisation.window_centred: unknown feature channels ['pitch']"),
    (["normalisation.window_centred=some"],
     "normalisation.window_centred: expected 'all' or a list of channel names such as "
     "[c0, log_f0], got 'some'"),
    (["taxonomies.six.labels=[happy, joy]"], "taxonomies.six.labels: unknown emotions ['joy']"),
    (["taxonomies.six.train_map={joy: neutral}"], "taxonomies.six.train_map: unknown emotions"),
    (["taxonomies.six.train_map={calm: surprised}"],
     "taxonomies.six.train_map: targets ['surprised'] are not labels"),
    (["protocols.six.taxonomy=seven"], "protocols.six.taxonomy: 'seven' is not under "
                                       "taxonomies; use one of six, ravdess8"),
    (["protocols.six.folds=1"], "protocols.six.folds: must be an integer >= 2"),
    (["protocols.six.split=actors"], "protocols.six.split: 'actors' is not allowed"),
    (["protocols.cross_corpus.corpora=[ravdess]"], "protocols.cross_corpus.corpora: split: "
                                                   "corpus (leave one corpus out) needs"),
    (["protocols.six={corpora: [ravdess]}"], "protocols.six.taxonomy: missing (required)"),
    (["protocols.six.training.epoch=3"], "protocols.six.training.epoch: unknown key"),
    (["protocols.six.training.epochs=0"], "protocols.six.training.epochs: must be >= 1"),
    (["protocols.six.training=60"], "protocols.six.training: expected a mapping of training "
                                    "keys"),
    (["final.training.select=auc"], "final.training.select: 'auc' is not allowed"),
    (["final.taxonomy=eight"], "final.taxonomy: 'eight' is not under taxonomies"),
    (["final.name=a/b"], "final.name: must be a file name"),
    (["corpora_roots=/data"], "corpora_roots: expected a list of strings, got '/data'"),
    (["seed.value=3"], "--set seed.value: seed is a value (1234), not a section"),
    (["seed"], "--set wants key=value, got 'seed'"),
    (["seed=[1"], "--set seed: the value '[1' is not valid YAML"),
])
def test_bad_keys_and_values_are_one_line_naming_the_key(sets: list[str], message: str) -> None:
    with pytest.raises(TrainConfigError) as err:
        load_config(None, sets)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert isinstance(err.value, CorpusError)  # serd-train prints it, exit status 2


def test_base_training_errors_name_training_not_a_protocol() -> None:
    with pytest.raises(TrainConfigError, match=r"^training\.epoch: unknown key"):
        load_config(None, ["training.epoch=3"])


def test_protocol_overrides_are_partial_and_merged() -> None:
    cfg = load_config(None, ["training.patience=5", "protocols.six.training.batch_size=32",
                             "final.training={epochs: 7}"])
    six = cfg.protocols["six"].training
    six_epochs = DEFAULTS["protocols"]["six"]["training"]["epochs"]
    assert (six.epochs, six.batch_size, six.patience) == (six_epochs, 32, 5)
    assert cfg.protocols["ravdess8"].training == cfg.training
    assert (cfg.final.training.epochs, cfg.final.training.patience) == (7, 5)
    assert isinstance(six, TrainingConfig)
    # an empty or null override is no override
    cfg = load_config(None, ["protocols.six.training=null"])
    assert cfg.protocols["six"].training == cfg.training


def test_user_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: 3\n", encoding="utf-8")
    with pytest.raises(TrainConfigError, match=r"bad\.yaml: not valid YAML at line 2"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(TrainConfigError, match="must be a mapping of keys to values"):
        load_config(bad)
    bad.write_text("model: {filterz: [8]}\n", encoding="utf-8")
    with pytest.raises(TrainConfigError, match=r"^model\.filterz: unknown key"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert load_config(empty) == load_config()


def test_dataclasses_validate_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="pool: has 1 entries but filters has 2"):
        ModelConfig(members=1, filters=(8, 8), kernels=(3, 3), pool=(2,), pooling="mean_std",
                    dropout=0.1)
    with pytest.raises(ValueError, match="epochs: must be >= 1"):
        dataclasses.replace(load_config().training, epochs=0)


def test_load_raw_is_the_merged_mapping() -> None:
    raw = load_raw(None, ["training.epochs=3"])
    assert raw["training"]["epochs"] == 3
    assert raw["model"] == DEFAULTS["model"]


def test_serd_train_prints_config_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.__main__ import main  # noqa: PLC0415

    assert main(["--out", str(tmp_path), "--set", "training.epoch=3", "cv", "--protocol",
                 "six"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("serd-train: error: training.epoch: unknown key; allowed here: ")
    assert err.count("\n") == 1
    assert main(["--out", str(tmp_path), "--jobs", "0", "cv", "--protocol", "six"]) == 2
    assert capsys.readouterr().err == "serd-train: error: jobs: must be >= 1\n"


def test_serd_train_without_the_speech_check_weights_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training's windows come from the daemon's default gate, whose confirm stage loads
    Silero's weights as it is built: their absence is one line, not a traceback, and the
    daemon's advice (vad.confirm: none) is not repeated, since training cannot take it."""
    import train.__main__ as cli  # noqa: PLC0415
    from serd.speechcheck import SpeechCheckError  # noqa: PLC0415

    def broken(argv: list[str] | None) -> int:
        raise SpeechCheckError("speech check weights /x/silero_vad_16k.npz: No such file; "
                               "reinstall serd, or set vad.confirm: none")

    monkeypatch.setattr(cli, "_main", broken)
    assert cli.main(["cv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("serd-train: error: speech check weights /x/silero_vad_16k.npz: "
                          "No such file; serd-train's windows need them")
    assert "confirm: none" not in err


@pytest.mark.parametrize("sets", [[], ["training.epochs=2", "training.min_epochs=0"],
                                  ["augment.params.p_gain=1", "windows.train_vad={}",
                                   "final.training={epochs: 7, select: bacc}"]])
def test_json_written_is_the_merged_mapping(sets: list[str]) -> None:
    """cv-*.json's ``config`` and the card's ``training`` fields (pipeline.py, via
    dataclasses.asdict) are byte for byte what the untyped dicts of the merged YAML gave."""
    from train.config import deep_merge  # noqa: PLC0415

    raw = load_raw(None, sets)
    cfg = load_config(None, sets)
    for name, p in cfg.protocols.items():
        old = deep_merge(raw["training"], raw["protocols"][name].get("training") or {})
        assert json.dumps(dataclasses.asdict(p.training)) == json.dumps(old)
    for k in ("windows", "normalisation", "augment", "model"):
        assert json.dumps(dataclasses.asdict(getattr(cfg, k))) == json.dumps(raw[k])
    old_final = deep_merge(raw["training"], raw["final"].get("training") or {})
    assert json.dumps(dict(sorted(dataclasses.asdict(cfg.final.training).items()))) == \
        json.dumps({k: old_final[k] for k in sorted(old_final)})
    assert json.dumps(dataclasses.asdict(cfg.windows)["train_vad"]) == \
        json.dumps(raw["windows"].get("train_vad"))


def test_serd_train_without_the_train_extra_is_one_line() -> None:
    """A device install (no `train` extra) gets one line saying what to install, not an
    ImportError traceback."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys\n"
            "for m in ('scipy', 'tensorflow', 'keras', 'librosa'):\n"
            "    sys.modules[m] = None  # as if not installed\n"
            "from train.__main__ import main\n"
            "raise SystemExit(main(['cv', '--protocol', 'six']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("serd-train: error: the training dependencies are not installed")
    assert "pip install -e '.[train]'" in lines[0]


def test_serd_train_help_shows_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from train.__main__ import main  # noqa: PLC0415

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "serd-train all" in out
    assert "--fresh" in out
    assert "resumes where it stopped" in out
