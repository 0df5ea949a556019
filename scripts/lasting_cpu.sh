#!/usr/bin/env bash
# The long study's whole CPU plan (docs/RESULTS.md, "Does it last?"), in the order that answers the
# most first: V = 16384 (three pipeline seeds), V = 4096 (two), model size, sequence length. Two
# processes at a time (one per core, one thread each), each taking the next unit as one ends.
# Resumable: run it again after any interruption and it continues; units whose JSON is in
# docs/results/lasting are skipped, so a fresh clone with the committed results continues from there.
# Commit docs/results/lasting as units finish.
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

one() {  # one SEED AXES...: one process of the study for one pipeline seed
  local seed=$1; shift
  local name; name=$(echo "$*" | tr -d '-' | tr ' ,' '_.')
  nice -n 10 $CTFGEN bench lasting --out "$OUT" --threads 1 --no-progress --only-seeds "$seed" "$@" \
    >> "$LOGS/$name-seed$seed.log" 2>&1
}

V16="--vocabs 16384 --pipeline-seeds 3"
V4="--vocabs 4096 --pipeline-seeds 2"
SIZE="--vocabs 4096 --presets tiny,small --steps 300 --pipeline-seeds 2"
LENGTH="--vocabs 4096 --grids 16 --steps 300 --pipeline-seeds 2"
QUEUE=("0 $V16" "1 $V16" "2 $V16" "0 $V4" "1 $V4" "0 $SIZE" "1 $SIZE" "0 $LENGTH" "1 $LENGTH")

first=1
for job in "${QUEUE[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
  # shellcheck disable=SC2086  # a job is words: the seed, then the axes
  one $job &
  if [ $first = 1 ]; then  # the others use the classifier the first one trains
    until [ -f "$OUT/classifier/manifest.json" ] || ! kill -0 $! 2>/dev/null; do sleep 5; done
    first=0
  fi
done
wait
# a seed past the first samples with seed 0's sweep picks, which may not have existed when it
# finished: run those again (every model and evaluation is reused, only the samples are made)
for job in "1 $V16" "2 $V16" "1 $V4" "1 $SIZE" "1 $LENGTH"; do
  # shellcheck disable=SC2086
  one $job
done
$CTFGEN bench lasting --report --vocabs 4096,16384 --pipeline-seeds 3
echo "the plan ran to its end; the report: docs/results/lasting/report/README.md"
