#!/usr/bin/env bash
# FAIR's ablation: named variants x seeds through scripts/fair/main.sh, then the table and the plot.
#
#   bash scripts/fair/ablate.sh DATASET [KEY VALUE ...]
#
# env: VARIANTS_FILE  variants (default configs/trainers/FAIR/ablations.yaml: `name: {KEY: VALUE, ...}`;
#                     add a line to add a variant)
#      VARIANTS       names to run (default: all in the file; `full`, the reference, always runs)
#      SEEDS (default "1 2 3"), DATA (default ./data), OUTPUT (default ./output), CFG (default vit_b32),
#      PYTHON (default python)
# Trailing KEY VALUE pairs go to every variant (a variant's own keys win). Each variant runs through
# scripts/fair/main.sh with OUTPUT=$OUTPUT/fair_ablation/DATASET/<variant> and TRAINER.FAIR.VARIANT
# <variant> (recorded in results.json), so finished seeds are skipped and unfinished ones resume. A variant
# whose configuration equals `full`'s (or an earlier variant's) is not run again. Logs in
# $OUTPUT/fair_ablation/DATASET/logs/.
# Writes $OUTPUT/fair_ablation/DATASET/ablation.{md,json,png} (table printed too): mean ± std test
# accuracy, delta to full, final pseudo-label accuracy and mean weight; per-epoch curves per variant.
# A failing variant does not stop the others; the script reports it and exits 1 at the end.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 DATASET [KEY VALUE ...]" >&2
  exit 2
fi
DATASET=$1; shift
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
export SEEDS=${SEEDS:-"1 2 3"}
export CFG=${CFG:-vit_b32}
export PYTHON=${PYTHON:-python}
VARIANTS_FILE=${VARIANTS_FILE:-$REPO/configs/trainers/FAIR/ablations.yaml}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ $(($# % 2)) -ne 0 ]; then
  echo "ERROR: trailing overrides must be KEY VALUE pairs, got an odd number: $*" >&2
  exit 2
fi
ABL="$OUTPUT/fair_ablation/$DATASET"
mkdir -p "$ABL/logs" || { echo "ERROR: cannot create $ABL" >&2; exit 2; }

ONLY=()
if [ -n "${VARIANTS:-}" ]; then ONLY=(--only "$VARIANTS"); fi
# The plan checks every variant's keys before anything runs (one line per variant, shell-quoted).
PLAN=$("$PYTHON" -m tools.ablation plan "$DATASET" --out-dir "$ABL" --variants "$VARIANTS_FILE" \
       --cfg "$CFG" "${ONLY[@]}" "$@") || exit 2

FAILED=()
while IFS= read -r line; do
  eval "spec=($line)"
  kind=${spec[0]}; name=${spec[1]}
  if [ "$kind" = same ]; then
    echo "[ablation $DATASET] $name: same configuration as ${spec[2]} (not run again)"
    continue
  fi
  echo "[ablation $DATASET] $name: ${spec[*]:2}$([ ${#spec[@]} -gt 2 ] || echo "(defaults)")"
  if ! OUTPUT="$ABL/$name" bash "$REPO/scripts/fair/main.sh" "$DATASET" "$@" "${spec[@]:2}" \
        TRAINER.FAIR.VARIANT "$name" >> "$ABL/logs/$name.log" 2>&1; then
    echo "[ablation $DATASET] $name failed; its log: $ABL/logs/$name.log" >&2
    tail -n 3 "$ABL/logs/$name.log" >&2
    FAILED+=("$name")
  fi
done <<< "$PLAN"

"$PYTHON" -m tools.ablation table "$DATASET" --out-dir "$ABL" --out "$ABL/ablation" || exit 2
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "ERROR: variants failed: ${FAILED[*]} (logs in $ABL/logs/)" >&2
  exit 1
fi
