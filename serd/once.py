"""``serd --once`` as library code: one audio file through the daemon's own pipeline.

:func:`analyse_file` decodes a file in blocks (:mod:`serd.decode`) and feeds them to the
same :class:`serd.pipeline.Pipeline` the daemon runs per channel; :class:`FileResult` holds
what the command line prints about it.  The bench and the tests use these directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serd.config import Config
    from serd.decisions import Decision, Verdict
    from serd.model import Classifier


class FileResult:
    """Everything ``--once`` prints about one file."""

    def __init__(self, path: Path, duration_s: float, speech_s: float,
                 decisions: list[Decision], labels: tuple[str, ...], threshold: float,
                 hop_s: float) -> None:
        from serd.decisions import verdict  # noqa: PLC0415

        self.path = path
        self.duration_s = duration_s
        self.speech_s = speech_s
        self.decisions = decisions
        self.labels = labels
        self.hop_s = hop_s
        windows = [d for d in decisions if d.type == "window"]
        self.summary: Verdict | None = None
        if windows:
            import numpy as np  # noqa: PLC0415

            mean = np.mean([d.raw_probs for d in windows], axis=0).astype(np.float32)
            self.summary = verdict(labels, mean, threshold)


def analyse_file(cfg: Config, clf: Classifier, path: Path) -> FileResult:
    """Run one file through the pipeline; raises :class:`serd.decode.AudioError`."""
    from serd.decode import probe, read_blocks  # noqa: PLC0415
    from serd.pipeline import Pipeline  # noqa: PLC0415

    info = probe(path)
    rate = clf.card.features.sample_rate
    pipe = Pipeline(clf, vad=cfg.vad, decisions=cfg.decisions, channel="main")
    decisions: list[Decision] = []
    for block in read_blocks(info.path, rate, block_seconds=0.5, info=info):
        decisions.extend(pipe(block))
    decisions.extend(pipe.flush())
    duration = pipe.windower.samples_in / rate
    speech = pipe.windower.speech_samples / rate
    return FileResult(path, duration, speech, decisions, clf.labels, cfg.decisions.threshold,
                      clf.card.windows.hop_seconds)
