"""Real components for serd's tests and benches, without pytest.

* :mod:`serd_testkit.broker`: a private Mosquitto broker on a free loopback port that can be
  stopped and restarted, and an MQTT subscriber that collects what it receives.
* :mod:`serd_testkit.audio`: a private PulseAudio server whose null sink is a virtual
  microphone (what ``paplay`` plays into it, PortAudio records), and an in-process
  microphone stand-in that hands out a prepared array.
* :mod:`serd_testkit.cards`: editing a model card, for tests that break one.

The pytest fixtures (``tests/fixtures_broker.py``, ``tests/fixtures_audio.py``) and the bench
(``bench/``) both use these, from a checkout (the repository root on ``sys.path``: ``python
-m pytest``, ``python -m bench``). The kit is not part of serd's wheel: a device needs none
of it.
"""

from serd_testkit.audio import ArraySource, VirtualMic
from serd_testkit.broker import MOSQUITTO, Broker, Message, Subscriber, free_port, wait_until
from serd_testkit.cards import edit_card
from serd_testkit.tools import ToolMissingError

__all__ = [
    "MOSQUITTO",
    "ArraySource",
    "Broker",
    "Message",
    "Subscriber",
    "ToolMissingError",
    "VirtualMic",
    "edit_card",
    "free_port",
    "wait_until",
]
