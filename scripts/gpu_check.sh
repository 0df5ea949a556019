#!/usr/bin/env bash
# The prepared GPU check of ctfgen's paper-scale path (docs/GPU.md). Run it as it is on a machine
# with one CUDA GPU, from a checkout where ctfgen's dependencies and pytest are installed:
#
#   scripts/gpu_check.sh OUT_DIR                      # ~7 minutes on one H100 / H200
#   scripts/gpu_check.sh OUT_DIR --device cpu --quick # every section at tiny sizes, on a CPU (the test suite)
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (rewritten after each section, so a run
# that is cut short keeps what it measured). Needs no network: random weights, codes made locally.
# Extra arguments go to `ctfgen bench gpu` (--budget SECONDS, --skip A,B, --peak-tflops X).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: scripts/gpu_check.sh OUT_DIR [--device cpu] [--quick] [ctfgen bench gpu options]" >&2
  exit 2
fi
OUT=$1
shift
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m ctfgen bench gpu --out "$OUT" "$@"
