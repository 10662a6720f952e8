"""The voice branch: its mel front-end against librosa, golden values of the trunk, the
window audio it reads, the head, the fusion, and the checks at load."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_gate_windows import call_like, noise, tone

from serd.decode import load
from serd.model import (
    ModelError,
    ModelSettings,
    card_path_for,
    fingerprint_signal,
    load_classifier,
    sha256_of,
    voice_head_path,
)
from serd.pipeline import Pipeline
from serd.voice import (
    DEFAULT_LSTM,
    DEFAULT_TRUNK,
    VOICE_VERSION,
    VoiceCard,
    VoiceError,
    VoiceHead,
    VoiceParams,
    VoiceStream,
    VoiceTrunk,
    fuse,
    level_gain,
    voice_fingerprint,
    voice_mel,
)
from serd.windows import Window, Windower, windows_of
from train.voice import save_head

# The trunk's outputs on serd's fingerprint chirp (models/voice-trunk.npz, float16 weights
# computed in float32): a change in the mel, the LSTM or the weights moves them.
GOLDEN_TRUNK = [-0.0785, -0.017, 0.0654, 0.0893, -0.273, -0.3035, 0.0396, -0.2038,
                0.1887, -0.1835, -0.1808, 0.0409, -0.0045, 0.0867, 0.0048, -0.1469]
GOLDEN_MEL_FRAME_10 = [3.19026, 13.11426, 2.03718, 0.00343, 0.44229, 1.53808]
TRUNK_SHA256 = "6b71801a3139900d952d8851b534248aecb5377f5dc85084b3cfd16209141686"


@pytest.fixture(scope="module")
def trunk() -> VoiceTrunk:
    return VoiceTrunk()


@pytest.fixture(scope="module")
def lite_trunk() -> VoiceTrunk:
    """The trunk run by the LiteRT LSTM (int8 weights) that the shipped card names."""
    return VoiceTrunk(lstm=DEFAULT_LSTM)


@pytest.fixture(scope="module", params=["numpy", "litert"])
def any_trunk(request: pytest.FixtureRequest, trunk: VoiceTrunk,
              lite_trunk: VoiceTrunk) -> VoiceTrunk:
    return trunk if request.param == "numpy" else lite_trunk


def long_call(data_dir: Path) -> np.ndarray:
    """Two long utterances (clips back to back) between pauses: many windows each, so the
    windower forgets audio that no later window needs while the segment goes on."""
    a = load(data_dir / "1001_IEO_ANG_HI.flac", 16000)
    b = load(data_dir / "1091_TIE_SAD_XX.flac", 16000)
    return np.concatenate([noise(1.0), tone(6.3) + noise(6.3, seed=3), a, noise(1.5, seed=1),
                           b, tone(4.1) + noise(4.1, seed=4), noise(1.0, seed=2)])


def test_mel_matches_librosa(data_dir: Path) -> None:
    librosa = pytest.importorskip("librosa")
    from train.corpora import load_audio  # noqa: PLC0415

    clip = load_audio(str(data_dir / "1001_IEO_ANG_HI.flac"))
    for x in (np.resize(clip, 32240), clip[:7777], np.zeros(3200, np.float32)):
        ours = voice_mel(x)
        ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160,
                                             n_mels=40, center=False).T
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * max(1.0, ref.max()))
    assert voice_mel(np.resize(clip, 32240)).shape == (200, 40)  # serd MFCC frames


def test_golden_values(trunk: VoiceTrunk) -> None:
    x = fingerprint_signal(16000)
    np.testing.assert_allclose(voice_mel(x)[10, :6], GOLDEN_MEL_FRAME_10, rtol=1e-4, atol=1e-5)
    assert trunk.sha256 == TRUNK_SHA256
    np.testing.assert_allclose(voice_fingerprint(trunk, x), GOLDEN_TRUNK, atol=2e-4)
    out = trunk(x)
    assert out.shape == (512,) and out.dtype == np.float32
    assert (out[256:] >= 0).all()  # standard deviations


def test_running_in_pieces_equals_one_run(any_trunk: VoiceTrunk, data_dir: Path) -> None:
    from train.corpora import load_audio  # noqa: PLC0415

    trunk = any_trunk
    mel = voice_mel(load_audio(str(data_dir / "1091_TIE_ANG_XX.flac"))[:40000])
    whole = trunk.run(mel, trunk.zero_state())
    state = trunk.zero_state()
    parts = [trunk.run(mel[a:b], state) for a, b in ((0, 1), (1, 57), (57, 57), (57, len(mel)))]
    if trunk.lite is None:
        np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    else:  # one invoke per frame whatever the pieces: the same bits
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_stream_first_window_is_a_fresh_run(any_trunk: VoiceTrunk, data_dir: Path) -> None:
    """A segment's first window sees the LSTM from a zero state and the segment's gain set
    from that window: the same as running the trunk on the window alone.  Later windows
    carry the state, so they differ from a fresh run."""
    trunk = any_trunk
    ws = windows_of(long_call(data_dir), keep_audio=True)
    stream = VoiceStream(trunk)
    got = [stream(w) for w in ws]
    firsts = [i for i, w in enumerate(ws) if i == 0 or ws[i - 1].segment != w.segment]
    for i in firsts:
        np.testing.assert_allclose(got[i], trunk(ws[i].audio), atol=1e-5)
    later = [i for i in range(len(ws)) if i not in firsts]
    assert any(np.abs(got[i] - trunk(ws[i].audio)).max() > 1e-3 for i in later)
    stream.reset()
    np.testing.assert_allclose(stream(ws[0]), got[0], atol=1e-6)


def test_the_litert_lstm_is_the_numpy_lstm_within_int8_error(
        trunk: VoiceTrunk, lite_trunk: VoiceTrunk, data_dir: Path) -> None:
    """The LiteRT LSTM's int8 weights and per-frame quantised inputs move layer 2's outputs
    (in -1..1) by a few thousandths on average, and the window statistics the head reads
    by a few hundredths at most; docs/performance.md has what that does to the fused
    probabilities."""
    for name in ("1091_TIE_ANG_XX.flac", "1001_IEO_SAD_HI.flac"):
        x = load(data_dir / name, 16000)
        mel = voice_mel(x) * level_gain(x)
        ref = trunk.run(mel, trunk.zero_state())
        got = lite_trunk.run(mel, lite_trunk.zero_state())
        assert got.shape == ref.shape and got.dtype == np.float32
        err = np.abs(got - ref)
        assert err.mean() < 0.01 and err.max() < 0.25, (err.mean(), err.max())
        stats_err = np.abs(lite_trunk(x) - trunk(x))
        assert stats_err.max() < 0.05, stats_err.max()
    assert lite_trunk.lite is not None and trunk.lite is None
    assert not lite_trunk._layers  # no second copy of the weights in numpy


def test_windows_carry_their_audio(data_dir: Path) -> None:
    x = long_call(data_dir)
    plain = windows_of(x)
    ws = windows_of(x, keep_audio=True)
    per_segment = np.bincount([w.segment for w in ws])
    assert len(ws) == len(plain) and len(per_segment) >= 2 and per_segment.max() >= 8
    for w, p in zip(ws, plain, strict=True):
        np.testing.assert_array_equal(w.features, p.features)
        assert p.audio is None
        assert w.audio is not None
        np.testing.assert_array_equal(w.audio, x[w.start_sample : w.end_sample])


@pytest.mark.parametrize("chunk", [1, 333, 4096, 16000])
def test_window_audio_does_not_depend_on_chunking(data_dir: Path, chunk: int) -> None:
    x = long_call(data_dir)
    ref = windows_of(x, keep_audio=True)
    w = Windower(keep_audio=True)
    got = []
    for i in range(0, x.size, chunk):
        got += [it for it in w(x[i : i + chunk]) if isinstance(it, Window)]
    got += [it for it in w.flush() if isinstance(it, Window)]
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        assert (a.start_sample, a.end_sample) == (b.start_sample, b.end_sample)
        np.testing.assert_array_equal(a.audio, b.audio)


def _head(n_labels: int = 6, seed: int = 0) -> VoiceHead:
    rng = np.random.default_rng(seed)
    return VoiceHead(rng.normal(size=512).astype(np.float32),
                     rng.uniform(0.5, 2, 512).astype(np.float32),
                     rng.normal(scale=0.05, size=(n_labels, 512)).astype(np.float32),
                     rng.normal(size=n_labels).astype(np.float32))


def test_head_round_trip_and_shapes(tmp_path: Path) -> None:
    head = _head()
    path = tmp_path / "h.npz"
    save_head(head, path)
    back = VoiceHead.load(path, 6, 512)
    x = np.random.default_rng(1).normal(size=(3, 512)).astype(np.float32)
    np.testing.assert_array_equal(head(x), back(x))
    np.testing.assert_allclose(back(x).sum(1), 1.0, rtol=1e-5)
    with pytest.raises(VoiceError, match="shape"):
        VoiceHead.load(path, 8, 512)
    with pytest.raises(VoiceError, match="missing"):
        VoiceHead.load(tmp_path / "none.npz", 6, 512)


def test_fuse() -> None:
    cnn = np.array([0.7, 0.3, 0.0], np.float32)  # int8 probabilities can be exactly 0
    voice = np.array([0.05, 0.25, 0.7], np.float32)
    np.testing.assert_allclose(fuse(cnn, voice, 1.0), [0.7, 0.3, 1e-6], atol=1e-5)
    np.testing.assert_allclose(fuse(cnn, voice, 0.0), voice, rtol=1e-5)
    both = fuse(cnn, voice, 0.5)
    assert both.sum() == pytest.approx(1.0)
    assert both.argmax() == 1  # sqrt(.3 * .25) > sqrt(.7 * .05)
    assert both[2] > 0  # a zero from one side dampens, it does not veto


def _voice_model(model_path: Path, tmp_path: Path) -> Path:
    """The shipped model with a voice branch beside it (a random head), card updated."""
    dst = tmp_path / "v.tflite"
    shutil.copy(model_path, dst)
    card = json.loads(card_path_for(model_path).read_text())
    head = voice_head_path(dst)
    save_head(_head(len(card["labels"])), head)
    trunk = VoiceTrunk()
    card["voice"] = {"version": VOICE_VERSION, "params": VoiceParams().to_dict(),
                     "trunk_sha256": trunk.sha256,
                     "fingerprint": voice_fingerprint(trunk, fingerprint_signal(16000)),
                     "head_file": head.name, "head_sha256": sha256_of(head), "cnn_weight": 0.5}
    card_path_for(dst).write_text(json.dumps(card))
    return dst


def test_a_voice_model_fuses_in_the_pipeline(model_path: Path, tmp_path: Path,
                                             data_dir: Path) -> None:
    clf = load_classifier(ModelSettings(path=str(_voice_model(model_path, tmp_path))))
    assert clf.voice is not None
    x = call_like(data_dir)
    pipe = Pipeline(clf)
    decisions = pipe(x) + pipe.flush()
    wins = windows_of(x, keep_audio=True)
    got = [d for d in decisions if d.type == "window"]
    assert len(got) == len(wins)
    stream = clf.voice.stream()
    for d, w in zip(got, wins, strict=True):
        want = fuse(clf(w.features), clf.voice.head(stream(w)), 0.5)
        np.testing.assert_allclose(d.raw_probs, want, atol=1e-4)
    # Chunked as a microphone delivers it: the same windows, the same fused probabilities.
    pipe2 = Pipeline(clf)
    chunked = [d for i in range(0, x.size, 800) for d in pipe2(x[i : i + 800])]
    chunked += pipe2.flush()
    assert [d.raw_probs for d in chunked if d.type == "window"] == [d.raw_probs for d in got]
    with pytest.raises(ValueError, match="audio"):
        stream(windows_of(x)[0])


def test_the_classifier_owns_the_fusion_for_the_pipeline_and_for_training(
        model_path: Path, tmp_path: Path, data_dir: Path) -> None:
    """The daemon classifies window by window through ``Classifier.stream()``; training's
    evaluation fuses whole batches of cached statistics through ``Classifier.fused``:
    the same numbers, and the card's voice section is typed and round-trips."""
    model = _voice_model(model_path, tmp_path)
    clf = load_classifier(ModelSettings(path=str(model)))
    assert clf.voice is not None and clf.needs_audio
    section = json.loads(card_path_for(model).read_text())["voice"]
    assert clf.card.voice == VoiceCard.from_dict(section)
    assert clf.card.voice.to_dict() == section
    wins = windows_of(call_like(data_dir), keep_audio=True)
    stream = clf.stream()
    per_window = np.stack([stream(w) for w in wins])
    voice = VoiceStream(clf.voice.trunk)
    stats = np.stack([voice(w) for w in wins])
    cnn = np.stack([clf(w.features) for w in wins])
    np.testing.assert_allclose(clf.fused(cnn, stats), per_window, atol=1e-6)
    assert not np.allclose(per_window, cnn, atol=1e-3)  # the branch does count
    stream.reset()  # a new stream: the same windows give the same probabilities
    np.testing.assert_array_equal(np.stack([stream(w) for w in wins]), per_window)
    alone = load_classifier(ModelSettings(path=str(model), voice=False))
    assert not alone.needs_audio
    np.testing.assert_array_equal(alone.stream()(wins[0]), alone(wins[0].features))


@pytest.mark.parametrize(("change", "message"), [
    ("head", "voice head .* does not match"),
    ("no_head", "voice head .* is missing"),
    ("trunk", "voice trunk .* is not the one"),
    ("version", "voice branch version 99"),
    ("fingerprint", "fingerprint mismatch"),
    ("section", "voice section is invalid"),
    ("truncated_trunk", "voice trunk .* is not readable"),
])
def test_a_bad_voice_branch_is_one_clear_error(model_path: Path, tmp_path: Path,
                                               change: str, message: str) -> None:
    model = _voice_model(model_path, tmp_path)
    cp = card_path_for(model)
    card = json.loads(cp.read_text())
    if change == "head":
        save_head(_head(seed=5), voice_head_path(model))
    elif change == "no_head":
        voice_head_path(model).unlink()
    elif change == "trunk":  # another trunk beside the model takes precedence
        shutil.copy(DEFAULT_TRUNK, model.with_name(DEFAULT_TRUNK.name))
        with np.load(DEFAULT_TRUNK) as z:
            w = {k: z[k] for k in z.files}
        w["bias_ih_l0"] = w["bias_ih_l0"] + np.float16(0.01)
        np.savez(model.with_name(DEFAULT_TRUNK.name), **w)
    elif change == "truncated_trunk":  # a damaged copy beside the model
        model.with_name(DEFAULT_TRUNK.name).write_bytes(DEFAULT_TRUNK.read_bytes()[:5000])
    elif change == "version":
        card["voice"]["version"] = 99
    elif change == "fingerprint":
        card["voice"]["fingerprint"] = [v + 0.1 for v in card["voice"]["fingerprint"]]
    else:
        del card["voice"]["head_sha256"]
    cp.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message) as info:
        load_classifier(ModelSettings(path=str(model)))
    assert "\n" not in str(info.value)


def _shipped_copy(model_path: Path, tmp_path: Path) -> Path:
    """The model, its card and its head in a folder of their own (the trunk and LSTM stay
    in serd's models, where the loader finds them unless a copy lies beside the model)."""
    for src in (model_path, card_path_for(model_path), voice_head_path(model_path)):
        shutil.copy(src, tmp_path / src.name)
    return tmp_path / model_path.name


def test_the_shipped_model_runs_the_litert_lstm_whatever_the_chunking(
        model_path: Path, data_dir: Path) -> None:
    """Streaming invariance with the shipped branch: the daemon's blocks of any size give
    the same windows and the same fused probabilities, bit for bit, as one call."""
    clf = load_classifier(ModelSettings(path=str(model_path)))
    if clf.voice is None or clf.voice.trunk.lite is None:
        pytest.skip("this model's voice branch runs without the LiteRT LSTM")
    assert clf.card.voice is not None
    assert clf.voice.trunk.lite.sha256 == clf.card.voice.lstm_sha256
    x = long_call(data_dir)
    whole = Pipeline(clf)
    ref = [d.raw_probs for d in whole(x) + whole.flush() if d.type == "window"]
    assert len(ref) >= 10
    for chunk in (160, 800, 4096):
        pipe = Pipeline(clf)
        got = [d for i in range(0, x.size, chunk) for d in pipe(x[i : i + chunk])]
        got += pipe.flush()
        assert [d.raw_probs for d in got if d.type == "window"] == ref


@pytest.mark.parametrize(("change", "message"), [
    ("missing", "voice LSTM .*nothere.tflite does not exist"),
    ("other", "voice LSTM .* is not the one"),
    ("not_an_lstm", "voice LSTM .* has the wrong inputs or outputs"),
    ("truncated", "voice LSTM .* cannot be loaded"),
    ("path", "lstm_file .* is not a file name"),
])
def test_a_bad_voice_lstm_is_one_clear_error(model_path: Path, tmp_path: Path,
                                             change: str, message: str) -> None:
    model = _shipped_copy(model_path, tmp_path)
    cp = card_path_for(model)
    card = json.loads(cp.read_text())
    if not card.get("voice", {}).get("lstm_file"):
        pytest.skip("this model's voice branch runs without the LiteRT LSTM")
    beside = model.with_name(card["voice"]["lstm_file"])  # found before serd's own
    if change == "missing":
        card["voice"]["lstm_file"] = "nothere.tflite"
    elif change == "other":
        beside.write_bytes(DEFAULT_LSTM.read_bytes() + b"\0" * 16)
    elif change == "not_an_lstm":
        shutil.copy(model, beside)
    elif change == "truncated":
        beside.write_bytes(DEFAULT_LSTM.read_bytes()[:4000])
    else:
        card["voice"]["lstm_file"] = "../voice-lstm.tflite"
    cp.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message) as info:
        load_classifier(ModelSettings(path=str(model)))
    assert "\n" not in str(info.value)


def test_a_missing_voice_lstm_exits_65_with_one_line(model_path: Path, tmp_path: Path,
                                                     data_dir: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    model = _shipped_copy(model_path, tmp_path)
    cp = card_path_for(model)
    card = json.loads(cp.read_text())
    if not card.get("voice", {}).get("lstm_file"):
        pytest.skip("this model's voice branch runs without the LiteRT LSTM")
    card["voice"]["lstm_file"] = "nothere.tflite"
    cp.write_text(json.dumps(card))
    r = subprocess.run([sys.executable, "-m", "serd.cli", "-q", "--model", str(model), "--once",
                        str(data_dir / "1001_IEO_ANG_HI.flac")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 65
    assert r.stderr.strip().count("\n") == 0 and "nothere.tflite does not exist" in r.stderr


def test_fit_head_learns_and_handles_few_classes() -> None:
    pytest.importorskip("sklearn")
    from train.voice import fit_head  # noqa: PLC0415

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 512)).astype(np.float32)
    x[:, :3] += 3 * np.eye(3, dtype=np.float32)[y]
    head = fit_head(x, y, 6, c=0.1)
    p = head(x)
    assert (p.argmax(1) == y).mean() > 0.95
    assert p[:, 3:].max() < 1e-6  # classes never seen are never predicted
    two = fit_head(x[y < 2], y[y < 2], 6, c=0.1)
    assert (two(x[y < 2]).argmax(1) == y[y < 2]).mean() > 0.95
    one = fit_head(x[:5], np.full(5, 4), 6, c=0.1)
    assert (one(x).argmax(1) == 4).all()


def test_checkpoint_reader_refuses_code(tmp_path: Path) -> None:
    """Resemblyzer's checkpoint is a pickle: only what a state dict needs may load."""
    from train.voice_trunk import load_legacy_checkpoint  # noqa: PLC0415

    bad = tmp_path / "bad.pt"
    with bad.open("wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f)
        pickle.dump(shutil.rmtree, f)  # a global that is not a tensor or a dict
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_legacy_checkpoint(bad)


def test_trunk_is_the_pytorch_lstm(trunk: VoiceTrunk, data_dir: Path) -> None:
    """serd's reordered, pre-scaled gates against a plain LSTM in PyTorch's convention
    (gates input, forget, cell, output; both biases), straight from the npz."""
    from train.corpora import load_audio  # noqa: PLC0415

    with np.load(DEFAULT_TRUNK) as z:
        w = {k: z[k].astype(np.float32) for k in z.files}

    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 0.5 * (1 + np.tanh(0.5 * v))  # = 1 / (1 + exp(-v)), without overflow

    seq = voice_mel(load_audio(str(data_dir / "1001_IEO_SAD_HI.flac"))[:16000]) * 30.0
    for k in range(2):
        h, c, outs = np.zeros(256, np.float32), np.zeros(256, np.float32), []
        for x in seq:
            g = (w[f"weight_ih_l{k}"] @ x + w[f"bias_ih_l{k}"] + w[f"weight_hh_l{k}"] @ h
                 + w[f"bias_hh_l{k}"])
            c = sigmoid(g[256:512]) * c + sigmoid(g[:256]) * np.tanh(g[512:768])
            h = sigmoid(g[768:]) * np.tanh(c)
            outs.append(h)
        seq = np.array(outs)
    mel = voice_mel(load_audio(str(data_dir / "1001_IEO_SAD_HI.flac"))[:16000]) * 30.0
    np.testing.assert_allclose(trunk.run(mel, trunk.zero_state()), seq, atol=1e-5)


def test_the_branch_can_be_switched_off(model_path: Path, tmp_path: Path) -> None:
    """``model.voice: false`` in config.yaml: the CNN alone, for a device too slow for the
    LSTM; the pipeline then keeps no window audio."""
    model = _voice_model(model_path, tmp_path)
    clf = load_classifier(ModelSettings(path=str(model), voice=False))
    assert clf.voice is None
    pipe = Pipeline(clf)
    assert pipe.model.voice is None and not pipe.windower.keep_audio
