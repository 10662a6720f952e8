"""A PulseAudio virtual microphone that PortAudio records from, and an in-process stand-in.

:class:`VirtualMic` starts a private PulseAudio server in a temporary runtime directory with
one stereo 48 kHz null sink, ``vmic``.  Whatever ``paplay`` plays into the sink comes out of
its monitor source, ``vmic.monitor``, which is the default source, so it is what ALSA's
``pulse``/``default`` devices record.  An ALSA PCM named ``serd_vmic`` (written to
``$XDG_CONFIG_HOME/alsa/asoundrc``) records exactly ``vmic.monitor``: it plays the part of
a named USB microphone.  ``settings`` (``PULSE_SERVER``, ``XDG_RUNTIME_DIR``,
``XDG_CONFIG_HOME``) is what a process needs in its environment to use the server.

``unplug()`` unloads the null sink.  No other sink or source exists (deliberately no
``module-always-sink``: with it, PulseAudio 16 rescues the recording stream onto the
fallback ``auto_null.monitor`` and nothing looks unplugged), so the recording stream is
killed, PortAudio's stream becomes inactive, and opening any input fails until ``plug()``
loads the sink again - the way a pulled USB microphone behaves.

:class:`ArraySource` is a microphone for in-process tests: a prepared array in chunks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from serd_testkit.tools import require

SINK = "vmic"
ALSA_DEVICE = "serd_vmic"
SINK_ARGS = [f"sink_name={SINK}", "channels=2", "rate=48000", "format=float32le"]
_START_TIMEOUT_SECONDS = 30.0

_ASOUNDRC = f"""\
pcm.{ALSA_DEVICE} {{
    type pulse
    device "{SINK}.monitor"
    hint {{
        show on
        description "serd test virtual microphone"
    }}
}}
"""


class VirtualMic:
    """Handle on a private PulseAudio server; see the module docstring.

    ``start()`` brings the server up (RuntimeError with its log's tail when it does not),
    ``close()`` stops it and removes its folder; a context manager does both.
    """

    sink = SINK
    source = f"{SINK}.monitor"
    alsa_device = ALSA_DEVICE
    sink_rate = 48000
    sink_channels = 2

    def __init__(self) -> None:
        require(("pulseaudio", "pactl", "paplay"), "virtual microphone",
                "pulseaudio pulseaudio-utils libasound2-plugins")
        # Short path: the server's socket path must fit in sockaddr_un (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="serd-pa-"))
        runtime = self.root / "run"
        config = self.root / "config"
        (runtime / "pulse").mkdir(parents=True)
        (config / "alsa").mkdir(parents=True)
        (config / "pulse").mkdir(parents=True)
        runtime.chmod(0o700)
        (config / "alsa" / "asoundrc").write_text(_ASOUNDRC)
        # Never let a client autospawn a server of its own when ours is unreachable.
        (config / "pulse" / "client.conf").write_text("autospawn = no\n")
        self.socket = runtime / "pulse" / "native"
        self.settings = {
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_CONFIG_HOME": str(config),
        }
        self.env = {**os.environ, **self.settings}
        self.log = self.root / "pulseaudio.log"
        self._server: subprocess.Popen[bytes] | None = None
        self._module: int | None = None
        self._players: list[subprocess.Popen[bytes]] = []

    def start(self) -> VirtualMic:
        """Start the server with the sink plugged in and made the default."""
        with self.log.open("wb") as log_file:
            self._server = subprocess.Popen(
                [
                    "pulseaudio",
                    "--daemonize=no",
                    "--system=no",
                    "-n",  # no default.pa: only the modules below
                    "--exit-idle-time=-1",
                    "--use-pid-file=no",
                    "--realtime=no",
                    "--high-priority=no",
                    "--log-target=stderr",
                    f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                    "--load=module-null-sink " + " ".join(SINK_ARGS),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        self._wait_for_server(self._server)
        self._module = self._find_module()
        self.plug()
        return self

    def _wait_for_server(self, server: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {server.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            probe = subprocess.run(
                ["pactl", "info"], env=self.env, capture_output=True, timeout=30, check=False
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"pulseaudio did not come up within {_START_TIMEOUT_SECONDS:.0f} s: "
                           f"{self.log.read_text()[-2000:]}")

    def close(self) -> None:
        """Stop the players and the server; remove the server's folder."""
        self.stop()
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against the private server; returns its stdout."""
        done = subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    @property
    def plugged(self) -> bool:
        return self._module is not None

    def _find_module(self) -> int | None:
        for line in self.pactl("list", "short", "modules").splitlines():
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] == "module-null-sink" and f"sink_name={SINK}" in line:
                return int(fields[0])
        return None

    def plug(self) -> None:
        """Load the null sink (again) and make it and its monitor the defaults."""
        if self._module is None:
            self._module = int(self.pactl("load-module", "module-null-sink", *SINK_ARGS).strip())
        self.pactl("set-default-sink", SINK)
        self.pactl("set-default-source", self.source)

    def unplug(self) -> None:
        """Unload the null sink: recording streams die and inputs cannot be opened."""
        self.stop()
        if self._module is not None:
            self.pactl("unload-module", str(self._module))
            self._module = None

    def play(self, path: str | os.PathLike[str], *, wait: bool = True) -> subprocess.Popen[bytes]:
        """Play an audio file (WAV, FLAC, anything libsndfile reads) into the microphone.

        With ``wait`` it returns once playback has finished (and fails if paplay did);
        otherwise it returns the running ``paplay`` process (see :meth:`stop`).
        """
        proc = subprocess.Popen(
            ["paplay", f"--device={SINK}", os.fspath(path)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._players.append(proc)
        if wait:
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"paplay {path} failed: {err.decode(errors='replace')}")
        return proc

    def stop(self) -> None:
        """Stop every ``paplay`` started by :meth:`play`."""
        for proc in self._players:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        self._players.clear()

    def reset(self) -> None:
        """Nothing playing, plugged in, defaults set."""
        self.stop()
        self.plug()


class ArraySource:
    """A stand-in microphone for in-process tests: hands out a prepared array in chunks."""

    def __init__(self, audio: np.ndarray, chunks: list[int]) -> None:
        self.audio = audio
        self.chunks = chunks
        self.pos = 0
        self.i = 0
        self.is_open = False
        self.device_name = "array"
        self.overflows = 0
        self.reopens = 0

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def read(self, timeout_seconds: float) -> np.ndarray | None:
        if self.pos >= self.audio.size:
            return None
        n = self.chunks[self.i % len(self.chunks)]
        self.i += 1
        block = self.audio[self.pos : self.pos + n]
        self.pos += n
        return block[:, None]


def gate_segments(x: np.ndarray, vad: object, size: int) -> list[tuple[int, int, int]]:
    """(start, end, windows) of each segment the :class:`serd.windows.Windower` finds in
    ``x`` (16 kHz float) with gate settings ``vad``, fed ``size`` samples a call: what the
    gate tests compare across chunk sizes and settings."""
    from serd.windows import SegmentEnd, Windower  # noqa: PLC0415

    w = Windower(vad=vad)  # type: ignore[arg-type]
    items = []
    for i in range(0, x.size, size):
        items += w(x[i : i + size])
    items += w.flush()
    return [(e.start_sample, e.end_sample, e.windows) for e in items
            if isinstance(e, SegmentEnd)]
