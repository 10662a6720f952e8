"""The feature front-end: golden values, streaming invariance, agreement with references."""

from __future__ import annotations

import numpy as np
import pytest

from serd.decode import load
from serd.features import (
    F0_REFERENCE_HZ,
    FeatureParams,
    MfccStream,
    WindowParams,
    dct_matrix,
    frame_windows,
    mel_filterbank,
    mfcc,
    pad_window,
)
from serd.model import fingerprint_signal
from serd.normalise import (
    KIND,
    KIND_CHANNELS,
    Normalisation,
    channel_indices,
    channel_names,
    fit_normalisation,
    normalise_windows,
)

P = FeatureParams()

# Pinned outputs of the front-end on a deterministic chirp (serd.model.fingerprint_signal).
# If these change, every shipped model's input changes: bump FRONTEND_VERSION and retrain.
GOLDEN_ROWS = (0, 10, 47)
GOLDEN_COLS = (0, 1, 2, 5, 13, 39)
GOLDEN = np.array(
    [
        [-81.87866, 19.4421, 6.40866, 1.98474, 6.17006, -0.98641],
        [-81.34323, 18.82725, 4.85475, 3.46616, 0.32555, -0.47792],
        [-80.66859, 19.7594, -2.40881, 1.47804, -2.60541, -0.31899],
    ],
    dtype=np.float32,
)


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A harmonic signal with a moving pitch and noise, at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.1
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


# Voicing and log-F0 (columns 40, 41) on the same rows.  The chirp's F0 rises from 120 Hz
# at 200 Hz/s: row 47 (pitch frame centred at 0.47 s, 214 Hz) is log2(214/150) = 0.51.
GOLDEN_PITCH = np.array(
    [[0.61497, -0.16130], [0.96718, -0.08541], [0.98522, 0.51808]], dtype=np.float32
)


def test_golden_values() -> None:
    m = mfcc(fingerprint_signal(16000))
    assert m.shape == (48, 42)
    assert m.dtype == np.float32
    np.testing.assert_allclose(m[np.ix_(GOLDEN_ROWS, GOLDEN_COLS)], GOLDEN, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(m[np.ix_(GOLDEN_ROWS, (40, 41))], GOLDEN_PITCH, atol=2e-4)


def test_frame_count_and_params() -> None:
    assert P.frame_length == 400
    assert P.hop_length == 160
    assert P.n_features == 42  # 40 MFCCs, voicing, log-F0
    assert mfcc(np.zeros(399, np.float32)).shape == (0, 42)
    assert mfcc(np.zeros(400, np.float32)).shape == (1, 42)
    assert mfcc(np.zeros(16000, np.float32)).shape == (1 + (16000 - 400) // 160, 42)


@pytest.mark.parametrize("chunk", [1, 7, 160, 161, 399, 400, 1024, 4000, 100000])
def test_streaming_matches_whole_clip(chunk: int) -> None:
    x = speechlike(1.3)
    whole = mfcc(x)
    stream = MfccStream()
    parts = [stream(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    got = np.concatenate(parts)
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-4)


def test_random_chunking_matches_whole_clip() -> None:
    x = speechlike(2.0, seed=3)
    rng = np.random.default_rng(7)
    stream = MfccStream()
    parts, i = [], 0
    while i < x.size:
        n = int(rng.integers(0, 3000))
        parts.append(stream(x[i : i + n]))
        i += n
    np.testing.assert_allclose(np.concatenate(parts), mfcc(x), atol=1e-4)


def test_reset_starts_a_new_stream() -> None:
    x = speechlike(0.5)
    s = MfccStream()
    s(speechlike(0.3, seed=9))
    s.reset()
    np.testing.assert_allclose(s(x), mfcc(x), atol=1e-5)


def test_digital_silence_is_finite() -> None:
    m = mfcc(np.zeros(8000, np.float32))
    assert np.isfinite(m).all()


def test_filterbank_and_dct_are_cached_and_read_only() -> None:
    fb = mel_filterbank(P)
    assert fb is mel_filterbank(P)
    assert fb.shape == (40, 257)
    assert not fb.flags.writeable
    d = dct_matrix(40, 40)
    np.testing.assert_allclose(d @ d.T, np.eye(40), atol=1e-5)  # orthonormal


def test_matches_librosa_with_same_parameters() -> None:
    librosa = pytest.importorskip("librosa")
    scipy_fft = pytest.importorskip("scipy.fft")
    x = speechlike(1.5, seed=1)
    y = np.append(x[0], x[1:] - P.preemphasis * x[:-1]).astype(np.float32)
    # librosa centres a 400-sample window in each 512-sample frame: shift by 56 samples.
    pad = (P.n_fft - P.frame_length) // 2
    y = np.concatenate([np.zeros(pad, np.float32), y, np.zeros(pad, np.float32)])
    mel = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=512, hop_length=160, win_length=400, window=np.hamming(400),
        center=False, power=2.0, n_mels=40, fmin=20.0, fmax=8000.0, htk=True, norm=None,
    ) / P.n_fft
    ref = scipy_fft.dct(np.log(np.maximum(mel, P.log_floor)), axis=0, norm="ortho").T
    ours = mfcc(x)[:, : P.n_mfcc]
    n = min(len(ref), len(ours))
    assert abs(len(ref) - len(ours)) <= 1
    np.testing.assert_allclose(ours[:n], ref[:n], atol=2e-3, rtol=1e-3)


def test_close_to_python_speech_features(data_dir) -> None:
    psf = pytest.importorskip("python_speech_features")
    x = load(data_dir / "1091_TIE_SAD_XX.flac", 16000)
    ref = psf.mfcc(
        x, 16000, winlen=0.025, winstep=0.01, numcep=40, nfilt=40, nfft=512, lowfreq=20,
        highfreq=8000, preemph=0.97, ceplifter=0, appendEnergy=False, winfunc=np.hamming,
    )
    ours = mfcc(x)
    n = min(len(ref), len(ours))
    # psf rounds filter edges to FFT bins, so values differ a little; on real speech the
    # first 13 cepstra (what most SER work uses) correlate almost perfectly.
    for c in range(13):
        r = np.corrcoef(ref[:n, c], ours[:n, c])[0, 1]
        assert r > 0.95, (c, r)


def test_windows_and_padding() -> None:
    frames = np.arange(500 * 3, dtype=np.float32).reshape(500, 3)
    w, starts = frame_windows(frames, 200, 50)
    assert w.shape == (7, 200, 3)
    assert list(starts) == [0, 50, 100, 150, 200, 250, 300]
    np.testing.assert_array_equal(w[2], frames[100:300])
    short = frames[:70]
    w1, _ = frame_windows(short, 200, 50)
    assert w1.shape == (1, 200, 3)
    np.testing.assert_array_equal(w1[0][:70], short)
    np.testing.assert_array_equal(w1[0][70:140], short)
    np.testing.assert_array_equal(pad_window(frames, 200), frames[-200:])


def test_normalisation_is_gain_invariant(data_dir) -> None:
    x = load(data_dir / "1001_IEO_ANG_HI.flac", 16000)
    win, _ = WindowParams().frames(P)
    a = pad_window(mfcc(x), win)
    b = pad_window(mfcc(x * 0.25), win)
    norm = Normalisation(scale=tuple([1.0] * P.n_features))
    na, nb = normalise_windows(a, norm), normalise_windows(b, norm)
    # A gain is an additive constant on c0 only (log of a scaled spectrum); CMN removes it.
    # Voicing and log-F0 come from a normalised autocorrelation: gain does not touch them.
    np.testing.assert_allclose(na, nb, atol=0.05)


def test_fit_normalisation_gives_unit_variance() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(3.0, [1.0, 2.0, 4.0], size=(50, 200, 3)).astype(np.float32)
    norm = fit_normalisation(w)
    out = normalise_windows(w, norm)
    np.testing.assert_allclose(out.reshape(-1, 3).std(axis=0), 1.0, rtol=0.02)
    assert Normalisation.from_dict(norm.to_dict()) == norm


def test_partial_normalisation_keeps_levels_and_removes_gain(data_dir) -> None:
    x = load(data_dir / "1001_IEO_ANG_HI.flac", 16000)
    win, _ = WindowParams().frames(P)
    a = pad_window(mfcc(x), win)
    b = pad_window(mfcc(x * 0.25), win)
    centred = channel_indices(["c0", "log_f0"], P)
    assert centred == (0, P.n_features - 1)
    norm = fit_normalisation(np.stack([a, b]), centred)
    assert norm.kind == KIND_CHANNELS
    na, nb = normalise_windows(a, norm), normalise_windows(b, norm)
    # The gain is still removed (c0 is centred per window)...
    np.testing.assert_allclose(na, nb, atol=0.05)
    # ...but c1's level in the window (the spectral tilt) is kept: with every channel
    # centred its window mean is 0, here it is the distance from the training mean.
    assert abs(na[:, 0].mean()) < 1e-4 and abs(na[:, P.n_features - 1].mean()) < 1e-4
    offset = norm.offset
    assert offset is not None
    np.testing.assert_allclose(na[:, 1].mean(), (a[:, 1].mean() - offset[1]) * norm.scale[1],
                               rtol=1e-4, atol=1e-5)
    assert Normalisation.from_dict(norm.to_dict()) == norm


def test_fit_normalisation_with_centred_channels_gives_unit_variance() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal([3.0, -2.0, 1.0], [1.0, 2.0, 4.0], size=(50, 200, 3)).astype(np.float32)
    norm = fit_normalisation(w, [0])
    out = normalise_windows(w, norm)
    np.testing.assert_allclose(out.reshape(-1, 3).std(axis=0), 1.0, rtol=0.02)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), 0.0, atol=0.02)


def test_normalisation_cards_old_and_new() -> None:
    old = Normalisation.from_dict({"kind": KIND, "scale": [1.0, 2.0]})
    assert old.centred is None and old.kind == KIND
    assert old.to_dict() == {"kind": KIND, "scale": [1.0, 2.0]}
    with pytest.raises(ValueError, match="unknown normalisation kind"):
        Normalisation.from_dict({"kind": "zscore", "scale": [1.0]})
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        Normalisation(scale=(1.0, 1.0), centred=(2,), offset=(0.0, 0.0))
    with pytest.raises(ValueError, match="one offset per channel"):
        Normalisation(scale=(1.0, 1.0), centred=(0,))


def test_channel_names() -> None:
    names = channel_names(P)
    assert len(names) == P.n_features and names[:2] == ("c0", "c1")
    assert names[-2:] == ("voicing", "log_f0")
    with pytest.raises(ValueError, match="unknown feature channels"):
        channel_indices(["c0", "f0"], P)


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="n_mfcc"):
        FeatureParams(n_mfcc=80)
    with pytest.raises(ValueError, match="hop_seconds"):
        WindowParams(window_seconds=1.0, hop_seconds=2.0)


# -- pitch channels (voicing, log-F0) ------------------------------------------------------


def harmonic(f0_hz: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * k * f0_hz * t) / k for k in range(1, 15) if k * f0_hz < 7000)
    return (0.1 * x + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("f0", [80.0, 110.0, 165.0, 240.0, 330.0, 420.0])
def test_pitch_tracks_a_known_f0(f0: float) -> None:
    m = mfcc(harmonic(f0))[10:]  # after the first pitch frame is full of signal
    voicing, log_f0 = m[:, P.n_mfcc], m[:, P.n_mfcc + 1]
    assert np.median(voicing) > 0.85
    est = F0_REFERENCE_HZ * 2.0 ** np.median(log_f0)
    assert abs(est / f0 - 1.0) < 0.02, est


def test_pitch_is_quiet_on_noise_and_silence() -> None:
    noise = (0.05 * np.random.default_rng(3).standard_normal(32000)).astype(np.float32)
    m = mfcc(noise)
    assert np.median(m[:, P.n_mfcc]) < 0.4
    assert np.mean(m[:, P.n_mfcc + 1] == 0.0) > 0.9  # log-F0 gated off when unvoiced
    z = mfcc(np.zeros(8000, np.float32))
    assert np.all(z[:, P.n_mfcc:] == 0.0)


def test_pitch_follows_a_moving_f0() -> None:
    x = speechlike(2.0, seed=5)  # f0 = 140 + 40 sin(2 pi 1.5 t)
    m = mfcc(x)
    # pitch frame k ends where MFCC frame k ends: centred at k * hop (50 ms long)
    k = np.arange(10, len(m))
    truth = 140 + 40 * np.sin(2 * np.pi * 1.5 * (k * 160) / 16000)
    est = F0_REFERENCE_HZ * 2.0 ** m[k, P.n_mfcc + 1]
    assert np.median(np.abs(np.log2(est / truth))) < 0.03  # within half a semitone


def test_pitch_agrees_with_pyin_on_speech(data_dir) -> None:
    librosa = pytest.importorskip("librosa")
    x = load(data_dir / "1001_IEO_HAP_HI.flac", 16000)
    f0, voiced, _ = librosa.pyin(x, fmin=70, fmax=450, sr=16000, frame_length=1024,
                                 hop_length=160, center=False)
    m = mfcc(x)
    # pyin frame i is centred at i*160 + 512, ours k at k*160: k = i + 3.2
    ours = m[3 : 3 + len(f0)]
    n = min(len(ours), len(f0))
    both = voiced[:n] & (ours[:n, P.n_mfcc] > 0.6)
    assert both.sum() > 50
    err = np.abs(np.log2(F0_REFERENCE_HZ * 2.0 ** ours[:n, P.n_mfcc + 1][both] / f0[:n][both]))
    assert np.mean(err > 0.2) < 0.1  # gross pitch errors (> ~15 %) in under 10 % of frames


def test_pitch_off_leaves_plain_mfcc() -> None:
    x = speechlike(1.0, seed=2)
    plain = mfcc(x, FeatureParams(pitch=False))
    assert plain.shape[1] == 40 == FeatureParams(pitch=False).n_features
    np.testing.assert_array_equal(plain, mfcc(x)[:, :40])


def test_bad_pitch_params_are_refused() -> None:
    with pytest.raises(ValueError, match="pitch_frame_seconds"):
        FeatureParams(pitch_frame_seconds=0.02)
    with pytest.raises(ValueError, match="f0_min_hz"):
        FeatureParams(f0_min_hz=30.0)
    with pytest.raises(ValueError, match="f0_min_hz"):
        FeatureParams(f0_min_hz=300.0, f0_max_hz=200.0)

