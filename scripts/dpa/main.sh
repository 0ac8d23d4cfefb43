#!/usr/bin/env bash
# DPA over seeds (train, then final test): bash scripts/dpa/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: DPA
# order: 60
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" DPA train "$@"
