#!/usr/bin/env bash
# LaFTer over seeds (train, then final test): bash scripts/lafter/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: LaFTer
# order: 53
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" LaFTer train "$@"
