#!/usr/bin/env bash
# ReCLIP over seeds (train, then final test): bash scripts/reclip/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: ReCLIP
# order: 56
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" ReCLIP train "$@"
