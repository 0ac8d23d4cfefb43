#!/usr/bin/env bash
# One-command CPU demo: zero-shot CLIP vs unsupervised adaptation on the synthetic world, no downloads.
#
#   bash scripts/demo.sh
#
# env: DATA    data root (default ./data); the world and its tiny CLIP go to $DATA/synthetic_fg/
#      OUTPUT  run folders and the table (default ./output/demo)
#      SEEDS   seeds of every method (default "1")
#      METHODS method folders under scripts/ (default: every method with a schedule for this world,
#              configs/trainers/<TRAINER>/per_dataset/synthetic.yaml; `python -m tools.methods` lists them)
#      THREADS torch CPU threads of the tiny CLIP's pretraining (default 2; on a busy machine 1 can be much
#              faster; another thread count gives other weights, so other numbers: docs/synthetic.md)
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
THREADS=${THREADS:-2}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

WORLD="$DATA/synthetic_fg"
CLIP="$WORLD/tiny_clip.pt"
START=$SECONDS
die() { echo "ERROR: $*" >&2; exit 2; }

# The methods ("folder trainer mode title" lines), read from scripts/<method>/main.sh by tools/methods.py.
KNOWN=$("$PYTHON" "$REPO/tools/methods.py" --shell) || die "cannot list the methods with PYTHON=$PYTHON (tools/methods.py)"
if [ -z "${METHODS:-}" ]; then
  METHODS=$(echo "$KNOWN" | while read -r folder trainer _; do
    if [ -f "$REPO/configs/trainers/$trainer/per_dataset/synthetic.yaml" ]; then echo "$folder"; fi
  done | tr '\n' ' ')
fi
FOLDERS=(); ZERO_SHOT=(); ADAPTED=()
for m in $METHODS; do
  line=$(echo "$KNOWN" | awk -v m="${m,,}" 'tolower($1) == m || tolower($2) == m {print; exit}')
  [ -n "$line" ] || die "unknown method '$m' in METHODS (known: $(echo "$KNOWN" | awk '{print $1}' | tr '\n' ' '))"
  read -r folder trainer mode title <<< "$line"
  FOLDERS+=("$folder")
  if [ "$mode" = train ]; then ADAPTED+=("$title"); else ZERO_SHOT+=("$title"); fi
done
[ ${#FOLDERS[@]} -gt 0 ] || die "no method to run (METHODS is empty)"
[[ "$SEEDS" =~ ^[0-9\ ]+$ && -n "${SEEDS// /}" ]] || die "SEEDS must be non-negative integers separated by spaces, got '$SEEDS'"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, got '$THREADS'"
mkdir -p "$DATA" "$OUTPUT" || die "cannot create DATA=$DATA or OUTPUT=$OUTPUT"

# world.json is written last and the folder is renamed into place, so its presence means a whole world.
if [ ! -f "$WORLD/world.json" ]; then
  echo "[demo] generating the synthetic world in $WORLD"
  "$PYTHON" -m tools.make_synthetic --root "$DATA"
  rm -f "$CLIP"  # a tiny CLIP left from an earlier world would not match the new one
fi
if [ ! -f "$CLIP" ]; then
  echo "[demo] pretraining the tiny CLIP on the source-style images ($THREADS threads) -> $CLIP"
  # openai-clip's import warns that pkg_resources is deprecated: that one warning is silenced.
  PYTHONWARNINGS="ignore:pkg_resources is deprecated:UserWarning${PYTHONWARNINGS:+,$PYTHONWARNINGS}" \
    "$PYTHON" -m tools.pretrain_tiny_clip --root "$DATA" --out "$CLIP" --threads "$THREADS"
fi
echo "[demo] world ready ($((SECONDS - START)) s)"

FAILED=()
for m in "${FOLDERS[@]}"; do
  echo "[demo] $m"
  if ! bash "$REPO/scripts/$m/main.sh" synthetic MODEL.BACKBONE.PATH "$CLIP" > "$OUTPUT/demo_$m.log" 2>&1; then
    echo "[demo] $m failed; its log: $OUTPUT/demo_$m.log" >&2
    tail -n 5 "$OUTPUT/demo_$m.log" >&2
    FAILED+=("$m")
  fi
done

echo
if ! "$PYTHON" -m tools.results_table "$OUTPUT/synthetic" --datasets synthetic --titles --out "$OUTPUT/demo_table"; then
  echo "ERROR: no table: no method finished (logs in $OUTPUT/demo_<method>.log)" >&2
  exit 1
fi
echo
join() { local out; out=$(printf '%s, ' "$@"); echo "${out%, }"; }
if [ ${#ZERO_SHOT[@]} -gt 0 ]; then echo "Training-free rows ($(join "${ZERO_SHOT[@]}")) are the tiny CLIP without training."; fi
if [ ${#ADAPTED[@]} -gt 0 ]; then echo "Self-training rows ($(join "${ADAPTED[@]}")) adapted it to the unlabelled target images."; fi
echo "This world checks that methods learn (accuracy rises above zero-shot); it is not a ranking of methods:"
echo "the world and the model are tiny and say nothing about real data. Another machine, thread count or torch"
echo "build pretrains another tiny CLIP, so its numbers differ by several points (docs/synthetic.md)."
echo "[demo] done in $((SECONDS - START)) s; table: $OUTPUT/demo_table.md"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "ERROR: these methods failed: ${FAILED[*]} (logs in $OUTPUT/demo_<method>.log)" >&2
  exit 1
fi
