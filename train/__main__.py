"""``serd-train`` / ``python -m train``: cross-validate, train and export serd's model.

    serd-train cache                     # extract (or check) the feature cache
    serd-train cache --prune             # ...and delete cache files nothing current uses
    serd-train cv --protocol ravdess8    # RAVDESS 8 emotions, leave-4-actors-out, 6 folds
    serd-train cv --protocol six         # 6 emotions over RAVDESS + CREMA-D, speaker folds
    serd-train cv --protocol cross_corpus  # 6 emotions, trained on one corpus, tested on the other
    serd-train fit                       # train the shipped model on all data -> models/
    serd-train all                       # every CV, then the final model (the README's numbers)
    serd-train voice-trunk pretrained.pt # the voice branch's frozen layers, from Resemblyzer
    serd-train voice-lstm --card models/serd-emotion-6.card.json  # those layers in LiteRT

Every CV fold's result is kept in the cache directory (``folds/``); a fold already trained
with the same settings, data and code is not trained again (``--fresh`` forces it), so an
interrupted ``all`` resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from serd.speechcheck import SpeechCheckError
from train.corpora import CorpusError

_LOGGER = logging.getLogger("train")

# What the ``train`` extra installs (pyproject.toml); a device install has none of them.
_TRAIN_DEPS = frozenset({"tensorflow", "keras", "librosa", "scipy", "sklearn", "matplotlib",
                         "tqdm"})


def _parser() -> argparse.ArgumentParser:
    # The module docstring: its first line describes, the rest (commands, resuming) is the
    # help's epilog, so `serd-train --help` shows the usual commands.
    head, _, body = (__doc__ or "").partition("\n")
    ap = argparse.ArgumentParser(prog="serd-train", description=head.replace("``", "`"),
                                 epilog="examples:\n" + body.strip("\n").replace("``", "`"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file merged over train/config.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set training.epochs=20 (repeatable)")
    ap.add_argument("--corpora", action="append", metavar="DIR",
                    help="corpus root (repeatable; default ../shared/corpora)")
    ap.add_argument("--cache", help="feature cache directory (default $SERD_CACHE or "
                                    "~/.cache/serd/features)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--jobs", type=int, help="worker processes / TensorFlow threads")
    ap.add_argument("--out", default="models", help="output directory (default models/)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--fresh", action="store_true",
                    help="train every CV fold again, even those already trained with the same "
                         "settings, data and code (whose results are otherwise reused)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    cache = sub.add_parser("cache", help="extract the feature cache for every protocol")
    cache.add_argument("--prune", action="store_true",
                       help="then delete the cache's other window files and CV fold records "
                            "(older corpus files, front-ends, settings or code; also those of "
                            "other configurations)")
    cv = sub.add_parser("cv", help="speaker-disjoint cross-validation")
    cv.add_argument("--protocol", required=True, help="ravdess8, six or cross_corpus (see config)")
    cv.add_argument("--folds", help="only these folds, e.g. 0,3 (quick experiments)")
    sub.add_parser("fit", help="train, quantise and export the shipped model")
    sub.add_parser("all", help="every CV protocol, then the shipped model and its report")
    vt = sub.add_parser("voice-trunk", help="write voice-trunk.npz (the voice branch's frozen "
                                            "layers) into --out from Resemblyzer's checkpoint")
    vt.add_argument("checkpoint", help="resemblyzer/pretrained.pt of the Resemblyzer 0.1.4 wheel")
    vl = sub.add_parser("voice-lstm", help="write voice-lstm.tflite (the trunk's LSTM layers "
                                           "in LiteRT, int8 weights) into --out from its "
                                           "voice-trunk.npz")
    vl.add_argument("--card", help="then point this model card's voice branch at it")
    rep = sub.add_parser("report", help="re-render README/PNGs from saved CV results and card")
    rep.add_argument("--name", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command; bad input (a missing corpus root, a bad manifest, a protocol that
    finds no files, an unknown configuration key or a bad value) is one line on stderr and
    exit status 2, not a traceback.  SIGTERM ends it as Ctrl-C does, through the cleanup
    (worker processes stopped, the shipped model's staging folder removed)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _main(argv)
    except CorpusError as exc:
        print(f"serd-train: error: {exc}", file=sys.stderr)
        return 2
    except SpeechCheckError as exc:
        # Training cuts its windows with the daemon's default gate, whose confirm stage
        # needs Silero's weights whatever the config says: the reinstall is the remedy.
        print(f"serd-train: error: {str(exc).split(';')[0]}; serd-train's windows need "
              "them (the daemon's default gate): reinstall serd, or restore "
              "serd/silero/ from the repository", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _TRAIN_DEPS:
            raise
        # The base install is what a device needs; training needs the `train` extra.
        print(f"serd-train: error: the training dependencies are not installed ({exc.name} "
              "is missing); install them with: .venv/bin/pip install -e '.[train]'",
              file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (``kill``, ``timeout``, systemd): leave through the ``finally`` blocks, which
    stop the worker processes and remove the staging folder, rather than at once."""
    raise SystemExit(128 + signum)


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from train.config import load_config, resolve  # noqa: PLC0415  (needs the train extra)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options: dict[str, object] = {}  # these options win over --config and --set
    if args.corpora:
        options["corpora_roots"] = [str(Path(c).resolve()) for c in args.corpora]
    if args.cache:
        options["cache_dir"] = str(Path(args.cache).expanduser().resolve())
    if args.seed is not None:
        options["seed"] = args.seed
    if args.jobs is not None:
        options["jobs"] = args.jobs
    cfg = load_config(args.config, args.set, options)
    out = resolve(args.out) if not Path(args.out).is_absolute() else Path(args.out)
    if not Path(args.out).is_absolute():
        out = (Path.cwd() / args.out).resolve()
    argv_used = argv if argv is not None else sys.argv[1:]
    command = "serd-train " + " ".join(shlex.quote(a) for a in argv_used)

    from train import report  # noqa: PLC0415
    from train.pipeline import Runner  # noqa: PLC0415
    from train.results import CvResult  # noqa: PLC0415

    if args.cmd == "report":
        report.render(out, cfg, args.name or cfg.final.name)
        return 0
    if args.cmd == "voice-trunk":
        from train.voice_trunk import write_trunk  # noqa: PLC0415

        path = write_trunk(Path(args.checkpoint), out / "voice-trunk.npz")
        _LOGGER.info("wrote %s", path)
        return 0
    if args.cmd == "voice-lstm":
        from train.voice_trunk import attach_lstm, write_lstm  # noqa: PLC0415

        path = write_lstm(out / "voice-trunk.npz", out / "voice-lstm.tflite")
        _LOGGER.info("wrote %s", path)
        if args.card:
            attach_lstm(Path(args.card), path)
            _LOGGER.info("%s now runs its voice branch with %s", args.card, path.name)
        return 0
    if args.cmd == "cv" and args.protocol not in cfg.protocols:
        raise CorpusError(f"unknown protocol {args.protocol!r}; train/config.yaml has "
                          f"{', '.join(cfg.protocols)}")
    runner = Runner(cfg, progress=not args.quiet, resume=not args.fresh)
    t0 = time.time()
    if args.cmd == "cache":
        sets = [p.all_corpora for p in cfg.protocols.values()] + [cfg.final.corpora]
        for name, corpora in zip([*cfg.protocols, "final"], sets, strict=True):
            secs = runner.prepare(corpora)
            _LOGGER.info("features for %s ready (%.0f s)", name, secs)
        if args.prune:
            keep = set().union(*(runner.cache_paths(c) for c in sets), runner.fold_records())
            n, size = runner.prune_cache(keep)
            _LOGGER.info("pruned %d stale cache files (%.1f MB) from %s; kept %d",
                         n, size / 1e6, runner.cache, len(keep))
        return 0
    if args.cmd == "cv":
        only = [int(f) for f in args.folds.split(",")] if args.folds else None
        res = runner.run_cv(args.protocol, only, out)
        report.log_cv(res)
        if only is None:
            report.confusion_png(res, out / f"confusion-{args.protocol}.png")
        return 0
    if args.cmd == "all":
        cv_results, card = runner.run_all(out, command)
        for name, res in cv_results.items():
            report.log_cv(res)
            report.confusion_png(res, out / f"confusion-{name}.png")
    else:
        cv_results = {}
        for name in cfg.protocols:
            path = out / f"cv-{name}.json"
            if path.is_file():
                cv_results[name] = CvResult.from_dict(json.loads(path.read_text()))
        card = runner.run_final(out, cv_results, command)
    total = time.time() - t0
    if args.cmd == "all":
        (out / "timings.json").write_text(json.dumps(
            {"all_seconds": round(total, 1), "command": command,
             # Folds reused from an earlier run cost no time here: a timing is only a full
             # run's when this is 0 (use --fresh to measure one).
             "folds_reused": sum(len(v.folds_reused) for v in cv_results.values()),
             "schedule": (f"{cfg.parallel_folds} folds at a time, every protocol's in one "
                          "pool, the shipped model trained beside them; "
                          "cv_<protocol>_seconds: wall time until that protocol's last fold "
                          "ended (they overlap)" if cfg.parallel_folds > 1 else
                          "one fold at a time, one protocol after another, then the shipped "
                          "model"),
             **{f"cv_{k}_seconds": v.seconds for k, v in cv_results.items()},
             "fit_seconds": round(card.training.get("train_seconds", 0.0), 1)}, indent=1) + "\n")
    report.render(out, cfg, card.name)
    _LOGGER.info("done in %.1f min", total / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
