#!/usr/bin/env bash
# Compare methods side by side: run every method over every dataset and seed, then write the table and plots.
#
#   DATASETS="dtd eurosat" bash scripts/compare.sh [KEY VALUE ...]
#
# env: DATASETS  dataset keys (config stems of configs/datasets/), or "all" for the 13 fine-grained benchmarks
#      METHODS   script folders under scripts/ (default: "zsclip cupl wca upl must lafter reclip dpa fair")
#      SEEDS     default "1 2 3";  DATA (default ./data);  OUTPUT (default ./output);  CFG (default vit_b32)
#      JOBS      (method, dataset) pairs run at once (default 1); PYTHON (default python)
#      METRIC    table metric (default accuracy);  PLOT_DATASET  per-class plot dataset (default eurosat if
#                listed, else the first dataset)
# Trailing KEY VALUE pairs go to every method (every trainer's keys exist for all trainers, so e.g.
# TRAINER.FAIR.N_CROPS only changes FAIR). Each method's main.sh skips finished seeds and resumes unfinished ones.
# Writes $OUTPUT/comparison.md and .csv (printed too), $OUTPUT/comparison_per_class_<dataset>.png, and
# $OUTPUT/comparison_curves.png when a self-training method is listed; logs in $OUTPUT/compare_logs/.
# A failing or missing method does not stop the others; the script reports it and exits 1 at the end.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_METHODS="zsclip cupl wca upl must lafter reclip dpa fair"
BENCHMARKS="birdsnap caltech101 cub dtd eurosat fgvc_aircraft oxford_flowers food101 oxford_pets resisc45 stanford_cars sun397 ucf101"
METHODS=${METHODS:-$ALL_METHODS}
SEEDS=${SEEDS:-"1 2 3"}
export DATA=${DATA:-./data}
export OUTPUT=${OUTPUT:-./output}
export CFG=${CFG:-vit_b32}
export PYTHON=${PYTHON:-python}
export SEEDS
JOBS=${JOBS:-1}
METRIC=${METRIC:-accuracy}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

die() { echo "ERROR: $*" >&2; exit 2; }
trainer_of() {
  case "$1" in
    zsclip) echo ZeroshotCLIP ;; cupl) echo CuPL ;; wca) echo WCA ;; upl) echo UPL ;;
    must) echo MUST ;; lafter) echo LaFTer ;; reclip) echo ReCLIP ;; dpa) echo DPA ;; fair) echo FAIR ;;
    *) return 1 ;;
  esac
}

# ---- check the lists before running anything
[ -n "${DATASETS:-}" ] || die "set DATASETS to the dataset keys to compare, e.g. DATASETS=\"dtd eurosat\" (or \"all\"); available: $(ls "$REPO/configs/datasets" | sed 's/\.yaml$//' | tr '\n' ' ')"
[ "$DATASETS" = all ] && DATASETS=$BENCHMARKS
for d in $DATASETS; do
  [ -f "$REPO/configs/datasets/$d.yaml" ] || die "unknown dataset '$d' in DATASETS: configs/datasets/$d.yaml does not exist (available: $(ls "$REPO/configs/datasets" | sed 's/\.yaml$//' | tr '\n' ' '))"
done
TRAINERS=()
for m in $METHODS; do
  t=$(trainer_of "$m") || die "unknown method '$m' in METHODS (known: $ALL_METHODS)"
  TRAINERS+=("$t")
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, got '$JOBS'"
# Parallel runs share the CPU cores instead of each taking all of them (as torchrun does).
if [ "$JOBS" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  CORES=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
fi
[[ "$SEEDS" =~ ^[0-9\ ]+$ && -n "${SEEDS// /}" ]] || die "SEEDS must be integers separated by spaces, got '$SEEDS'"
if [ $(($# % 2)) -ne 0 ]; then die "trailing overrides must be KEY VALUE pairs, got an odd number: $*"; fi

LOGS="$OUTPUT/compare_logs"
STATUS=$(mktemp -d)
trap 'rm -rf "$STATUS"' EXIT
mkdir -p "$LOGS" || die "cannot create $LOGS (check OUTPUT=$OUTPUT)"
echo "[compare] methods: $METHODS | datasets: $DATASETS | seeds: $SEEDS | output: $OUTPUT | jobs: $JOBS"

# One (method, dataset) pair: its main.sh over all seeds; exit status in $STATUS/<method>-<dataset>.
run_pair() {
  local m=$1 d=$2; shift 2
  local script="$REPO/scripts/$m/main.sh" log="$LOGS/$m-$d.log" rc
  if [ ! -f "$script" ]; then
    echo "ERROR: method '$m' has no script yet ($script does not exist); leave it out of METHODS or add it" | tee "$log" >&2
    echo 127 > "$STATUS/$m-$d"
    return
  fi
  if [ "$JOBS" -eq 1 ]; then
    bash "$script" "$d" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    bash "$script" "$d" "$@" > "$log" 2>&1
    rc=$?
  fi
  echo "$rc" > "$STATUS/$m-$d"
  if [ "$rc" -eq 0 ]; then echo "[compare] $m on $d: done"; else echo "[compare] $m on $d: FAILED (exit $rc, log $log)" >&2; fi
}

for m in $METHODS; do
  for d in $DATASETS; do
    if [ "$JOBS" -eq 1 ]; then
      run_pair "$m" "$d" "$@"
    else
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      run_pair "$m" "$d" "$@" &
    fi
  done
done
wait

FAILED=()
for m in $METHODS; do
  for d in $DATASETS; do
    rc=$(cat "$STATUS/$m-$d" 2>/dev/null || echo "?")
    [ "$rc" = 0 ] || FAILED+=("$m on $d (exit $rc, log $LOGS/$m-$d.log)")
  done
done

# ---- table and plots from the results.json files of these methods, datasets and seeds
RUN_DIRS=()
for d in $DATASETS; do [ -d "$OUTPUT/$d" ] && RUN_DIRS+=("$OUTPUT/$d"); done
TOOLS_OK=1
if [ ${#RUN_DIRS[@]} -eq 0 ]; then
  echo "ERROR: no run folder under $OUTPUT for $DATASETS; nothing to tabulate" >&2
  TOOLS_OK=0
else
  # shellcheck disable=SC2086
  "$PYTHON" -m tools.results_table "${RUN_DIRS[@]}" --methods "${TRAINERS[@]}" --datasets $DATASETS \
    --seeds $SEEDS --cfg "$CFG" --metric "$METRIC" --format both --out "$OUTPUT/comparison" || TOOLS_OK=0
  PLOT_DATASET=${PLOT_DATASET:-}
  if [ -z "$PLOT_DATASET" ]; then
    PLOT_DATASET=$(echo "$DATASETS" | tr ' ' '\n' | grep -x eurosat || echo "$DATASETS" | awk '{print $1}')
  fi
  # shellcheck disable=SC2086
  "$PYTHON" -m tools.plots per-class --dataset "$PLOT_DATASET" "${RUN_DIRS[@]}" --methods "${TRAINERS[@]}" \
    --seeds $SEEDS --cfg "$CFG" --out "$OUTPUT/comparison_per_class_$PLOT_DATASET.png" || TOOLS_OK=0
  SELF_TRAINING=()
  for t in "${TRAINERS[@]}"; do case "$t" in UPL|MUST|LaFTer|ReCLIP|DPA|FAIR) SELF_TRAINING+=("$t") ;; esac; done
  if [ ${#SELF_TRAINING[@]} -gt 0 ]; then
    # shellcheck disable=SC2086
    "$PYTHON" -m tools.plots curves "${RUN_DIRS[@]}" --methods "${SELF_TRAINING[@]}" --datasets $DATASETS \
      --seeds $SEEDS --cfg "$CFG" --out "$OUTPUT/comparison_curves.png" || TOOLS_OK=0
  else
    echo "[compare] no self-training method listed: no curves plot"
  fi
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "[compare] ${#FAILED[@]} method run(s) failed:" >&2
  printf '  %s\n' "${FAILED[@]}" >&2
  exit 1
fi
[ "$TOOLS_OK" -eq 1 ] || { echo "[compare] the table or a plot could not be written (see above)" >&2; exit 1; }
echo "[compare] all runs finished; table: $OUTPUT/comparison.md"
