"""Fixture: a throwaway Mosquitto broker (filled in by the MQTT work)."""
