"""How much of the agent's voice reaches the classifier on a two-channel call.

A call is built from real clips (the CREMA-D fixtures in tests/data: actor 1091 as the
agent, actor 1001 as the caller): channel 0 is the agent's side, channel 1 the caller's,
and the agent's voice also leaks into the caller's channel ``bleed_db`` down (sidetone and
line echo, delayed a few milliseconds), with the turns overlapping twice (double talk) and a
faint noise floor on both sides.  Both channels run through :class:`serd.pipeline.ChannelSet`
exactly as the daemon runs them, with and without bleed muting (``audio.bleed_mute``), and
the caller's classified windows are compared with where each person really spoke (from the
clean clips' levels).

    .venv/bin/python -m bench.bleed            # a table; --json for one JSON object
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serd.config import Config, parse
from serd.decisions import Decision
from serd.decode import load
from serd.model import Classifier, load_classifier
from serd.pipeline import ChannelSet, Pipeline

RATE = 16000
DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
_BLOCK = RATE // 100  # 10 ms, for the speech masks
# (who, clip, seconds after the previous turn's end; negative = overlap, double talk)
SCRIPT = (
    ("agent", "1091_TIE_NEU_XX", 0.5),
    ("customer", "1001_IEO_ANG_HI", 0.6),
    ("agent", "1091_TIE_ANG_XX", -0.8),
    ("customer", "1001_IEO_SAD_HI", 0.5),
    ("customer", "1001_IEO_FEA_HI", 0.15),
    ("agent", "1091_TIE_SAD_XX", 0.4),
    ("customer", "1001_IEO_HAP_HI", 0.3),
    ("agent", "1091_TIE_NEU_XX", 0.1),
    ("customer", "1001_IEO_DIS_HI", -0.5),
    ("customer", "1001_IEO_NEU_XX", 0.2),
    ("agent", "1091_TIE_ANG_XX", 0.6),
)


@dataclass(frozen=True)
class Call:
    audio: npt.NDArray[np.float32]
    """(samples, 2): agent, customer."""
    agent_speaks: npt.NDArray[np.bool_]
    """Per sample: the agent's clean clip is speech here."""
    customer_speaks: npt.NDArray[np.bool_]


def _level(x: npt.NDArray[np.float32], dbfs: float) -> npt.NDArray[np.float32]:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _speech(x: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Where a clean clip is speech: 10 ms blocks within 35 dB of its loudest block."""
    n = x.size // _BLOCK
    ms = (x[: n * _BLOCK].astype(np.float64).reshape(n, _BLOCK) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(ms, 1e-12))
    flags = np.repeat(db > db.max() - 35.0, _BLOCK)
    return np.concatenate([flags, np.zeros(x.size - flags.size, bool)])


def build_call(data_dir: Path = DATA, *, bleed_db: float = -20.0, agent_dbfs: float = -20.0,
               customer_dbfs: float = -24.0, noise_dbfs: float = -65.0, echo_ms: float = 8.0,
               seed: int = 0) -> Call:
    """The two-channel call of :data:`SCRIPT` (levels are RMS over each whole clip)."""
    clips = {name: load(data_dir / f"{name}.flac", RATE) for _, name, _ in SCRIPT}
    placed: list[tuple[str, int, npt.NDArray[np.float32]]] = []
    t = 0
    for who, name, gap in SCRIPT:
        start = max(0, t + round(gap * RATE))
        x = _level(clips[name], agent_dbfs if who == "agent" else customer_dbfs)
        placed.append((who, start, x))
        t = start + x.size
    total = t + RATE
    rng = np.random.default_rng(seed)
    noise = 10 ** (noise_dbfs / 20)
    audio = (rng.standard_normal((total, 2)) * noise).astype(np.float32)
    agent_speaks = np.zeros(total, bool)
    customer_speaks = np.zeros(total, bool)
    echo = round(echo_ms * RATE / 1000)
    for who, start, x in placed:
        end = start + x.size
        if who == "agent":
            audio[start:end, 0] += x
            # The agent's voice also reaches the caller's channel, delayed and attenuated.
            audio[start + echo:end + echo, 1] += x * np.float32(10 ** (bleed_db / 20))
            agent_speaks[start:end] |= _speech(x)
        else:
            audio[start:end, 1] += x
            customer_speaks[start:end] |= _speech(x)
    return Call(np.clip(audio, -1, 1), agent_speaks, customer_speaks)


@dataclass(frozen=True)
class Measure:
    muting: bool
    windows: int
    """Windows of the caller's channel that were classified."""
    muted_s: float
    """Seconds of the caller's channel replaced by noise while the agent spoke."""
    windows_with_agent: int
    """Classified windows holding more than 0.1 s where only the agent speaks."""
    windows_mostly_agent: int
    """Classified windows where the agent alone speaks longer than the caller does."""
    agent_only_s: float
    """Seconds of the call where only the agent speaks."""
    agent_only_classified_s: float
    """... of which the classifier heard: inside classified windows of the caller's
    channel, and not muted."""
    customer_s: float
    """Seconds where the caller speaks."""
    customer_classified_s: float
    """... of which the classifier heard."""
    utterances: int
    utterances_mostly_agent: int
    """Utterances of the caller's channel where the agent alone speaks longer than the
    caller: the agent's voice published under the caller's name."""
    utterance_labels: tuple[str | None, ...]


class _Heard:
    """A pipeline that keeps what it is fed (the caller's channel after muting)."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.blocks: list[npt.NDArray[np.float32]] = []

    def __call__(self, audio: npt.NDArray[np.float32]) -> list[Decision]:
        self.blocks.append(np.array(audio, np.float32))
        return self.pipe(audio)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)


def run_call(call: Call, cfg: Config, clf: Classifier, *, block_seconds: float = 0.05,
             ) -> tuple[list[Decision], ChannelSet, npt.NDArray[np.float32]]:
    """The call through the daemon's channel stage, in microphone-sized blocks; also what
    the (first) analysed channel's pipeline was given."""
    cs = ChannelSet(clf, cfg.audio.resolved_channels, vad=cfg.vad, decisions=cfg.decisions,
                    crosstalk=cfg.audio.bleed_mute)
    spies = [_Heard(p) for p in cs.pipelines]
    cs.pipelines = spies  # type: ignore[assignment]
    step = round(block_seconds * RATE)
    out: list[Decision] = []
    for i in range(0, call.audio.shape[0], step):
        out.extend(cs(call.audio[i:i + step]))
    out.extend(cs.flush())
    heard = np.concatenate(spies[0].blocks) if spies and spies[0].blocks else np.zeros(0)
    return out, cs, heard.astype(np.float32)


def measure(call: Call, cfg: Config, clf: Classifier) -> Measure:
    decisions, cs, heard = run_call(call, cfg, clf)
    assert {d.channel for d in decisions} <= {"customer"}, "the agent's channel was analysed"
    # What the classifier could hear: the caller's channel where muting left it as it was.
    kept = np.zeros(call.audio.shape[0], bool)
    kept[:heard.size] = heard == call.audio[:heard.size, 1]
    windows = [d for d in decisions if d.type == "window"]
    covered = np.zeros(call.audio.shape[0], bool)
    agent_only = call.agent_speaks & ~call.customer_speaks & kept
    customer = call.customer_speaks & kept
    with_agent = mostly_agent = 0
    for w in windows:
        a, b = round(w.start_s * RATE), round(w.end_s * RATE)
        covered[a:b] = True
        agent_s = agent_only[a:b].sum() / RATE
        with_agent += agent_s > 0.1
        mostly_agent += agent_s > customer[a:b].sum() / RATE
    utts = [d for d in decisions if d.type == "utterance"]
    utts_agent = sum(
        agent_only[round(u.start_s * RATE):round(u.end_s * RATE)].sum()
        > customer[round(u.start_s * RATE):round(u.end_s * RATE)].sum()
        for u in utts)
    return Measure(
        muting=cfg.audio.bleed_mute.enabled,
        windows=len(windows),
        muted_s=round(cs.muted_seconds, 2),
        windows_with_agent=int(with_agent),
        windows_mostly_agent=int(mostly_agent),
        agent_only_s=round(float((call.agent_speaks & ~call.customer_speaks).sum() / RATE), 2),
        agent_only_classified_s=round(float((agent_only & covered).sum() / RATE), 2),
        customer_s=round(float(call.customer_speaks.sum() / RATE), 2),
        customer_classified_s=round(float((customer & covered).sum() / RATE), 2),
        utterances=len(utts),
        utterances_mostly_agent=int(utts_agent),
        utterance_labels=tuple(d.label for d in utts),
    )


SETTINGS: dict[str, dict[str, float | bool]] = {
    "off": {"enabled": False},
    "default": {},
    "double-talk": {"double_talk_margin_db": 10.0},
}
"""Bleed muting as measured: none, the shipped default, and one that keeps the caller's
voice where both speak at once and the caller is clearly the louder."""


def two_channel_config(**bleed_mute: float | bool) -> Config:
    return parse({"audio": {
        "channels": [{"name": "agent", "role": "agent"},
                     {"name": "customer", "role": "customer"}],
        "bleed_mute": bleed_mute,
    }})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bleed", description=__doc__.split("\n")[0])
    p.add_argument("--bleed-db", type=float, nargs="+", default=[-20.0, -15.0, -30.0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    clf = load_classifier(Config().model)
    rows = []
    for bleed in args.bleed_db:
        call = build_call(bleed_db=bleed)
        for name, settings in SETTINGS.items():
            m = measure(call, two_channel_config(**settings), clf)
            rows.append({"bleed_db": bleed, "setting": name, **dataclasses.asdict(m)})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"call: {rows[0]['agent_only_s']} s agent alone, {rows[0]['customer_s']} s caller "
          f"(CREMA-D fixtures, 16 kHz)")
    print("bleed  muting       windows  muted-s  with-agent  mostly-agent  agent-s heard    "
          "caller-s heard  utterances (agent's)")
    for r in rows:
        print(f"{r['bleed_db']:5.0f}  {r['setting']:<11}  {r['windows']:7d}  "
              f"{r['muted_s']:7.2f}  {r['windows_with_agent']:10d}  "
              f"{r['windows_mostly_agent']:12d}  {r['agent_only_classified_s']:8.2f} of "
              f"{r['agent_only_s']:5.2f}    {r['customer_classified_s']:8.2f} of "
              f"{r['customer_s']:5.2f}    {r['utterances']:3d} ({r['utterances_mostly_agent']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
