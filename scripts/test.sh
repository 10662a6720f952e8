#!/usr/bin/env bash
# Set up everything the tests need, then run them (lint, types, the wheel, pytest). CI runs
# exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check serd train tests bench serd_testkit
.venv/bin/mypy  # the packages of [tool.mypy] in pyproject.toml: serd, train, bench, serd_testkit
scripts/check-wheel.sh  # the wheel, alone in a new venv, runs with its shipped model
exec .venv/bin/python -m pytest "$@"
