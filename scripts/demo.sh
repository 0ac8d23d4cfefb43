#!/usr/bin/env bash
# One-command CPU demo: zero-shot CLIP vs unsupervised adaptation on the synthetic world, no downloads.
#
#   bash scripts/demo.sh
#
# env: DATA    data root (default ./data); the world and its tiny CLIP go to $DATA/synthetic_fg/
#      OUTPUT  run folders and the table (default ./output/demo)
#      SEEDS   seeds of every method (default "1")
#      METHODS script folders under scripts/ (default "zsclip cupl wca upl must lafter reclip dpa fair")
#      PYTHON  (default python)
#
# 1. Generates the synthetic world (tools/make_synthetic.py) and pretrains its tiny CLIP
#    (tools/pretrain_tiny_clip.py) unless they are already there (about 1.5 minutes on 2 cores).
# 2. Runs each method through its script on the `synthetic` dataset with the tiny CLIP; the schedules for
#    this world are in configs/trainers/<TRAINER>/per_dataset/synthetic.yaml. Finished seeds are skipped.
# 3. Prints the table (tools/results_table) and writes $OUTPUT/demo_table.md.
# The world checks that a method learns; it is not a ranking of methods (docs/synthetic.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DATA=${DATA:-./data}
export OUTPUT=${OUTPUT:-./output/demo}
export SEEDS=${SEEDS:-"1"}
export PYTHON=${PYTHON:-python}
METHODS=${METHODS:-"zsclip cupl wca upl must lafter reclip dpa fair"}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

WORLD="$DATA/synthetic_fg"
CLIP="$WORLD/tiny_clip.pt"
START=$SECONDS

for m in $METHODS; do
  if [ ! -f "$REPO/scripts/$m/main.sh" ]; then
    echo "ERROR: unknown method '$m' in METHODS: scripts/$m/main.sh does not exist (known: zsclip cupl wca upl must lafter reclip dpa fair)" >&2
    exit 2
  fi
done
[[ "$SEEDS" =~ ^[0-9\ ]+$ && -n "${SEEDS// /}" ]] || { echo "ERROR: SEEDS must be integers separated by spaces, got '$SEEDS'" >&2; exit 2; }
mkdir -p "$DATA" "$OUTPUT" || { echo "ERROR: cannot create DATA=$DATA or OUTPUT=$OUTPUT" >&2; exit 2; }

# world.json is written last and the folder is renamed into place, so its presence means a whole world.
if [ ! -f "$WORLD/world.json" ]; then
  echo "[demo] generating the synthetic world in $WORLD"
  "$PYTHON" -m tools.make_synthetic --root "$DATA"
  rm -f "$CLIP"  # a tiny CLIP left from an earlier world would not match the new one
fi
if [ ! -f "$CLIP" ]; then
  echo "[demo] pretraining the tiny CLIP on the source-style images -> $CLIP"
  "$PYTHON" -m tools.pretrain_tiny_clip --root "$DATA" --out "$CLIP"
fi
echo "[demo] world ready ($((SECONDS - START)) s)"

FAILED=()
for m in $METHODS; do
  echo "[demo] $m"
  if ! bash "$REPO/scripts/$m/main.sh" synthetic MODEL.BACKBONE.PATH "$CLIP" > "$OUTPUT/demo_$m.log" 2>&1; then
    echo "[demo] $m failed; its log: $OUTPUT/demo_$m.log" >&2
    tail -n 5 "$OUTPUT/demo_$m.log" >&2
    FAILED+=("$m")
  fi
done

echo
if ! "$PYTHON" -m tools.results_table "$OUTPUT/synthetic" --datasets synthetic --out "$OUTPUT/demo_table"; then
  echo "ERROR: no table: no method finished (logs in $OUTPUT/demo_<method>.log)" >&2
  exit 1
fi
echo
echo "Zero-shot rows (ZeroshotCLIP, CuPL, WCA) are the tiny CLIP without training; UPL, MUST, LaFTer,"
echo "ReCLIP, DPA and FAIR adapted it to the unlabelled target images. This world checks that methods learn"
echo "(accuracy rises above zero-shot); it is not a ranking of methods: the world and the model are tiny and"
echo "say nothing about real data. See docs/synthetic.md."
echo "[demo] done in $((SECONDS - START)) s; table: $OUTPUT/demo_table.md"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "ERROR: these methods failed: ${FAILED[*]} (logs in $OUTPUT/demo_<method>.log)" >&2
  exit 1
fi
