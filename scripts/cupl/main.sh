#!/usr/bin/env bash
# CuPL over seeds: bash scripts/cupl/main.sh DATASET [KEY VALUE ...]   (env: DATA, SEEDS, OUTPUT, CFG)
# title: CuPL
# order: 20
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" CuPL eval "$@"
