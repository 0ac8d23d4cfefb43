"""``scripts/compare.sh`` end to end: methods x two miniature datasets x seeds with the tiny CLIP, one
epoch; then the table (every row filled) and both plot kinds. Also: a re-run skips finished seeds and
carries on past a failing method; bad lists fail before anything runs.

Each run starts a Python process (~4 s of imports), so the suite runs a training-free method and three
self-training ones over two seeds (``METHODS="zsclip lafter reclip fair"``, the done criterion of the LaFTer/
ReCLIP issue); ``FAIRCLIP_FULL_E2E=1`` runs all nine methods, two datasets, three seeds (54 runs, ~6 minutes
on 2 cores)."""
import csv
import os
import os.path as osp
import shutil
import sys

import pytest

from tests.conftest import REPO, run_cli

SCRIPT = osp.join(REPO, "scripts", "compare.sh")
FULL = os.environ.get("FAIRCLIP_FULL_E2E") == "1"
ALL_METHODS = [m for m in ("zsclip", "cupl", "wca", "upl", "must", "lafter", "reclip", "dpa", "fair")
               if osp.isfile(osp.join(REPO, "scripts", m, "main.sh"))]
METHODS = ALL_METHODS if FULL else ["zsclip", "lafter", "reclip", "fair"]
SEEDS = [1, 2, 3] if FULL else [1, 2]
TRAINERS = {"zsclip": "ZeroshotCLIP", "cupl": "CuPL", "wca": "WCA", "upl": "UPL", "must": "MUST", "lafter": "LaFTer",
            "reclip": "ReCLIP", "dpa": "DPA", "fair": "FAIR"}
DATASETS = ["dtd", "eurosat"]
# Small everything: the time goes into starting one python per seed, so two at a time, one thread each.
FAST = ["DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "TRAINER.FAIR.N_CROPS", "3", "TRAINER.FAIR.TOP_K", "2", "TRAINER.WCA.N_CROPS", "3",
        "TRAINER.LAFTER.TEXT_STEPS", "3", "TRAINER.LAFTER.N_PROMPTS", "2", "TRAINER.RECLIP.N_NEIGHBORS", "3"]


def _env(data, out, **extra):
    env = {"DATA": str(data), "OUTPUT": str(out), "PYTHON": sys.executable, "JOBS": "2", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory):
    from fairclip.tools.make_miniature_data import make_dtd, make_eurosat

    root = tmp_path_factory.mktemp("compare-data")
    make_dtd(str(root), classes=2, per_class=4, size=32)
    make_eurosat(str(root), classes=2, per_class=4, size=32)
    return root


@pytest.fixture(scope="module")
def compared(mini_data, tiny_clip, tmp_path_factory):
    """One command: METHODS x two datasets x SEEDS (the done criterion with FAIRCLIP_FULL_E2E=1)."""
    out = tmp_path_factory.mktemp("compare-out")
    env = _env(mini_data, out, METHODS=" ".join(METHODS), DATASETS=" ".join(DATASETS),
               SEEDS=" ".join(map(str, SEEDS)))
    res = run_cli(["bash", SCRIPT, "MODEL.BACKBONE.PATH", tiny_clip] + FAST, env=env, timeout=900)
    return out, res


def test_every_method_has_a_script():
    assert ALL_METHODS == ["zsclip", "cupl", "wca", "upl", "must", "lafter", "reclip", "dpa", "fair"]


def test_one_command_fills_every_row_and_writes_both_plots(compared):
    out, res = compared
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(osp.join(out, "comparison.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [TRAINERS[m] for m in METHODS]
    for row in rows:
        for d in DATASETS:
            assert row[d + "_n"] == str(len(SEEDS)), row
            assert 0.0 <= float(row[d + "_mean"]) <= 100.0 and row[d + "_std"] != ""
        assert row["average_datasets"] == "dtd eurosat" and row["average_mean"] != ""
        assert row["protocol_mismatch"] == "False"
    md = open(osp.join(out, "comparison.md")).read()
    assert md in res.stdout  # printed as well
    table_lines = [line for line in md.split("### Protocol")[0].splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(METHODS)  # header + one row per method
    for line in table_lines[1:]:
        cells = [c.strip() for c in line.strip("| ").split("|")]
        assert len(cells) == 4 and all(c not in ("", "-") and "n=" not in c for c in cells), line
    assert "{} seeds ({})".format(len(SEEDS), ", ".join(map(str, SEEDS))) in md and "Protocol: split test" in md
    for png in ("comparison_per_class_eurosat.png", "comparison_curves.png"):
        with open(osp.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert osp.getsize(osp.join(out, png)) > 10000
    for m in METHODS:
        for d in DATASETS:
            assert osp.isfile(osp.join(out, "compare_logs", "{}-{}.log".format(m, d)))
            for seed in SEEDS:
                assert osp.isfile(osp.join(out, d, TRAINERS[m], "vit_b32", "seed{}".format(seed), "results.json"))


def test_rerun_skips_finished_seeds_and_carries_on_past_a_failing_method(compared, mini_data, tiny_clip):
    out, first = compared
    assert first.returncode == 0
    # A new seed; FAIR gets an invalid TOP_K (more than its crops) and fails, zero-shot does not read it.
    new = max(SEEDS) + 1
    seeds = SEEDS + [new]
    env = _env(mini_data, out, METHODS="fair zsclip", DATASETS="dtd", SEEDS=" ".join(map(str, seeds)), JOBS="1")
    bad = [x if x != "2" or FAST[i - 1] != "TRAINER.FAIR.TOP_K" else "9" for i, x in enumerate(FAST)]
    res = run_cli(["bash", SCRIPT, "MODEL.BACKBONE.PATH", tiny_clip] + bad, env=env)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    for seed in SEEDS:
        assert "[ZeroshotCLIP dtd seed{}] finished earlier".format(seed) in res.stdout
        assert "[FAIR dtd seed{}] finished earlier".format(seed) in res.stdout
    assert "TRAINER.FAIR.TOP_K=9" in res.stdout + res.stderr
    assert "fair on dtd: FAILED" in res.stderr and "1 method run(s) failed" in res.stderr
    assert osp.isfile(osp.join(out, "dtd", "ZeroshotCLIP", "vit_b32", "seed{}".format(new), "results.json"))
    md = open(osp.join(out, "comparison.md")).read()
    table = md.split("### Protocol")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows)[1:3] == ["FAIR", "ZeroshotCLIP"]  # METHODS order
    assert "(n={})".format(len(SEEDS)) in rows["FAIR"] and "n=" not in rows["ZeroshotCLIP"]
    assert "{} seeds ({})".format(len(seeds), ", ".join(map(str, seeds))) in md


def test_bad_lists_fail_before_anything_runs(tmp_path):
    for env, message in [
        ({"METHODS": "zsclip"}, "ERROR: set DATASETS"),
        ({"DATASETS": "dtd", "METHODS": "zsclip fiar"}, "ERROR: unknown method 'fiar' in METHODS"),
        ({"DATASETS": "dtd imagenett"}, "ERROR: unknown dataset 'imagenett' in DATASETS"),
        ({"DATASETS": "dtd", "JOBS": "two"}, "ERROR: JOBS must be a positive integer"),
    ]:
        res = run_cli(["bash", SCRIPT], env=_env(tmp_path / "data", tmp_path / "out", **env))
        assert res.returncode == 2 and res.stderr.startswith(message), (env, res.stderr)
    res = run_cli(["bash", SCRIPT, "OPTIM.MAX_EPOCH"], env=_env(tmp_path, tmp_path / "out", DATASETS="dtd"))
    assert res.returncode == 2 and "KEY VALUE pairs" in res.stderr
    assert not osp.exists(tmp_path / "out")


def test_a_method_without_a_script_is_a_clear_failure(tmp_path):
    """In a checkout where a method's script is missing (a baseline not written yet), the others still run."""
    fake = tmp_path / "repo"
    os.makedirs(fake / "scripts")
    os.makedirs(fake / "configs" / "datasets")
    shutil.copy(SCRIPT, fake / "scripts" / "compare.sh")
    shutil.copy(osp.join(REPO, "configs", "datasets", "dtd.yaml"), fake / "configs" / "datasets")
    res = run_cli(["bash", str(fake / "scripts" / "compare.sh")],
                  env=_env(tmp_path / "data", tmp_path / "out", METHODS="dpa", DATASETS="dtd"))
    assert res.returncode == 1
    assert "ERROR: method 'dpa' has no script yet ({}/scripts/dpa/main.sh does not exist)".format(fake) in res.stderr
    assert "dpa on dtd (exit 127" in res.stderr
