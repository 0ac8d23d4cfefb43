#!/usr/bin/env bash
# Compare methods side by side: run every method over every dataset and seed, then write the table and plots.
#
#   DATASETS="dtd eurosat" bash scripts/compare.sh [KEY VALUE ...]
#
# env: DATASETS  dataset keys (config stems of configs/datasets/), or "all" for the 13 fine-grained benchmarks
#      METHODS   method folders under scripts/ or trainer names (default: every method, in the order of
#                `python -m tools.methods`, which finds them in scripts/<method>/main.sh)
#      SEEDS     default "1 2 3";  DATA (default ./data);  OUTPUT (default ./output);  CFG (default vit_b32)
#      JOBS      (method, dataset) pairs run at once (default 1); PYTHON (default python)
#      METRIC    table metric (default accuracy);  PLOT_DATASET  per-class plot dataset (default eurosat if
#                listed, else the first dataset)
#      NAME      file name of the table and plots (default comparison)
# Trailing KEY VALUE pairs go to every method (every trainer's keys exist for all trainers, so e.g.
# TRAINER.FAIR.N_CROPS only changes FAIR). Each method's main.sh skips finished seeds and resumes unfinished ones.
# Writes $OUTPUT/$NAME.md and .csv (printed too), $OUTPUT/$NAME.selection (what was compared),
# $OUTPUT/${NAME}_per_class_<dataset>.png, and $OUTPUT/${NAME}_curves.png when a method that trains is listed;
# one log per (method, dataset) in $OUTPUT/compare_logs/ (the terminal gets one line per seed).
# A table of another selection under the same NAME is not overwritten: it moves to $OUTPUT/$NAME.earlier-<k>/
# and the script says so. A failing method does not stop the others; the script reports it and exits 1 at the end.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCHMARKS="birdsnap caltech101 cub dtd eurosat fgvc_aircraft oxford_flowers food101 oxford_pets resisc45 stanford_cars sun397 ucf101"
SEEDS=${SEEDS:-"1 2 3"}
export DATA=${DATA:-./data}
export OUTPUT=${OUTPUT:-./output}
export CFG=${CFG:-vit_b32}
export PYTHON=${PYTHON:-python}
export SEEDS
JOBS=${JOBS:-1}
METRIC=${METRIC:-accuracy}
NAME=${NAME:-comparison}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

die() { echo "ERROR: $*" >&2; exit 2; }

# ---- check the lists before running anything
# The methods: "folder trainer mode title" per line, read from scripts/<method>/main.sh by tools/methods.py.
KNOWN=$("$PYTHON" "$REPO/tools/methods.py" --shell) || die "cannot list the methods with PYTHON=$PYTHON (tools/methods.py)"
ALL_METHODS=$(echo "$KNOWN" | awk '{print $1}' | tr '\n' ' ')
METHODS=${METHODS:-$ALL_METHODS}
[ -n "${DATASETS:-}" ] || die "set DATASETS to the dataset keys to compare, e.g. DATASETS=\"dtd eurosat\" (or \"all\"); available: $(ls "$REPO/configs/datasets" | sed 's/\.yaml$//' | tr '\n' ' ')"
[ "$DATASETS" = all ] && DATASETS=$BENCHMARKS
for d in $DATASETS; do
  [ -f "$REPO/configs/datasets/$d.yaml" ] || die "unknown dataset '$d' in DATASETS: configs/datasets/$d.yaml does not exist (available: $(ls "$REPO/configs/datasets" | sed 's/\.yaml$//' | tr '\n' ' '))"
done
FOLDERS=(); TRAINERS=(); SELF_TRAINING=()
for m in $METHODS; do
  line=$(echo "$KNOWN" | awk -v m="${m,,}" 'tolower($1) == m || tolower($2) == m {print; exit}')
  [ -n "$line" ] || die "unknown method '$m' in METHODS (known: $ALL_METHODS; each is a folder scripts/<method>/ with a main.sh)"
  read -r folder trainer mode _ <<< "$line"
  FOLDERS+=("$folder"); TRAINERS+=("$trainer")
  [ "$mode" = train ] && SELF_TRAINING+=("$trainer")
done
METHODS="${FOLDERS[*]}"
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "NAME must be a file name (letters, digits, . _ -), got '$NAME'"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, got '$JOBS'"
# Parallel runs share the CPU cores instead of each taking all of them (as torchrun does).
if [ "$JOBS" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  CORES=$(nproc 2>/dev/null || echo 1)
  export OMP_NUM_THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
fi
[[ "$SEEDS" =~ ^[0-9\ ]+$ && -n "${SEEDS// /}" ]] || die "SEEDS must be non-negative integers separated by spaces, got '$SEEDS'"
if [ $(($# % 2)) -ne 0 ]; then die "trailing overrides must be KEY VALUE pairs, got an odd number: $*"; fi

LOGS="$OUTPUT/compare_logs"
STATUS=$(mktemp -d)
trap 'rm -rf "$STATUS"' EXIT
mkdir -p "$LOGS" || die "cannot create $LOGS (check OUTPUT=$OUTPUT)"
echo "[compare] methods: $METHODS | datasets: $DATASETS | seeds: $SEEDS | output: $OUTPUT | jobs: $JOBS"

# One (method, dataset) pair: its main.sh over all seeds, logged to $LOGS/<method>-<dataset>.log; exit status in
# $STATUS/<method>-<dataset>. One at a time (JOBS=1), the terminal gets each seed's start and end lines only.
run_pair() {
  local m=$1 d=$2 n=$3; shift 3
  local script="$REPO/scripts/$m/main.sh" log="$LOGS/$m-$d.log" rc start=$SECONDS
  if [ "$JOBS" -eq 1 ]; then
    echo "[compare] ($n/$PAIRS) $m on $d (log: $log)"
    bash "$script" "$d" "$@" 2>&1 | tee "$log" | grep --line-buffered -E '^\[[^]]* seed-?[0-9]+\] |^Results written to |^ERROR'
    rc=${PIPESTATUS[0]}
  else
    bash "$script" "$d" "$@" > "$log" 2>&1
    rc=$?
  fi
  echo "$rc" > "$STATUS/$m-$d"
  if [ "$rc" -eq 0 ]; then
    echo "[compare] $m on $d: done ($((SECONDS - start)) s)"
  else
    echo "[compare] $m on $d: FAILED (exit $rc, log $log); its last lines:" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
  fi
}

PAIRS=$(( ${#FOLDERS[@]} * $(echo $DATASETS | wc -w) ))
n=0
for m in $METHODS; do
  for d in $DATASETS; do
    n=$((n + 1))
    if [ "$JOBS" -eq 1 ]; then
      run_pair "$m" "$d" "$n" "$@"
    else
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
      run_pair "$m" "$d" "$n" "$@" &
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
# A table of another selection under the same NAME moves aside (never overwritten without a word).
# shellcheck disable=SC2086
SELECTION="methods: $METHODS | datasets: $(echo $DATASETS) | seeds: $(echo $SEEDS) | cfg: $CFG | metric: $METRIC"
if [ -f "$OUTPUT/$NAME.md" ] || [ -f "$OUTPUT/$NAME.csv" ]; then
  EARLIER=$(cat "$OUTPUT/$NAME.selection" 2>/dev/null || echo "not recorded")
  if [ "$EARLIER" != "$SELECTION" ]; then
    k=1; while [ -e "$OUTPUT/$NAME.earlier-$k" ]; do k=$((k + 1)); done
    mkdir -p "$OUTPUT/$NAME.earlier-$k"
    for f in "$OUTPUT/$NAME".md "$OUTPUT/$NAME".csv "$OUTPUT/$NAME".selection "$OUTPUT/${NAME}"_per_class_*.png \
             "$OUTPUT/${NAME}"_curves.png; do
      [ -f "$f" ] && mv "$f" "$OUTPUT/$NAME.earlier-$k/"
    done
    echo "[compare] $OUTPUT/$NAME.md held another selection ($EARLIER); moved it and its plots to $OUTPUT/$NAME.earlier-$k/ (NAME=... gives a comparison its own file name)"
  fi
fi
RUN_DIRS=()
for d in $DATASETS; do [ -d "$OUTPUT/$d" ] && RUN_DIRS+=("$OUTPUT/$d"); done
TOOLS_OK=1
if [ ${#RUN_DIRS[@]} -eq 0 ]; then
  echo "ERROR: no run folder under $OUTPUT for $DATASETS; nothing to tabulate" >&2
  TOOLS_OK=0
else
  echo "$SELECTION" > "$OUTPUT/$NAME.selection"
  # shellcheck disable=SC2086
  "$PYTHON" -m tools.results_table "${RUN_DIRS[@]}" --methods "${TRAINERS[@]}" --datasets $DATASETS \
    --seeds $SEEDS --cfg "$CFG" --metric "$METRIC" --format both --out "$OUTPUT/$NAME" || TOOLS_OK=0
  PLOT_DATASET=${PLOT_DATASET:-}
  if [ -z "$PLOT_DATASET" ]; then
    PLOT_DATASET=$(echo "$DATASETS" | tr ' ' '\n' | grep -x eurosat || echo "$DATASETS" | awk '{print $1}')
  fi
  # shellcheck disable=SC2086
  "$PYTHON" -m tools.plots per-class --dataset "$PLOT_DATASET" "${RUN_DIRS[@]}" --methods "${TRAINERS[@]}" \
    --seeds $SEEDS --cfg "$CFG" --out "$OUTPUT/${NAME}_per_class_$PLOT_DATASET.png" || TOOLS_OK=0
  if [ ${#SELF_TRAINING[@]} -gt 0 ]; then
    # shellcheck disable=SC2086
    "$PYTHON" -m tools.plots curves "${RUN_DIRS[@]}" --methods "${SELF_TRAINING[@]}" --datasets $DATASETS \
      --seeds $SEEDS --cfg "$CFG" --out "$OUTPUT/${NAME}_curves.png" || TOOLS_OK=0
  else
    echo "[compare] no method that trains is listed: no curves plot"
  fi
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "[compare] ${#FAILED[@]} method run(s) failed:" >&2
  printf '  %s\n' "${FAILED[@]}" >&2
  exit 1
fi
[ "$TOOLS_OK" -eq 1 ] || { echo "[compare] the table or a plot could not be written (see above)" >&2; exit 1; }
echo "[compare] all runs finished; table: $OUTPUT/$NAME.md"
