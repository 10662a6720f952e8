#!/usr/bin/env bash
# Set serd up (scripts/setup.sh) and run the daemon on the defaults: the default microphone,
# the shipped model, events printed as JSON lines (no broker configured).  Extra arguments go
# to serd, e.g. scripts/run.sh --config my.yaml   or   scripts/run.sh --once clip.wav
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
exec .venv/bin/serd "$@"
