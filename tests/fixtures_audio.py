"""Fixture: a PulseAudio virtual microphone that PortAudio records from.

``virtual_mic`` (session scope) starts the kit's :class:`~serd_testkit.audio.VirtualMic`: a
private PulseAudio server whose null sink ``vmic`` is the default microphone, and an ALSA
PCM ``serd_vmic`` that records exactly its monitor (a named USB microphone).  Its
environment (``PULSE_SERVER``, ``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``) is set in this
process for the rest of the session, so PortAudio here and in subprocesses uses the private
server; PortAudio is re-initialised after the server is up because it enumerates devices
only at initialisation.

``mic`` (function scope) is the same object, reset for each test: nothing playing,
plugged in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serd_testkit.audio import VirtualMic
from serd_testkit.tools import ToolMissingError


@pytest.fixture(scope="session")
def virtual_mic() -> Iterator[VirtualMic]:
    """A private PulseAudio server whose null sink is the default microphone."""
    try:
        mic = VirtualMic()
    except ToolMissingError as exc:
        pytest.skip(str(exc))
    try:
        import sounddevice  # noqa: F401, PLC0415 - initialises PortAudio
    except OSError as exc:  # raised when libportaudio2 is missing
        mic.close()
        pytest.skip(f"PortAudio is not available ({exc}): apt-get install libportaudio2")
    from serd.capture import refresh_devices  # noqa: PLC0415

    patch = pytest.MonkeyPatch()
    try:
        try:
            mic.start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        for name, value in mic.settings.items():
            patch.setenv(name, value)
        # PortAudio (initialised when sounddevice was imported, maybe before the server
        # existed) only enumerates devices at initialisation.
        refresh_devices()
        yield mic
    finally:
        patch.undo()
        mic.close()


@pytest.fixture
def mic(virtual_mic: VirtualMic) -> Iterator[VirtualMic]:
    """The virtual microphone, plugged in with nothing playing, before and after a test."""
    virtual_mic.reset()
    yield virtual_mic
    virtual_mic.reset()
