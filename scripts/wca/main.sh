#!/usr/bin/env bash
# WCA over seeds (training-free; each seed draws other crops): bash scripts/wca/main.sh DATASET [KEY VALUE ...]
# env: DATA (default ./data), SEEDS (default "1 2 3"), OUTPUT (default ./output), CFG (default vit_b32)
# title: WCA
# order: 30
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" WCA eval "$@"
