#!/usr/bin/env bash
# FAIR over seeds (train, then final test): bash scripts/fair/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: FAIR
# order: 70
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" FAIR train "$@"
