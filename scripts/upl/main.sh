#!/usr/bin/env bash
# UPL over seeds (pseudo-label, then train prompts; final test): bash scripts/upl/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: UPL
# order: 40
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" UPL train "$@"
