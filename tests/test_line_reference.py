"""The voice branch's line reference: each line's statistics relative to its own speech.

A head trained with a reference (``voice.line_reference`` in serd-train) sees each
window's statistics minus its domain's mean; on the device each analysed channel keeps a
:class:`serd.voice.LineReference` that starts at the model's prior and follows the line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_gate_windows import call_like

from serd.model import (
    ModelError,
    ModelSettings,
    card_path_for,
    fingerprint_signal,
    load_classifier,
    sha256_of,
    voice_head_path,
)
from serd.voice import (
    VOICE_VERSION,
    LineReference,
    ReferenceParams,
    VoiceCard,
    VoiceError,
    VoiceHead,
    VoiceParams,
    VoiceStream,
    VoiceTrunk,
    voice_fingerprint,
)
from serd.windows import windows_of
from train.voice import (
    domain_reference,
    fit_head,
    relative_to_domains,
    save_head,
    warm_reference,
)


def _ref_head(seed: int = 0, n_labels: int = 6) -> VoiceHead:
    rng = np.random.default_rng(seed)
    return VoiceHead(rng.normal(size=512).astype(np.float32),
                     rng.uniform(0.5, 2, 512).astype(np.float32),
                     rng.normal(scale=0.05, size=(n_labels, 512)).astype(np.float32),
                     rng.normal(size=n_labels).astype(np.float32),
                     reference=rng.normal(size=512).astype(np.float32))


def test_the_reference_starts_at_the_prior_and_follows_the_line() -> None:
    prior = np.zeros(4, np.float32)
    ref = LineReference(prior, ReferenceParams(prior_windows=10, memory_windows=1000))
    line = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    first = ref(line)
    np.testing.assert_array_equal(first, line)  # judged against the prior, then learnt
    for _ in range(9):
        ref(line)
    # 10 windows of the line against 10 of prior: halfway.
    np.testing.assert_allclose(ref.reference, line / 2, rtol=1e-6)
    for _ in range(990):
        ref(line)
    np.testing.assert_allclose(ref.reference, line * 1000 / 1010, rtol=1e-5)
    ref.reset()
    np.testing.assert_array_equal(ref.reference, prior)


def test_the_memory_forgets_an_old_room() -> None:
    ref = LineReference(np.zeros(2, np.float32),
                        ReferenceParams(prior_windows=0, memory_windows=50))
    for _ in range(500):
        ref(np.array([5.0, 5.0], np.float32))
    for _ in range(300):  # a new headset: the line moves to it within a few memories
        ref(np.array([-1.0, 1.0], np.float32))
    np.testing.assert_allclose(ref.reference, [-1.0, 1.0], atol=0.02)
    assert ref.count == 50


def test_without_adaptation_the_reference_is_the_prior() -> None:
    prior = np.arange(3, dtype=np.float32)
    ref = LineReference(prior, adapt=False)
    for _ in range(100):
        out = ref(np.ones(3, np.float32))
    np.testing.assert_array_equal(out, 1 - prior)
    np.testing.assert_array_equal(ref.reference, prior)


def test_bad_reference_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="reference"):
        ReferenceParams(memory_windows=0)
    with pytest.raises(ValueError, match="reference"):
        ReferenceParams(neutral_share=1.5)
    # From a hostile card: an infinite prior weight made every reference NaN, and a
    # count is whole.
    for bad in ({"prior_windows": float("inf")}, {"prior_windows": float("nan")},
                {"prior_windows": True}, {"memory_windows": 2.5},
                {"memory_windows": True}):
        with pytest.raises(ValueError, match="reference"):
            ReferenceParams(**bad)  # type: ignore[arg-type]


def test_domain_reference_weights_neutral_to_its_share() -> None:
    x = np.array([[0.0], [0.0], [0.0], [10.0]], np.float32)  # 3 neutral, 1 angry
    y = np.array([0, 0, 0, 3])
    np.testing.assert_allclose(domain_reference(x, y, 0, 0.6), [4.0])
    np.testing.assert_allclose(domain_reference(x, y, None, 0.6), [2.5])  # plain mean
    only = np.array([3, 3, 3, 3])  # no neutral at all: the plain mean
    np.testing.assert_allclose(domain_reference(x, only, 0, 0.6), [2.5])


def test_relative_to_domains_removes_each_domains_offset() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    signal = np.eye(3, 5, dtype=np.float32)[y]  # what the emotion does
    offset = np.where(np.arange(600)[:, None] < 300, 5.0, -5.0).astype(np.float32)
    dom = np.where(np.arange(600) < 300, "a/clean", "b/clean")
    rel, prior = relative_to_domains(signal + offset, y, dom, 0, ReferenceParams())
    # Both domains now agree on each class, whatever their offset.
    for k in range(3):
        a = rel[(dom == "a/clean") & (y == k)].mean(0)
        b = rel[(dom == "b/clean") & (y == k)].mean(0)
        np.testing.assert_allclose(a, b, atol=0.15)
    assert np.abs(prior).max() < 1.0  # the domains' offsets cancel in the prior


def test_a_head_with_a_reference_generalises_to_an_offset_domain() -> None:
    """The point of the reference: a new domain (another corpus, room, language) shifts
    every statistic; relative to its own reference the head still reads the emotion."""
    rng = np.random.default_rng(3)
    n, d = 900, 8
    y = rng.integers(0, 3, n)
    x = (np.eye(3, d)[y] * 1.5 + rng.normal(scale=0.7, size=(n, d))).astype(np.float32)
    dom = np.array(["a/clean", "b/clean", "c/clean"])[np.arange(n) % 3]
    shifts = {k: rng.normal(scale=2.0, size=d) for k in ("a/clean", "b/clean", "c/clean")}
    x = x + np.array([shifts[s] for s in dom], np.float32)
    plain = fit_head(x, y, 3, 1.0)
    rel = fit_head(x, y, 3, 1.0, domain=dom, reference=ReferenceParams(), neutral=0)
    assert plain.reference is None and rel.reference is not None
    yt = rng.integers(0, 3, 300)
    xt = (np.eye(3, d)[yt] * 1.5 + rng.normal(scale=0.7, size=(300, d))
          + rng.normal(scale=3.0, size=d)).astype(np.float32)  # a domain unlike all three
    file = np.arange(300)
    ref = warm_reference(xt, file, yt, rel.reference, ReferenceParams(prior_windows=5), 0,
                         200, seed=1)
    acc_rel = (rel(xt - ref).argmax(1) == yt).mean()
    acc_plain = (plain(xt).argmax(1) == yt).mean()
    assert acc_rel > 0.75 > acc_plain


def test_warm_reference_is_the_device_reference_after_the_stream() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    file = np.repeat(np.arange(10), 4)
    y_file = np.array([0, 0, 0, 1, 2, 3, 0, 1, 0, 2])
    prior = np.zeros(4, np.float32)
    p = ReferenceParams(prior_windows=5, memory_windows=100)
    a = warm_reference(x, file, y_file, prior, p, 0, 30, seed=7)
    b = warm_reference(x, file, y_file, prior, p, 0, 30, seed=7)
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.allclose(a, prior)
    np.testing.assert_array_equal(
        warm_reference(x, file, y_file, prior, p, 0, 0, seed=7), prior)  # cold: the prior


def test_head_with_reference_round_trips(tmp_path: Path) -> None:
    head = _ref_head()
    path = tmp_path / "h.npz"
    save_head(head, path)
    back = VoiceHead.load(path, 6, 512)
    assert back.reference is not None and head.reference is not None
    np.testing.assert_array_equal(back.reference, head.reference)


def test_a_head_with_a_misshapen_reference_is_named_as_such(tmp_path: Path) -> None:
    h = _ref_head()
    path = tmp_path / "h.npz"
    save_head(VoiceHead(h.mean, h.scale, h.coef, h.intercept, reference=h.mean[:100]), path)
    with pytest.raises(VoiceError, match=r"reference of shape \(100,\)"):
        VoiceHead.load(path, 6, 512)


def _reference_model(model_path: Path, tmp_path: Path, *, card_reference: bool = True,
                     head_reference: bool = True) -> Path:
    dst = tmp_path / "r.tflite"
    shutil.copy(model_path, dst)
    card = json.loads(card_path_for(model_path).read_text())
    head = voice_head_path(dst)
    h = _ref_head()
    if not head_reference:
        h = VoiceHead(h.mean, h.scale, h.coef, h.intercept)
    save_head(h, head)
    trunk = VoiceTrunk()
    card["voice"] = {"version": VOICE_VERSION, "params": VoiceParams().to_dict(),
                     "trunk_sha256": trunk.sha256,
                     "fingerprint": voice_fingerprint(trunk, fingerprint_signal(16000)),
                     "head_file": head.name, "head_sha256": sha256_of(head), "cnn_weight": 0.5}
    if card_reference:
        card["voice"]["reference"] = ReferenceParams(prior_windows=20).to_dict()
    card_path_for(dst).write_text(json.dumps(card))
    return dst


def test_each_line_adapts_on_the_device(model_path: Path, tmp_path: Path,
                                        data_dir: Path) -> None:
    model = _reference_model(model_path, tmp_path)
    clf = load_classifier(ModelSettings(path=str(model)))
    assert clf.voice is not None and clf.voice.head.reference is not None
    section = json.loads(card_path_for(model).read_text())["voice"]
    assert clf.card.voice == VoiceCard.from_dict(section)
    assert clf.card.voice.to_dict() == section
    wins = windows_of(call_like(data_dir), keep_audio=True)
    stream = clf.stream()
    got = np.stack([stream(w) for w in wins])
    # The same by hand: the stream's statistics against a line reference from the prior.
    voice = VoiceStream(clf.voice.trunk)
    ref = LineReference(clf.voice.head.reference, ReferenceParams(prior_windows=20))
    want = np.stack([clf.fused(clf(w.features), ref(voice(w))) for w in wins])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert stream.reference is not None and stream.reference.count == len(wins)
    stream.reset()  # a new stream keeps the line's reference
    assert stream.reference.count == len(wins)
    fixed = load_classifier(ModelSettings(path=str(model), adapt=False)).stream()
    np.stack([fixed(w) for w in wins])
    assert fixed.reference is not None and fixed.reference.count == 0


@pytest.mark.parametrize(("card_ref", "head_ref"), [(True, False), (False, True)])
def test_a_head_and_card_that_disagree_are_refused(model_path: Path, tmp_path: Path,
                                                   card_ref: bool, head_ref: bool) -> None:
    model = _reference_model(model_path, tmp_path, card_reference=card_ref,
                             head_reference=head_ref)
    with pytest.raises(ModelError, match="line reference"):
        load_classifier(ModelSettings(path=str(model)))


def test_a_card_with_an_infinite_prior_weight_is_refused(model_path: Path,
                                                         tmp_path: Path) -> None:
    """``prior_windows: Infinity`` made every line's reference NaN (inf / inf), so every
    fused probability NaN: the card is refused in one line instead."""
    model = _reference_model(model_path, tmp_path)
    card = json.loads(card_path_for(model).read_text())
    card["voice"]["reference"]["prior_windows"] = float("inf")
    card_path_for(model).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="reference") as info:
        load_classifier(ModelSettings(path=str(model)))
    assert "\n" not in str(info.value)
