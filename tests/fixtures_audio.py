"""Fixture: a PulseAudio virtual microphone (filled in by the capture work)."""
