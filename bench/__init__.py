"""serd performance bench: ``python -m bench`` (see bench/README.md)."""
