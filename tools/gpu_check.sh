#!/usr/bin/env bash
# The GPU checks (speed benchmark, DDP, a short FAIR run on the GPU) in one script, for a machine with CUDA and torch but no network:
#
#   bash tools/gpu_check.sh [OUT]        (OUT: the results folder; default $OUT, else ./gpu_check)
#   bash tools/gpu_check.sh --help       (this text)
#
# 1. the speed benchmark: random-weight ViT-B/32, bf16, batch 256 (tools/benchmark.py; < 4 min on an H100)
# 2. the DDP equivalence tests on 2 GPUs with NCCL (tests/test_ddp.py) when 2 GPUs are visible, else skipped
# 3. a short FAIR training run (2 epochs) on a miniature Oxford Pets tree with GPU views in bf16, launched
#    through torchrun (1 process: the DDP/NCCL path), random-weight ViT-B/32
# 4. only with GPU_CHECK_COMPILE=1: the model-only workloads again with torch.compile
# Python packages the machine lacks (openai-clip, yacs, ftfy, ...) are installed from wheels in .whl/ when
# that folder is there (carry it); nothing is fetched. Results (at most 8 files, 2 folders deep):
# OUT/summary.txt, OUT/bench.log, OUT/bench/benchmark.{md,json}, OUT/fair.log, OUT/fair_results.json,
# OUT/ddp.log (2 GPUs), OUT/compile.md (GPU_CHECK_COMPILE=1). Exit status 1 if a step failed.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
  -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  -*) echo "ERROR: unknown option '$1'; usage: bash tools/gpu_check.sh [OUT] (--help for more)" >&2; exit 2 ;;
esac
OUT=${1:-${OUT:-$REPO/gpu_check}}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu-check-XXXXXX)
mkdir -p "$OUT"
cd "$REPO"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOOLBOX=builtin
export FAIRCLIP_CACHE="$WORK/cache"

status=0
summary="$OUT/summary.txt"
: >"$summary"
step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$summary"
  tail -n 25 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || status=1
}

{
  echo "# gpu_check $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'torchvision', torchvision.__version__)"
  "$PY" -c "import clip, yacs, tabulate; print('clip, yacs, tabulate: ok')" 2>&1 | tail -n 1
} | tee -a "$summary"

# 1. benchmark
step bench 330 "$PY" -m tools.benchmark --device cuda --precision bf16 --batch 256 --out "$OUT/bench"

# 2. DDP equivalence on 2 GPUs
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "${NGPU:-0}" -ge 2 ]; then
  step ddp 300 env FAIRCLIP_DDP_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_ddp.py
else
  echo "ddp: skipped ($NGPU GPU visible; the equivalence test needs 2; the CPU/gloo version runs in the test suite)" | tee -a "$summary"
fi

# 3. a short FAIR run with GPU views in bf16, through torchrun (1 process)
"$PY" - "$WORK" <<'EOF'
import contextlib, io, sys
from tools.benchmark import clip_file
from tools.make_miniature_data import make_oxford_pets
work = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()):
    make_oxford_pets(work + "/data", classes=37, per_class=8, size=320)
print(clip_file("vit-b32", work, ""))
EOF
step fair 240 "$PY" -m torch.distributed.run --nproc_per_node=1 --master_port 29533 train.py \
  --root "$WORK/data" --trainer FAIR --seed 1 --output-dir "$WORK/fair" \
  --dataset-config-file configs/datasets/oxford_pets.yaml --config-file configs/trainers/FAIR/vit_b32.yaml \
  MODEL.BACKBONE.PATH "$WORK/vit-b32_random.pt" TRAINER.FAIR.PREC bf16 DATALOADER.GPU_VIEWS always \
  DATALOADER.DECODED_CACHE_DIR "$WORK/decoded" DATALOADER.TRAIN_X.BATCH_SIZE 32 OPTIM.MAX_EPOCH 2 TRAIN.PRINT_FREQ 2
cp "$WORK/fair/results.json" "$OUT/fair_results.json" 2>/dev/null || { echo "fair: no results.json" | tee -a "$summary"; status=1; }

# 4. optional: torch.compile
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then
  step compile 300 "$PY" -m tools.benchmark --device cuda --precision bf16 --batch 256 --compile \
    --workloads zeroshot_model fair_model fair_encoders --out "$WORK/compile"
  cp "$WORK/compile/benchmark.md" "$OUT/compile.md" 2>/dev/null
fi

rm -rf "$WORK"
echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEP FAILED); results in $OUT" | tee -a "$summary"
exit $status
