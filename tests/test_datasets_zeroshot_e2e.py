"""Zero-shot CLIP runs end to end on the miniature tree of each of the 14 dataset configs (tiny CLIP,
CPU): reader -> data manager -> zero-shot evaluation -> results.json.

Two datasets go through ``bash scripts/zsclip/main.sh <dataset>`` in a subprocess; the others run the
same ``train.py`` command line in this process (a new Python costs ~4 s of imports per dataset)."""
import json
import os.path as osp
import sys

import pytest

from tests.conftest import REPO, log_tee_undone, run_cli
from fairclip.tools.make_miniature_data import BENCHMARKS, make_all

pytestmark = pytest.mark.skipif(not osp.isfile(osp.join(REPO, "trainers", "zsclip.py")), reason="no ZeroshotCLIP")


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini-e2e")
    return root, make_all(root, BENCHMARKS, classes=3, per_class=6)


SCRIPT_RUNS = ("oxford_pets", "stanford_cars")


def _run_in_process(key, root, tiny_clip, out):
    """What scripts/run_seeds.sh runs for one seed, through train.py's entry point in this process."""
    import train

    with log_tee_undone():  # train.py tees stdout into the run's log.txt
        train.cli([
            "--root", str(root), "--seed", "1", "--trainer", "ZeroshotCLIP",
            "--dataset-config-file", osp.join(REPO, "configs", "datasets", key + ".yaml"),
            "--config-file", osp.join(REPO, "configs", "trainers", "ZeroshotCLIP", "vit_b32.yaml"),
            "--output-dir", osp.join(str(out), key, "ZeroshotCLIP", "vit_b32", "seed1"), "--eval-only",
            "RUN.CFG_NAME", "vit_b32", "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0",
            "VERBOSE", "False",
        ])


@pytest.mark.parametrize("key", BENCHMARKS)
def test_zero_shot_runs_on_miniature_tree(key, mini_root, tiny_clip, tmp_path):
    root, infos = mini_root
    if key in SCRIPT_RUNS:
        env = {"DATA": str(root), "SEEDS": "1", "OUTPUT": str(tmp_path), "PYTHON": sys.executable}
        proc = run_cli(["bash", osp.join(REPO, "scripts", "zsclip", "main.sh"), key,
                        "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0"], env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    else:
        _run_in_process(key, root, tiny_clip, tmp_path)
    results = osp.join(tmp_path, key, "ZeroshotCLIP", "vit_b32", "seed1", "results.json")
    with open(results) as f:
        data = json.load(f)
    assert data["dataset_key"] == key
    assert sorted(data["metrics"]["per_class_accuracy"]) == sorted(infos[key]["classnames"])
