"""``serd devices``: the input devices PortAudio sees, to choose ``audio.device`` from.

One line per input device: its index, name, input channels, default sample rate and host
API, the default input marked with ``*``.  ``audio.device`` takes the index or (part of)
the name.  ``--json`` prints one JSON object per device instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_NO_DEVICES = 69  # EX_UNAVAILABLE: PortAudio is missing or lists no input device


def _parser() -> argparse.ArgumentParser:
    from serd.cli import OneLineParser  # noqa: PLC0415

    p = OneLineParser(
        prog="serd devices",
        description="List the audio input devices (index, name, input channels, default "
        "sample rate); set audio.device in the config to an index or part of a name.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per device")
    return p


def _default_input_index() -> int | None:
    from serd.capture import _sd  # noqa: PLC0415

    try:
        info = _sd().query_devices(kind="input")
    except Exception:  # no default input: PortAudio raises PortAudioError or ValueError
        return None
    return int(info["index"])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from serd.capture import CaptureError, list_input_devices  # noqa: PLC0415

    try:
        devices = list_input_devices()
        default = _default_input_index()
    except CaptureError as exc:
        print(f"serd: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICES
    for d in devices:
        if args.json:
            print(json.dumps({**dataclasses.asdict(d), "default": d.index == default}))
        else:
            mark = "*" if d.index == default else " "
            print(f"{mark}{d.index:3d}  {d.name}  ({d.max_input_channels} ch, "
                  f"{d.default_samplerate:g} Hz, {d.hostapi})")
    if not devices:
        print("serd: no input devices (is the microphone plugged in, and may this user "
              "use audio: the audio group?)", file=sys.stderr)
        return EXIT_NO_DEVICES
    if not args.json:
        print("(* = the default input; set audio.device to an index or part of a name)",
              file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
