"""serd: speech-emotion-recognition daemon for edge devices."""

__version__ = "0.1.0"
