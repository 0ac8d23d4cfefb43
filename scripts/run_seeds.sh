#!/usr/bin/env bash
# Shared runner behind scripts/<method>/main.sh: one train.py run per seed.
#
#   scripts/run_seeds.sh TRAINER MODE DATASET [KEY VALUE ...]
#     TRAINER  registered trainer name (FAIR, ZeroshotCLIP, ...)
#     MODE     "train" (train then final test) or "eval" (--eval-only: training-free methods)
#     DATASET  a config stem of configs/datasets/ (stanford_cars, dtd, ...)
#   env: DATA (dataset root, default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output),
#        CFG (method config under configs/trainers/TRAINER/, default vit_b32), PYTHON (default python),
#        FRESH=1 (discard each seed's previous run, finished or not, and start it afresh: train.py --fresh)
#
# Output: $OUTPUT/$DATASET/$TRAINER/$CFG/seed$SEED/ (log.txt, run_config.json, checkpoints, history.json,
# results.json).
# configs/trainers/TRAINER/per_dataset/DATASET.yaml, when present, is merged after the method config (by train.py).
# A seed whose results.json exists is skipped; one with a checkpoint resumes exactly from it (train.py
# refuses if its training settings changed); one that failed before its first checkpoint starts again.
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 TRAINER train|eval DATASET [KEY VALUE ...]" >&2
  exit 2
fi
TRAINER=$1; MODE=$2; DATASET=$3; shift 3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${DATA:-./data}
SEEDS=${SEEDS:-"1 2 3"}
OUTPUT=${OUTPUT:-./output}
CFG=${CFG:-vit_b32}
PYTHON=${PYTHON:-python}
# Seeds are checked before anything runs ("5 x" would train seed 5, then stop; "-1" would run unseeded).
if ! [[ "$SEEDS" =~ ^[0-9\ ]+$ && -n "${SEEDS// /}" ]]; then
  echo "ERROR: SEEDS must be non-negative integers separated by spaces, e.g. SEEDS=\"1 2 3\"; got '$SEEDS'" >&2
  exit 2
fi

DATASET_CFG="$REPO/configs/datasets/$DATASET.yaml"
METHOD_CFG="$REPO/configs/trainers/$TRAINER/$CFG.yaml"
if [ ! -f "$DATASET_CFG" ]; then
  echo "ERROR: unknown dataset '$DATASET': $DATASET_CFG does not exist (choose one of: $(ls "$REPO/configs/datasets" | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
  exit 2
fi
if [ ! -f "$METHOD_CFG" ]; then
  echo "ERROR: no config '$CFG' for $TRAINER: $METHOD_CFG does not exist (set CFG to one of: $(ls "$REPO/configs/trainers/$TRAINER" | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
  exit 2
fi
# The synthetic world has its own tiny CLIP (no OpenAI CLIP fits it): use it unless one is given.
if [ "$DATASET" = "synthetic" ] && ! printf '%s\n' "$@" | grep -qx "MODEL.BACKBONE.PATH"; then
  TINY_CLIP="$DATA/synthetic_fg/tiny_clip.pt"
  if [ ! -f "$TINY_CLIP" ]; then
    echo "ERROR: the synthetic world's tiny CLIP $TINY_CLIP does not exist; build the world with DATA=$DATA bash scripts/demo.sh (or pass MODEL.BACKBONE.PATH)" >&2
    exit 2
  fi
  set -- "$@" MODEL.BACKBONE.PATH "$TINY_CLIP"
fi

# train.py merges the method's per-dataset override (configs/trainers/TRAINER/per_dataset/DATASET.yaml)
# after the method config by itself; say so here too.
OVERRIDE="$REPO/configs/trainers/$TRAINER/per_dataset/$DATASET.yaml"
if [ -f "$OVERRIDE" ]; then echo "[$TRAINER $DATASET] per-dataset override: $OVERRIDE"; fi

case "$MODE" in
  train) MODE_ARGS=() ;;
  eval) MODE_ARGS=(--eval-only) ;;
  *) echo "ERROR: MODE must be train or eval, got '$MODE'" >&2; exit 2 ;;
esac
FRESH=${FRESH:-}
if [ -n "$FRESH" ] && [ "$FRESH" != "0" ]; then MODE_ARGS+=(--fresh); else FRESH=; fi
# train.py's dataset-root errors then say to set DATA (which the script passes as --root).
export FAIRCLIP_ROOT_VAR=DATA

for SEED in $SEEDS; do
  DIR="$OUTPUT/$DATASET/$TRAINER/$CFG/seed$SEED"
  if [ -n "$FRESH" ] && [ -d "$DIR" ]; then
    echo "[$TRAINER $DATASET seed$SEED] FRESH=1: discarding the previous run in $DIR and starting afresh"
  elif [ -f "$DIR/results.json" ]; then
    echo "[$TRAINER $DATASET seed$SEED] finished earlier ($DIR/results.json); skipping"
    continue
  elif compgen -G "$DIR/*/checkpoint" > /dev/null; then
    echo "[$TRAINER $DATASET seed$SEED] unfinished run in $DIR; resuming from its last checkpoint"
  elif [ -d "$DIR" ]; then
    echo "[$TRAINER $DATASET seed$SEED] an earlier attempt in $DIR stopped before its first checkpoint (see its log.txt); starting again"
  else
    echo "[$TRAINER $DATASET seed$SEED] -> $DIR"
  fi
  "$PYTHON" "$REPO/train.py" \
    --root "$DATA" \
    --seed "$SEED" \
    --trainer "$TRAINER" \
    --dataset-config-file "$DATASET_CFG" \
    --config-file "$METHOD_CFG" \
    --output-dir "$DIR" \
    "${MODE_ARGS[@]}" \
    RUN.CFG_NAME "$CFG" \
    "$@"
done
