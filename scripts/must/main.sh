#!/usr/bin/env bash
# MUST over seeds (train, then final test): bash scripts/must/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: MUST-style
# order: 50
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" MUST train "$@"
