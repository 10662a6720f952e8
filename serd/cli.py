"""Command line: ``serd`` (the daemon), ``serd --once FILE...`` (the same pipeline on files),
``serd --once --publish FILE...`` (files through the daemon's event path to the broker),
``serd listen`` (a live table of every device), ``serd dashboard`` (the web page) and
``serd devices`` (the input devices to choose ``audio.device`` from).

Imports are lazy so that ``serd --once`` starts fast and never loads the MQTT client, the
audio device layer, TensorFlow, Keras or librosa.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

# numpy's OpenBLAS starts a pool of one thread per core when numpy is first imported.
# serd's matrix products are tiny and kept on one thread (serd.features._matmul), so the
# pool only costs start-up: about 45 ms of CPU in a 0.25 s ``serd --once``.  Set before
# anything imports numpy; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from serd.config import Config
    from serd.model import Classifier
    from serd.once import FileResult, SharedLine

_LOGGER = logging.getLogger("serd")

EXIT_OK = 0
EXIT_BAD_INPUT = 2
# --check-config --probe: the microphone or the broker could not be reached (EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69
# --once --publish: events are still in the replay spool when serd gives up waiting for
# the broker (EX_TEMPFAIL, as serd.config.EXIT_TEMPFAIL: the same command later delivers them).
EXIT_UNDELIVERED = 75
# --once --publish waits this long by default, after the last file, for the broker's
# acknowledgements (--wait).
PUBLISH_WAIT_SECONDS = 10.0

# Subcommands with their own options; each module has main(argv) -> exit code.
_SUBCOMMANDS = {"listen": "serd.listen", "dashboard": "serd.dashboard.server",
                "devices": "serd.devices", "forget": "serd.forget"}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong and where to look), exit code 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        # What libsndfile reads is asked only when help is shown: asking imports the
        # decoder (numpy, soundfile), which every start of serd would otherwise pay for.
        for action in self._actions:
            if action.help and _FORMATS_TOKEN in action.help:
                action.help = action.help.replace(
                    _SUFFIXES_TOKEN, ", ".join(_suffixes())).replace(_FORMATS_TOKEN, _formats())
        return super().format_help()


_SUFFIXES_TOKEN = "<suffixes>"
_FORMATS_TOKEN = "<formats>"


def _formats() -> str:
    """The container formats this libsndfile reads (MP3 and Opus where it is 1.1+)."""
    try:
        import soundfile  # noqa: PLC0415

        names = sorted(soundfile.available_formats())
    except (ImportError, OSError):
        return "WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF"
    # OGG stands for Vorbis and Opus alike; RAW needs parameters serd cannot guess.
    return ", ".join(("OGG/Vorbis/Opus" if n == "OGG" else n) for n in names if n != "RAW")


class _Version(argparse.Action):
    """``--version``: serd's version, the model and the TFLite runtime it would use."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        print(_version_text())
        parser.exit(EXIT_OK)


def _suffixes() -> tuple[str, ...]:
    from serd.decode import AUDIO_SUFFIXES  # noqa: PLC0415

    return AUDIO_SUFFIXES


def _version_text() -> str:
    from serd import __version__  # noqa: PLC0415
    from serd.model import (  # noqa: PLC0415
        ModelCard,
        ModelError,
        ModelSettings,
        _interpreter_factory,
        card_path_for,
    )

    lines = [f"serd {__version__}"]
    try:
        path = ModelSettings().resolved_path()
        card = ModelCard.load(card_path_for(path))
        lines.append(f"model {card.name} ({path}, sha256 {card.sha256[:12]})")
    except (ModelError, OSError) as exc:
        lines.append(f"model: unavailable ({exc})")
    try:
        runtime = _interpreter_factory()[0]
        lines.append(f"runtime {runtime} {_distribution_version(runtime)}")
    except ModelError as exc:
        lines.append(f"runtime: {exc}")
    return "\n".join(lines)


def _distribution_version(runtime: str) -> str:
    """The installed version of the runtime's package ("?" when unknown): a bug report
    needs it, and two LiteRT releases need not compute the same int8 results."""
    from importlib import metadata  # noqa: PLC0415

    base = runtime.split(".", maxsplit=1)[0]
    for dist in (base, f"{base}-cpu"):  # tensorflow.lite comes from tensorflow(-cpu)
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="serd",
        description="Speech-emotion recognition on the device: microphone -> emotion events "
        "over MQTT.  With --once, run the same pipeline on audio files and print the result.",
        epilog="Also: serd listen [--json] (live table of every device on the broker), "
        "serd dashboard [--port 8080] [--broker ws://host:9001] (live web page), "
        "serd devices [--json] (input devices for audio.device) and "
        "serd forget DEVICE... (remove a retired device's retained topics); "
        "see serd listen --help, serd dashboard --help, serd forget --help and "
        "docs/dashboard.md.",
    )
    p.add_argument("--version", action=_Version, nargs=0,
                   help="print serd's version, the default model and the TFLite runtime")
    p.add_argument("--config", metavar="FILE", help="YAML config (only keys that differ "
                   "from the defaults; see config.yaml); default $SERD_CONFIG or built-in")
    p.add_argument("--once", nargs="*", metavar="PATH",
                   help="analyse audio files or folders and exit; - reads one file from "
                   f"standard input; folders are searched for {_SUFFIXES_TOKEN}; "
                   f"files in any format libsndfile reads: {_FORMATS_TOKEN}")
    p.add_argument("paths", nargs="*", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true",
                   help="with --once: print JSON lines (window, utterance, summary)")
    p.add_argument("--line", action="store_true",
                   help="with --once: judge the files as one line, each against the voice "
                   "reference a device's line learns from all of them (a first pass hears "
                   "them, a second judges), instead of each as a line's first call; fair "
                   "when the files are like a line's calls: mostly neutral, several speakers")
    p.add_argument("--publish", action="store_true",
                   help="with --once: replay the files through the daemon's event path (as a "
                   "microphone, with alerts) and publish to mqtt.host (localhost when unset) "
                   "as device DEVICE_ID-replay, instead of printing")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="with --publish: replay speed, 1 = real time (default), 2 = twice as "
                   "fast, 0 = as fast as possible")
    p.add_argument("--loop", action="store_true",
                   help="with --publish: replay the files over and over until Ctrl-C")
    p.add_argument("--wait", type=float, default=PUBLISH_WAIT_SECONDS, metavar="SECONDS",
                   help="with --publish: after the last file, wait up to this long for the "
                   "broker to acknowledge every event (default %(default)g); events still "
                   f"undelivered then stay spooled and the exit code is {EXIT_UNDELIVERED}")
    p.add_argument("--device-id", metavar="ID",
                   help="with --publish: the device id to publish as (default: the "
                   "configured one plus -replay, so a live daemon is not disturbed)")
    p.add_argument("--model", metavar="FILE.tflite", help="override model.path")
    p.add_argument("--channels", metavar="NAMES",
                   help="override audio.channels: names in channel order, each optionally "
                   "with its role, e.g. agent,customer or left:agent,right:customer; with "
                   "--once, a file's channels are then analysed apart (the agent's only "
                   "mutes the others; docs/lawful-use.md)")
    p.add_argument("--check-config", action="store_true",
                   help="check everything the daemon checks when it starts (config, model "
                   "and card, alert labels, TLS and password files, discovery), print the "
                   "effective config, exit")
    p.add_argument("--probe", action="store_true",
                   help="with --check-config: also open the microphone and connect to the "
                   f"broker, one line each (exit {EXIT_UNAVAILABLE} if either fails)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


EXIT_BROKEN_PIPE = 141
"""The reader of standard output went away (``serd --once DIR | head``): 128 + SIGPIPE, as
a shell reports for the other tools of such a pipe."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # Was a traceback.  Python flushes stdout once more at exit and would complain
        # again: point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _SUBCOMMANDS:
        import importlib  # noqa: PLC0415

        sub: Any = importlib.import_module(_SUBCOMMANDS[argv[0]])
        return int(sub.main(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    # Paths may follow --once directly or come after other options
    # (`serd --once --publish --speed 2 FILES`).
    if args.paths and args.once is None:
        parser.error("audio paths need --once (serd --once PATH...)")
    if args.once is not None:
        args.once = [*args.once, *args.paths]
        if not args.once:
            parser.error("argument --once: expected at least one PATH")
    if (args.publish or args.loop or args.device_id) and not args.once:
        parser.error("--publish, --loop and --device-id need --once FILE...")
    if (args.loop or args.device_id or args.speed != 1.0) and not args.publish:
        parser.error("--speed, --loop and --device-id need --publish")
    if args.line and not args.once:
        parser.error("--line needs --once PATH... (the daemon's lines always learn their "
                     "reference as they go)")
    if args.line and args.publish:
        parser.error("--line judges files after hearing them all; --publish replays them as "
                     "a device hears them, its line learning as it goes: pick one")
    if args.publish and args.json:
        parser.error("--json prints results; --publish sends events to the broker: pick one")
    if args.json and not args.once:
        parser.error("--json needs --once PATH... (the daemon publishes JSON events to MQTT; "
                     "serd listen --json prints them)")
    if args.probe and not args.check_config:
        parser.error("--probe needs --check-config")
    if args.check_config and args.once is not None:
        # Was: the files were silently not analysed and the check's exit code was returned.
        parser.error("--check-config checks the daemon's configuration and --once analyses "
                     "files: pick one")
    if args.wait != PUBLISH_WAIT_SECONDS and not args.publish:
        parser.error("--wait needs --publish")
    if args.wait < 0:
        parser.error("--wait must be >= 0 seconds")
    if args.once and args.once.count("-") > 1:
        parser.error("--once: standard input (-) can be read only once")
    if args.speed < 0:
        parser.error("--speed must be >= 0 (0 = as fast as possible)")
    from serd.config import EXIT_CONFIG, EXIT_DATAERR, load  # noqa: PLC0415
    from serd.model import ModelError  # noqa: PLC0415
    from serd.validate import ConfigError  # noqa: PLC0415

    try:
        cfg = load(args.config)
        if args.model:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=args.model))
        if args.channels is not None:
            cfg = _with_channels(cfg, args.channels)
    except ConfigError as exc:
        _setup_logging("error")
        print(f"serd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    level = "debug" if args.verbose else ("warning" if args.quiet else cfg.log_level)
    _setup_logging(level)
    if args.quiet:
        from serd.quiet import set_quiet  # noqa: PLC0415

        set_quiet(True)
    if args.once and "-" in args.once:
        try:
            stdin_copy = _stdin_in_memory()
        except ValueError as exc:
            print(f"serd: --once -: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        args.once = [str(stdin_copy) if p == "-" else p for p in args.once]
    try:
        if args.check_config:
            return _check_config(cfg, probe=args.probe)
        if args.once and args.publish:
            return run_publish(cfg, args.once, speed=args.speed, loop=args.loop,
                               device_id=args.device_id, wait_seconds=args.wait)
        if args.once:
            return run_once(cfg, args.once, as_json=args.json, line=args.line)
        from serd.daemon import run  # noqa: PLC0415

        return run(cfg)
    except ModelError as exc:
        print(f"serd: model error: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    except ConfigError as exc:
        print(f"serd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


REPLAY_SUFFIX = "-replay"


def replay_device_id(device_id: str) -> str:
    """The device id ``serd --once --publish`` replays as: ``device_id`` plus ``-replay``,
    the id cut so that the whole stays within the 64 characters a device id may have (a
    long host name would otherwise make every replay a usage error)."""
    return device_id[: 64 - len(REPLAY_SUFFIX)] + REPLAY_SUFFIX


def _with_channels(cfg: Config, text: str) -> Config:
    """``cfg`` with ``--channels`` as its ``audio.channels``; ConfigError if unusable."""
    from serd.roles import parse_channels_flag  # noqa: PLC0415
    from serd.validate import ConfigError  # noqa: PLC0415

    try:
        return dataclasses.replace(cfg, audio=dataclasses.replace(
            cfg.audio, channels=parse_channels_flag(text)))
    except ValueError as exc:
        raise ConfigError(f"--channels {text}: {exc}") from None


STDIN_NAME = "-"
"""How ``--once -`` names standard input in its output."""


def _stdin_in_memory() -> Path:
    """Standard input copied into an anonymous in-memory file; its /proc path.

    libsndfile needs to seek (headers at the end, MP3 and OGG probing), which a pipe cannot;
    a memfd can, and nothing is written to disk.  Raises ValueError (one line) when there
    is nothing to read.
    """
    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("standard input is a terminal: pipe audio into it "
                         "(cat call.wav | serd --once -)")
    if not hasattr(os, "memfd_create"):
        raise ValueError("reading audio from standard input needs Linux (memfd)")
    fd = os.memfd_create("serd-stdin")
    size = 0
    with os.fdopen(os.dup(fd), "wb") as dst:
        while chunk := sys.stdin.buffer.read(1 << 20):
            dst.write(chunk)
            size += len(chunk)
    if size == 0:
        os.close(fd)
        raise ValueError("standard input is empty: no audio was piped in")
    return Path(f"/proc/self/fd/{fd}")


def _shown(path: Path) -> Path:
    """The name a file is printed under: ``-`` for standard input's in-memory copy."""
    return Path(STDIN_NAME) if str(path).startswith("/proc/self/fd/") else path


def _check_config(cfg: Config, *, probe: bool = False) -> int:
    from serd.model import load_classifier  # noqa: PLC0415
    from serd.preflight import start_checks  # noqa: PLC0415

    clf = load_classifier(cfg.model)
    start_checks(cfg, clf)
    print(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    print(f"model {clf.name}: {len(clf.labels)} labels ({', '.join(clf.labels)}), "
          f"runtime {clf.runtime}"
          f"{', with its voice branch' if clf.voice is not None else ''}", file=sys.stderr)
    from serd.roles import describe  # noqa: PLC0415

    print(describe(cfg.audio.resolved_channels), file=sys.stderr)
    # The id the dashboards will show, which the config usually leaves to the host name.
    print(f"device {cfg.resolved_device_id}"
          f"{'' if cfg.device_id else ' (host name + machine-id suffix)'}, "
          f"state in {cfg.resolved_state_dir}", file=sys.stderr)
    # The state directory and spool, as the daemon will find them (serd.statedir).
    from serd.config import EXIT_STATE  # noqa: PLC0415
    from serd.statedir import StateDirError, inspect  # noqa: PLC0415

    try:
        for line in inspect(cfg.resolved_state_dir):
            print(f"serd: warning: {line}", file=sys.stderr)
    except StateDirError as exc:
        print(f"serd: storage error: {exc}", file=sys.stderr)
        return EXIT_STATE
    if probe:
        return _probe(cfg, clf.card.features.sample_rate)
    return EXIT_OK


def _probe(cfg: Config, rate: int) -> int:
    """``--probe``: open the microphone and connect to the broker; one line each."""
    from serd.preflight import probe_broker, probe_microphone  # noqa: PLC0415

    results = [probe_microphone(cfg, rate),
               probe_broker(cfg.mqtt, min(10.0, cfg.mqtt.connect_timeout_seconds))]
    for r in results:
        print(f"serd: {'ok' if r.ok else 'FAILED'}: {r.line}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_UNAVAILABLE


# -- serd --once --publish -------------------------------------------------------------------


def run_publish(cfg: Config, paths: Sequence[str], *, speed: float = 1.0, loop: bool = False,
                device_id: str | None = None,
                wait_seconds: float = PUBLISH_WAIT_SECONDS) -> int:
    """Replay files as a microphone through :class:`~serd.daemon.Daemon`: the same events
    (and alerts) a device would publish.  After the last file, wait up to ``wait_seconds``
    for the broker to acknowledge them.  Exit code 2 if any file was unusable,
    :data:`EXIT_UNDELIVERED` if events are still spooled."""
    from serd.daemon import Daemon  # noqa: PLC0415
    from serd.decode import AudioError, find_audio, probe  # noqa: PLC0415
    from serd.events import validate_device_id  # noqa: PLC0415
    from serd.model import load_classifier  # noqa: PLC0415
    from serd.replay import ReplaySource  # noqa: PLC0415
    from serd.roles import UNSPECIFIED, ChannelSpec  # noqa: PLC0415
    from serd.validate import ConfigError  # noqa: PLC0415

    files: list[Path] = []
    failed = 0
    # Named channels (several in audio.channels or --channels): each file's channels are
    # replayed apart, as the line's device would deliver them, and the roles apply.
    width = len(cfg.audio.channels) if len(cfg.audio.channels) > 1 else 0
    counts: list[int] = []
    for path in find_audio(list(paths)):
        try:
            n = probe(path).channels
            if width and 1 < n < width:
                raise AudioError(f"has {n} channels but audio.channels names {width} "
                                 f"({', '.join(cfg.audio.channel_names)})")
        except AudioError as exc:
            failed += 1
            print(f"serd: {_shown(path)}: {exc}", file=sys.stderr)
            continue
        files.append(path)
        counts.append(n)
    if width and counts and min(counts) == 1 < max(counts):
        # Was: one mono file in the batch made every file one mixed line, the named stereo
        # calls included, so their agent channels were analysed and published.  A replay
        # is one stream of one channel layout: the multi-channel files keep theirs.
        for f, n in zip(files, counts, strict=True):
            if n == 1:
                failed += 1
                print(f"serd: {_shown(f)}: has one channel while the other files' channels "
                      f"are replayed apart ({', '.join(cfg.audio.channel_names)}); replay "
                      "one-channel files in a run of their own (docs/lawful-use.md)",
                      file=sys.stderr)
        files = [f for f, n in zip(files, counts, strict=True) if n > 1]
        counts = [n for n in counts if n > 1]
    if not files:
        print("serd: no usable audio files in " + ", ".join(paths), file=sys.stderr)
        return EXIT_BAD_INPUT
    split = bool(width) and min(counts) > 1
    if width and not split:
        # One stream: mono files can only be replayed as one mixed line.
        print(f"serd: note: {_shown(files[0])}{' and others' if len(files) > 1 else ''} "
              f"{'have' if len(files) > 1 else 'has'} one channel: replayed as one mixed "
              "line 'main' (role unspecified), which also carries the agent's voice "
              "(docs/lawful-use.md)", file=sys.stderr)
    elif not width and max(counts) > 1:
        print(f"serd: note: multi-channel files are mixed to one channel "
              f"'{cfg.audio.channel_names[0]}'; name the channels to replay each apart, e.g. "
              "--channels agent,customer or audio.channels in the config", file=sys.stderr)
    try:
        audio = cfg.audio if split else dataclasses.replace(
            cfg.audio, channels=(ChannelSpec("main", UNSPECIFIED),) if width
            else cfg.audio.channels[:1])
    except ValueError as exc:  # e.g. unspecified is not in audio.analyse_roles
        raise ConfigError(f"audio.{exc} (replaying the files as one mixed line)") from None
    device = device_id or replay_device_id(cfg.resolved_device_id)
    try:
        validate_device_id(device)
    except ValueError as exc:
        print(f"serd: --device-id {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    mqtt = cfg.mqtt
    if mqtt.host is None:
        _LOGGER.info("mqtt.host is not set: publishing to localhost:%d", mqtt.port)
        mqtt = dataclasses.replace(mqtt, host="localhost")
    # Its own device id, client id and spool: a daemon running on this machine keeps its
    # session, its retained status and its seq numbers.
    mqtt = dataclasses.replace(
        mqtt, client_id=f"{mqtt.client_id}-replay" if mqtt.client_id else None
    )
    cfg = dataclasses.replace(
        cfg,
        device_id=device,
        state_dir=str(cfg.resolved_state_dir / "replay" / device),
        mqtt=mqtt,
        audio=audio,
    )
    clf = load_classifier(cfg.model)

    class UntilEnd(ReplaySource):
        """Stops the daemon once every file has been played (unless looping) and the
        broker has acknowledged every event, or ``wait_seconds`` after the last file."""

        deadline: float | None = None

        def read(self, timeout_seconds: float) -> Any:
            block = super().read(timeout_seconds)
            if block is None and self.finished:
                now = time.monotonic()
                if self.deadline is None:
                    self.deadline = now + wait_seconds
                if daemon.publisher.stats().spool_depth == 0 or now >= self.deadline:
                    daemon.request_stop()
            return block

    # A second of silence between files closes each file's last utterance, as a pause would.
    source = UntilEnd(files, clf.card.features.sample_rate, speed=speed, loop=loop,
                      gap_seconds=1.0, channels=width if split else None)
    daemon = Daemon(cfg, source=source, classifier=clf)
    daemon.install_signal_handlers()
    print(f"serd: replaying {len(files)} file(s) "
          f"{'in a loop ' if loop else ''}at {'full' if speed == 0 else f'{speed:g}x'} speed "
          f"as device {device} to mqtt{'s' if mqtt.tls else ''}://{mqtt.host}:{mqtt.port}/"
          f"{mqtt.topic_prefix}/{device}/", file=sys.stderr, flush=True)
    daemon.run()
    c = daemon.counters
    stats = daemon.publisher.stats()
    left = stats.spool_depth + stats.held_in_memory
    print(f"serd: {'done' if not left else 'stopped'}: {c.audio_seconds:.1f} s of audio, "
          f"{c.events} emotion events ({c.utterances} "
          f"utterance{'' if c.utterances == 1 else 's'}), {c.alerts} alert events",
          file=sys.stderr)
    if left:
        # Not "done": the events are safe in the spool, not at the broker.
        # A refusal is an answer: "did not acknowledge in time" would send the operator
        # after the network instead of the broker's ACL.
        why = (f"{mqtt.host}:{mqtt.port} refused {stats.refused_kept} of them (check the "
               "broker's ACL for this client)" if stats.refused_kept else
               f"{mqtt.host}:{mqtt.port} did not acknowledge them within {wait_seconds:g} s")
        print(f"serd: {left} event(s) NOT delivered: {why}; they stay spooled in "
              f"{cfg.resolved_state_dir} and go out first on the next serd --once --publish "
              f"as device {device}", file=sys.stderr)
        return EXIT_UNDELIVERED
    return EXIT_BAD_INPUT if failed else EXIT_OK


# -- serd --once ---------------------------------------------------------------------------


def run_once(cfg: Config, paths: Sequence[str], *, as_json: bool, out: TextIO | None = None,
             line: bool = False) -> int:
    """Analyse files through the daemon's pipeline; exit code 2 if any file failed.
    ``line``: judge them as one line (:class:`serd.once.SharedLine`)."""
    from serd.decode import AudioError, find_audio  # noqa: PLC0415
    from serd.model import load_classifier  # noqa: PLC0415
    from serd.once import SharedLine, adapts, analyse_channels, mixing_note  # noqa: PLC0415
    from serd.report import Progress, RunTotals  # noqa: PLC0415

    out = out or sys.stdout
    clf = load_classifier(cfg.model)
    files: list[Path] = []
    empty: list[str] = []
    for raw in paths:
        found = list(find_audio([raw]))
        if not found and Path(raw).is_dir():
            empty.append(raw)
        files += found
    if files:
        # Was silent beside other paths: a folder given by mistake looked analysed.
        for raw in empty:
            print(f"serd: no audio files found in {raw}", file=sys.stderr)
    totals = RunTotals()
    notes: set[str] = set()
    shared: SharedLine | None = None
    if line and files and not adapts(clf):
        print("serd: note: --line changes nothing here: "
              + ("model.adapt is off, so no line learns a reference; each file is judged "
                 "against the model's prior"
                 if clf.voice is not None and clf.voice.head.reference is not None
                 else "the model has no voice branch with a line reference"),
              file=sys.stderr)
    elif line and files:
        shared = SharedLine()
        _hear_all(shared, cfg, clf, files)
    # A bar only for runs of several files, on a terminal; cleared before any other line.
    progress = Progress(len(files), sys.stderr, enabled=None if len(files) > 1 else False)
    for i, path in enumerate(files):
        progress(i, totals.unreadable, str(_shown(path)))
        try:
            # One result per analysed channel when channels are named (serd.once).
            results = analyse_channels(cfg, clf, path, shared)
        except AudioError as exc:
            totals.unreadable += 1
            progress.clear()
            print(f"serd: {_shown(path)}: {exc}", file=sys.stderr)
            continue
        except MemoryError:
            totals.unreadable += 1
            progress.clear()
            print(f"serd: {_shown(path)}: out of memory while decoding", file=sys.stderr)
            continue
        progress.clear()
        for k, result in enumerate(results):
            result.path = _shown(result.path)
            note = mixing_note(result, cfg.audio)
            if note is not None and note[0] not in notes:
                notes.add(note[0])  # each kind once per run
                # "note:" tells it from an error line (a file that could not be read).
                print(f"serd: note: {note[1]}", file=sys.stderr)
            totals.add(result, new_file=k == 0)
            if as_json:
                _print_json(result, out)
            else:
                _print_timeline(result, out)
        out.flush()
    progress.close()
    if not files:
        print("serd: no audio files found in " + ", ".join(paths), file=sys.stderr)
        return EXIT_BAD_INPUT
    # The closing summary, for runs of more than one file (one file's summary line says
    # it all, and stays the last line for scripts that read one file).
    if len(files) > 1:
        if shared is not None:
            totals.line_windows = shared.windows
        out.write(json.dumps(totals.record()) + "\n" if as_json else totals.text())
    out.flush()
    return EXIT_BAD_INPUT if totals.unreadable else EXIT_OK


def _hear_all(line: SharedLine, cfg: Config, clf: Classifier, files: list[Path]) -> None:
    """``--line``'s first pass: the line hears every file once; what it judges then is not
    printed, and a file that cannot be read is reported by the second pass."""
    from serd.decode import AudioError  # noqa: PLC0415
    from serd.report import Progress  # noqa: PLC0415

    progress = Progress(len(files), sys.stderr, enabled=None if len(files) > 1 else False)
    for i, path in enumerate(files):
        progress(i, 0, f"hearing {_shown(path)}")
        try:
            line.hear(cfg, clf, path)
        except (AudioError, MemoryError):
            continue
    line.freeze()
    progress.close()
    heard = line.heard
    if not any(heard.values()):
        print("serd: note: --line: the line heard no speech in these files; each file is "
              "judged against the model's prior", file=sys.stderr)
        return
    per = ", ".join(f"{n} window{'' if n == 1 else 's'} on channel {name}"
                    for name, n in heard.items()) if len(heard) > 1 else \
        f"{line.windows} window{'' if line.windows == 1 else 's'}"
    print(f"serd: note: judged as one line, against the reference it learnt from {per} of "
          "speech in these files (--line)", file=sys.stderr)


def _silence_records(result: FileResult) -> list[dict[str, Any]]:
    """Hop-long non-speech records for the stretches no utterance covers (timeline gaps)."""
    spans = sorted((d.start_s, d.end_s) for d in result.decisions if d.type == "utterance")
    gaps: list[tuple[float, float]] = []
    t = 0.0
    for s, e in spans:
        if s > t:
            gaps.append((t, s))
        t = max(t, e)
    if result.duration_s > t:
        gaps.append((t, result.duration_s))
    recs = []
    for s, e in gaps:
        a = s
        while a < e - 1e-6:
            b = min(e, a + result.hop_s)
            recs.append({"type": "window", "file": str(result.path), "start_s": round(a, 3),
                         "end_s": round(b, 3), "speech": False, "label": None,
                         "confidence": 0.0, "probs": {}})
            a = b
    return recs


def _print_json(result: FileResult, out: TextIO) -> None:
    records: list[dict[str, Any]] = _silence_records(result)
    for d in result.decisions:
        if d.type == "window":
            records.append({"type": "window", "file": str(result.path), "start_s": d.start_s,
                            "end_s": d.end_s, "speech": True, "label": d.label,
                            "confidence": d.confidence, "probs": d.probs})
        else:
            records.append({"type": "utterance", "file": str(result.path), "start_s": d.start_s,
                            "end_s": d.end_s, "label": d.label, "confidence": d.confidence,
                            "probs": d.probs, "windows": d.windows})
    # Time order; at equal start, windows before the utterance that contains them.
    order = {"window": 0, "utterance": 1}
    records.sort(key=lambda r: (r["start_s"], order[r["type"]], r["end_s"]))
    for rec in [*records, _summary_record(result)]:
        out.write(json.dumps(_with_channel(rec, result)) + "\n")


def _with_channel(record: dict[str, Any], result: FileResult) -> dict[str, Any]:
    """``record`` with the channel and its role after ``file``."""
    head = {k: record[k] for k in ("type", "file")}
    out = {**head, "channel": result.channel, "role": result.role, **record}
    if record["type"] == "summary":
        # Seconds of this channel kept from the classifier while the agent spoke.
        out["muted_s"] = round(result.muted_s, 3)
    return out


def _summary_record(result: FileResult) -> dict[str, Any]:
    """The file's ``summary`` line: ``speech`` false and ``verdict`` "no speech found" when
    the gate heard none (distinct from an unsure verdict: speech, but no label claimed);
    ``emotions`` gives each label's share of the speech and its longest stretch."""
    from serd.report import breakdown, verdict_name  # noqa: PLC0415

    s = result.summary
    return {
        "type": "summary", "file": str(result.path),
        "duration_s": round(result.duration_s, 3), "speech_s": round(result.speech_s, 3),
        "speech": s is not None, "verdict": verdict_name(result),
        "label": s.label if s else None, "confidence": s.confidence if s else 0.0,
        "probs": s.probs if s else {},
        "emotions": [dataclasses.asdict(x) for x in breakdown(result)],
    }


def _bar(p: float, width: int = 20) -> str:
    n = round(p * width)
    return "#" * n + "." * (width - n)


def _print_timeline(result: FileResult, out: TextIO) -> None:
    w = out.write
    muted = f", {result.muted_s:.1f} s muted: agent speaking" if result.muted_s else ""
    where = f"  channel {result.channel} ({result.role}{muted})" if result.split else ""
    w(f"{result.path}{where}  ({result.duration_s:.1f} s, speech {result.speech_s:.1f} s)\n")
    for d in result.decisions:
        label = d.label or "(unsure)"
        if d.type == "window":
            w(f"  {d.start_s:7.2f}-{d.end_s:7.2f} s  window     {label:<9} "
              f"{d.confidence:4.2f} {_bar(d.confidence)}\n")
        else:
            w(f"  {d.start_s:7.2f}-{d.end_s:7.2f} s  utterance  {label:<9} "
              f"{d.confidence:4.2f}  ({d.windows} window{'' if d.windows == 1 else 's'})\n")
    s = result.summary
    if s is None:
        # Not an unsure verdict: the gate heard nothing it took for speech.
        w(f"  verdict: no speech found (in {result.duration_s:.1f} s of audio)\n\n")
        return
    from serd.report import LONG_SPEECH_SECONDS, breakdown, breakdown_text  # noqa: PLC0415

    ranked = sorted(s.probs.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{k} {v:.2f}" for k, v in ranked[:3])
    if result.speech_s >= LONG_SPEECH_SECONDS:
        # Over a call the mean says little: say how the speech divides between emotions.
        w(f"  speech by emotion: {breakdown_text(breakdown(result))}\n")
        w(f"  verdict (mean of all windows): {s.label or '(unsure)'}  {s.confidence:.2f}   "
          f"[{top}]\n\n")
        return
    w(f"  verdict: {s.label or '(unsure)'}  {s.confidence:.2f}   [{top}]\n\n")


if __name__ == "__main__":
    raise SystemExit(main())
