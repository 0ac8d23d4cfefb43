#!/usr/bin/env bash
# ZeroshotCLIP over seeds: bash scripts/zsclip/main.sh DATASET [KEY VALUE ...]   (env: DATA, SEEDS, OUTPUT, CFG)
# title: zero-shot CLIP
# order: 10
exec "$(dirname "${BASH_SOURCE[0]}")/../run_seeds.sh" ZeroshotCLIP eval "$@"
