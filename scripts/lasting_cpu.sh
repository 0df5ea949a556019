#!/usr/bin/env bash
# The long study's whole CPU plan (docs/RESULTS.md, "Does it last?"), in the order that answers the
# most first: V = 16384 (three pipeline seeds), V = 4096 (two), model size, sequence length. Two
# processes at a time (one per core, one thread each). Resumable: run it again after any interruption
# and it continues; units whose JSON is in docs/results/lasting are skipped, so a fresh clone with the
# committed results continues from there. Commit docs/results/lasting as units finish.
#
#   bash scripts/lasting_cpu.sh [OUT]          # OUT: the study folder (default runs/lasting)
#
# Logs: OUT-logs/<axes>-seed<S>.log. CTFGEN (default: ctfgen) is the command run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lasting}
LOGS=$OUT-logs
CTFGEN=${CTFGEN:-ctfgen}
mkdir -p "$LOGS"

one() {  # one() SEED AXES...: one process of the study for one pipeline seed
  local seed=$1; shift
  local name; name=$(echo "$*" | tr -d '-' | tr ' ,' '_.')
  nice -n 10 $CTFGEN bench lasting --out "$OUT" --threads 1 --no-progress --only-seeds "$seed" "$@" \
    >> "$LOGS/$name-seed$seed.log" 2>&1
}

two() {  # two() SEED_A SEED_B AXES...: two seeds side by side; the second waits for the first's classifier
  local a=$1 b=$2; shift 2
  one "$a" "$@" &
  local first=$!
  until [ -f "$OUT/classifier/manifest.json" ] || ! kill -0 "$first" 2>/dev/null; do sleep 10; done
  one "$b" "$@" &
  wait
}

V16=(--vocabs 16384 --pipeline-seeds 3)
two 0 1 "${V16[@]}"
# seed 2, and seed 1 again: a seed past the first samples with seed 0's sweep picks, which may not
# have existed when it finished (the rerun reuses every model and evaluation)
two 2 1 "${V16[@]}"
for axes in "--vocabs 4096 --pipeline-seeds 2" \
            "--vocabs 4096 --presets tiny,small --steps 300 --pipeline-seeds 2" \
            "--vocabs 4096 --grids 16 --steps 300 --pipeline-seeds 2"; do
  # shellcheck disable=SC2086  # the axes are words
  two 0 1 $axes
  one 1 $axes
done
$CTFGEN bench lasting --report --vocabs 4096,16384 --pipeline-seeds 3
echo "the plan ran to its end; the report: docs/results/lasting/report/README.md"
