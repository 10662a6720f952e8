#!/usr/bin/env bash
# The install docs/systemd.md describes, checked: build serd's wheel (python -m build, as a
# release would), install only that wheel into a new virtualenv, and from outside the checkout
# run `serd --once` on a test clip and `serd --check-config` with the shipped model.
#   scripts/check-wheel.sh [PYTHON]     PYTHON for the new venv (default python3, as setup.sh)
# Needs .venv with the dev extra (its `build`); scripts/test.sh runs it. Pip's cache makes the
# second run quick; the venv and the wheel live in a temporary folder removed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-${PYTHON:-python3}}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/serd-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log="$tmp/log"

fail() {
  tail -n 30 "$log" >&2
  echo "check-wheel: $1" >&2
  exit 1
}

# sdist, then the wheel built from it: the model files must survive both.
"$root/.venv/bin/python" -m build --outdir "$tmp/dist" "$root" >"$log" 2>&1 ||
  fail "python -m build failed"
wheel=$(ls "$tmp"/dist/serd-*.whl)
# What it must carry (the model's files and their licences), and what it must not (the kit).
"$root/.venv/bin/python" - "$wheel" >>"$log" 2>&1 <<'PY' || fail "the wheel's contents are wrong"
import sys
import zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
shipped = {f"serd/models/{n}" for n in ("serd-emotion-6.tflite", "serd-emotion-6.card.json",
                                        "serd-emotion-6.voice.npz", "voice-trunk.npz",
                                        "voice-lstm.tflite", "NOTICE", "LICENSE-resemblyzer")}
shipped |= {"serd/silero/silero_vad_16k.npz", "serd/silero/silero_vad_16k.LICENSE"}
missing = sorted(shipped - names)
extra = sorted(n for n in names if n.startswith(("serd_testkit/", "tests/", "bench/")))
if missing or extra:
    sys.exit(f"missing from the wheel: {missing}; not for a device: {extra}")
PY
# A venv without pip of its own (ensurepip is most of venv's time): .venv's pip installs into it.
"$python" -m venv --without-pip "$tmp/venv" >>"$log" 2>&1 || fail "$python -m venv failed"
"$root/.venv/bin/python" -m pip --python "$tmp/venv/bin/python" install -q "$wheel" \
  >>"$log" 2>&1 || fail "pip install $(basename "$wheel") into a new venv failed"

cd "$tmp"  # not the checkout: serd must come from the venv, with its own model files
where=$("$tmp/venv/bin/python" -c "import serd; print(serd.__file__)")
case "$where" in
  "$tmp/venv/"*) ;;
  *) fail "serd imported from $where, not from the new venv" ;;
esac
clip="$root/tests/data/1001_IEO_ANG_HI.flac"
"$tmp/venv/bin/serd" --once "$clip" >"$tmp/once.txt" 2>>"$log" ||
  fail "serd --once $clip failed with the installed wheel"
grep -q "verdict: " "$tmp/once.txt" || fail "serd --once printed no verdict: $(cat "$tmp/once.txt")"
"$tmp/venv/bin/serd" --check-config >"$tmp/check.txt" 2>>"$log" ||
  fail "serd --check-config failed with the installed wheel"
echo "check-wheel: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) installs into a" \
     "new venv; serd --once and serd --check-config work with its model"
