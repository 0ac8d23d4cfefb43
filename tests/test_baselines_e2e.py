"""Each baseline end to end through its script (scripts/<method>/main.sh) on a miniature DTD tree with a tiny
CLIP: the run finishes and writes a complete results.json. LaFTer's and ReCLIP's scripts run end to end in
tests/test_compare_e2e.py (through compare.sh, two datasets, two seeds), their per-epoch history and
checkpoints in-process in tests/test_lafter_reclip.py and tests/test_resume.py."""
import json
import os
import sys

import pytest

from tests.conftest import REPO, run_cli

TOP_FIELDS = {"schema", "dataset", "dataset_key", "trainer", "cfg", "config_files", "seed", "backbone",
              "backbone_fingerprint", "metrics", "protocol", "timings", "history", "output_dir", "finished"}
METRIC_FIELDS = {"accuracy", "error_rate", "macro_f1", "mean_per_class_accuracy", "per_class_accuracy"}
PROTOCOL_FIELDS = {"split", "num_eval_images", "adaptation_data", "num_train_images", "num_shots",
                   "subsample_classes", "epochs", "evaluated_epoch", "selection", "text", "input_size", "precision",
                   "world_size", "batch_per_process", "global_batch", "toolbox_backend"}
TIMING_FIELDS = {"test_images_per_s", "train_images_per_s", "train_seconds", "peak_memory_mb", "device"}

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8"]
RUNS = {
    "WCA": ("wca", ["TRAINER.WCA.N_CROPS", "4"]),
    "UPL": ("upl", ["OPTIM.MAX_EPOCH", "2", "TRAINER.UPL.TOPK", "3", "TRAINER.UPL.ENSEMBLE", "2",
                    "TRAINER.UPL.EVAL_EACH_EPOCH", "True"]),
    "MUST": ("must", ["OPTIM.MAX_EPOCH", "2", "TRAINER.MUST.EMA_WARMUP_ITERS", "2"]),
    "DPA": ("dpa", ["OPTIM.MAX_EPOCH", "2", "TRAINER.DPA.DA_HISTORY", "2"]),
}


@pytest.fixture(scope="module")
def mini_dtd(tmp_path_factory):
    from fairclip.tools.make_miniature_data import make_dtd

    root = tmp_path_factory.mktemp("data")
    info = make_dtd(str(root), classes=3, per_class=6, size=40)
    return str(root), info["classnames"]


@pytest.mark.parametrize("trainer", sorted(RUNS))
def test_baseline_script_writes_complete_results(trainer, mini_dtd, tiny_clip, tmp_path):
    root, classnames = mini_dtd
    folder, opts = RUNS[trainer]
    out = str(tmp_path / "output")
    res = run_cli(["bash", os.path.join(REPO, "scripts", folder, "main.sh"), "dtd", "MODEL.BACKBONE.PATH", tiny_clip,
                   *FAST, *opts], env={"DATA": root, "OUTPUT": out, "SEEDS": "1", "PYTHON": sys.executable})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run_dir = os.path.join(out, "dtd", trainer, "vit_b32", "seed1")
    result = json.load(open(os.path.join(run_dir, "results.json")))

    assert TOP_FIELDS <= set(result)
    assert METRIC_FIELDS <= set(result["metrics"]) and PROTOCOL_FIELDS <= set(result["protocol"])
    assert TIMING_FIELDS <= set(result["timings"])
    assert result["trainer"] == trainer and result["seed"] == 1 and result["cfg"] == "vit_b32"
    assert 0.0 <= result["metrics"]["accuracy"] <= 100.0
    assert set(result["metrics"]["per_class_accuracy"]) == set(classnames)
    assert result["protocol"]["num_eval_images"] == 3 and result["protocol"]["text"]

    if trainer == "WCA":  # training-free
        assert result["protocol"]["epochs"] == 0 and result["protocol"]["selection"] == "none (no training)"
        assert result["history"] == []
        return
    assert result["protocol"]["epochs"] == 2 and result["protocol"]["selection"] == "last epoch"
    assert result["timings"]["train_images_per_s"] > 0
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all("diag_pseudo_label_acc" in h and "lr" in h and "test_acc" in h for h in result["history"])
    assert result["history"][-1]["test_acc"] == result["metrics"]["accuracy"]
    assert os.path.isfile(os.path.join(run_dir, trainer.lower() if trainer != "UPL" else "prompt_learner",
                                       "model.pth.tar-2"))
    if trainer in ("MUST", "DPA"):  # dtd has a per-dataset override of the method config
        assert any(f.endswith("per_dataset/dtd.yaml") for f in result["config_files"])
