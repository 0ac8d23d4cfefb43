"""Parity scripts: each ``tools/parity/<method>.py --reference /path/to/checkout`` runs the authors' code
beside ours on identical inputs and compares the computation (docs/parity.md). The reference checkout is
imported from the path given, never committed or installed; shims that let old code run on today's torch
live in the scripts. ``_common`` holds the shared parts."""
