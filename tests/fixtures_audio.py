"""Fixture: a PulseAudio virtual microphone that PortAudio records from.

``virtual_mic`` (session scope) starts a private PulseAudio server in a temporary runtime
directory with one stereo 48 kHz null sink, ``vmic``.  Whatever ``paplay`` plays into the
sink comes out of its monitor source, ``vmic.monitor``, which is the default source, so it
is what ALSA's ``pulse``/``default`` devices record.  An ALSA PCM named ``serd_vmic``
(written to ``$XDG_CONFIG_HOME/alsa/asoundrc``) records exactly ``vmic.monitor``: it
plays the part of a named USB microphone.

``unplug()`` unloads the null sink.  No other sink or source exists (deliberately no
``module-always-sink``: with it, PulseAudio 16 rescues the recording stream onto the
fallback ``auto_null.monitor`` and nothing looks unplugged), so the recording stream is
killed, PortAudio's stream becomes inactive, and opening any input fails until
``plug()`` loads the sink again - the way a pulled USB microphone behaves.

The environment (``PULSE_SERVER``, ``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``) is set in
this process for the rest of the session, so PortAudio here and in subprocesses uses the
private server; PortAudio is re-initialised after the server is up because it
enumerates devices only at initialisation.

``mic`` (function scope) is the same object, reset for each test: nothing playing,
plugged in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SINK = "vmic"
ALSA_DEVICE = "serd_vmic"
SINK_ARGS = [f"sink_name={SINK}", "channels=2", "rate=48000", "format=float32le"]

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
    """Handle on the private PulseAudio server; see the module docstring."""

    sink = SINK
    source = f"{SINK}.monitor"
    alsa_device = ALSA_DEVICE
    sink_rate = 48000
    sink_channels = 2

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self._module: int | None = None
        self._players: list[subprocess.Popen[bytes]] = []

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

    def _adopt(self) -> None:
        self._module = self._find_module()


def _wait_for_server(server: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"pulseaudio exited with {server.returncode}: {log.read_text()[-2000:]}")
        probe = subprocess.run(
            ["pactl", "info"], env=env, capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"pulseaudio did not come up within 30 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def virtual_mic() -> Iterator[VirtualMic]:
    """A private PulseAudio server whose null sink is the default microphone."""
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"virtual microphone needs {', '.join(missing)} "
            "(apt-get install pulseaudio pulseaudio-utils libasound2-plugins)"
        )
    try:
        import sounddevice  # noqa: F401, PLC0415 - initialises PortAudio
    except OSError as exc:  # raised when libportaudio2 is missing
        pytest.skip(f"PortAudio is not available ({exc}): apt-get install libportaudio2")
    from serd.capture import refresh_devices  # noqa: PLC0415

    # Short path: the server's socket path must fit in sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="serd-pa-"))
    runtime = root / "run"
    config = root / "config"
    (runtime / "pulse").mkdir(parents=True)
    (config / "alsa").mkdir(parents=True)
    (config / "pulse").mkdir(parents=True)
    runtime.chmod(0o700)
    (config / "alsa" / "asoundrc").write_text(_ASOUNDRC)
    # Never let a client autospawn a server of its own when ours is unreachable.
    (config / "pulse" / "client.conf").write_text("autospawn = no\n")
    socket_path = runtime / "pulse" / "native"
    settings = {
        "XDG_RUNTIME_DIR": str(runtime),
        "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
        "PULSE_SERVER": f"unix:{socket_path}",
        "XDG_CONFIG_HOME": str(config),
    }
    env = {**os.environ, **settings}
    log = root / "pulseaudio.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
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
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
                "--load=module-null-sink " + " ".join(SINK_ARGS),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    mic = VirtualMic(root, env)
    patch = pytest.MonkeyPatch()
    try:
        _wait_for_server(server, env, log)
        mic._adopt()
        mic.plug()
        for name, value in settings.items():
            patch.setenv(name, value)
        # PortAudio (initialised when sounddevice was imported, maybe before the server
        # existed) only enumerates devices at initialisation.
        refresh_devices()
        yield mic
    finally:
        mic.stop()
        patch.undo()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mic(virtual_mic: VirtualMic) -> Iterator[VirtualMic]:
    """The virtual microphone, plugged in with nothing playing, before and after a test."""
    virtual_mic.reset()
    yield virtual_mic
    virtual_mic.reset()
