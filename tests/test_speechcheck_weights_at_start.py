"""With ``vad.confirm: silero`` (the default) the speech check's weights are loaded when the
gate is built (its confirm stage's constructor), so every user of the gate (the pipeline,
``serd.windows.extract`` for training, the benchmarks) fails as it starts; the pipeline
turns that into a model error, so a missing or damaged weights file stops ``serd --check-config``,
``serd --once`` and the daemon as they start, in one line with exit 65, instead of passing
``--check-config`` and failing with a traceback at the first utterance."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import serd.speechcheck
from serd.gate import VadSettings, make_gate
from serd.model import ModelError
from serd.pipeline import ChannelSet, Pipeline
from serd.roles import ChannelSpec, resolve
from serd.speechcheck import RATE, SpeechCheckError
from serd.windows import Windower


@pytest.mark.parametrize("backend", ["voiced", "energy"])
def test_the_gate_itself_refuses_missing_weights_as_it_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setattr(serd.speechcheck, "WEIGHTS", tmp_path / "gone.npz")
    settings = VadSettings(backend=backend, confirm="silero")
    with pytest.raises(SpeechCheckError, match=r"gone\.npz.*set vad\.confirm: none"):
        make_gate(settings, 0.01, RATE)
    with pytest.raises(SpeechCheckError, match=r"gone\.npz"):
        Windower(vad=settings)  # the path training's window extraction takes
    make_gate(VadSettings(backend=backend, confirm="none"), 0.01, RATE)  # needs no weights


@pytest.mark.parametrize("content", [None, b"not an npz"])
def test_pipeline_refuses_missing_or_damaged_weights(
        classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    weights = tmp_path / "silero_vad_16k.npz"
    if content is not None:
        weights.write_bytes(content)
    monkeypatch.setattr(serd.speechcheck, "WEIGHTS", weights)
    with pytest.raises(ModelError, match=r"speech check weights .*set vad\.confirm: none"):
        Pipeline(classifier, vad=VadSettings(confirm="silero"))
    Pipeline(classifier, vad=VadSettings(confirm="none"))  # which needs no weights


@pytest.mark.parametrize("mode", ["--check-config", "--once"])
def test_cli_says_so_in_one_line_exit_65(tmp_path: Path, data_dir: Path, mode: str) -> None:
    missing = tmp_path / "gone.npz"
    clip = data_dir / "1001_IEO_ANG_HI.flac"
    args = [mode, str(clip)] if mode == "--once" else [mode]
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import serd.speechcheck
        serd.speechcheck.WEIGHTS = Path({str(missing)!r})
        from serd.cli import main
        sys.exit(main({args!r}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 65, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("INFO")]
    assert len(lines) == 1 and lines[0].startswith("serd: model error: speech check "
                                                    "weights"), r.stderr


def test_two_channel_line_refuses_in_one_line_or_needs_no_weights(
        classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An agent channel's bleed muting uses the energy gate's level test alone: it must not
    # load the speech check (a missing file escaped as a traceback before the pipeline's
    # model error, and stopped serd even with vad.confirm: none).
    monkeypatch.setattr(serd.speechcheck, "WEIGHTS", tmp_path / "gone.npz")
    channels = resolve([ChannelSpec("agent", "agent"), ChannelSpec("customer", "customer")],
                       ["customer"])
    with pytest.raises(ModelError, match=r"gone\.npz"):
        ChannelSet(classifier, channels, vad=VadSettings(confirm="silero"))
    cs = ChannelSet(classifier, channels, vad=VadSettings(confirm="none"))
    assert cs.mutes[0] is not None  # the muting stage is there, without the weights
