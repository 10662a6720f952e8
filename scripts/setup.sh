#!/usr/bin/env bash
# Set serd up on Debian / Raspberry Pi OS: system packages, a virtualenv in .venv, serd in it.
#   scripts/setup.sh            what a device needs (PortAudio, libsndfile, serd)
#   scripts/setup.sh --dev      + what the tests need (Mosquitto, PulseAudio, sox, ... and the
#                                 train extra, so training code is tested too)
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done

apt_pkgs=(python3 python3-venv python3-pip libportaudio2 libsndfile1)
if [ "$dev" = 1 ]; then
  apt_pkgs+=(mosquitto mosquitto-clients pulseaudio pulseaudio-utils libasound2-plugins
             sox espeak-ng systemd openssl chromium)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
extras=""
[ "$dev" = 1 ] && extras="[dev,train]"
stamp=".venv/.serd-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing serd$extras into .venv (log: .venv/pip.log)"
  # pip and setuptools are chatty even with -q: keep their output in a log, show it on failure.
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".$extras"; } >.venv/pip.log 2>&1; then
    tail -n 30 .venv/pip.log >&2
    echo "setup: pip install failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
echo "setup: done (.venv/bin/serd)"
