"""``scripts/compare.sh`` end to end: methods x two miniature datasets x seeds with the tiny CLIP, one
epoch; then the table (every row filled) and both plot kinds. Also: a re-run skips finished seeds, carries
on past a failing method, prints one line per seed and moves the earlier table of another selection aside;
bad lists fail before anything runs.

The runs happen in a copy of the repository into which ``tools.new_trainer`` scaffolded one more method
(``Scaffolded``, a self-training method, ``--like must``): with no other file edited it is found by the
script, run on both datasets, and gets its row in the table and its curves.

Each run starts a Python process (~4 s of imports), so the suite runs two seeds of the selection
``METHODS="zsclip lafter reclip fair"`` (the done criterion of the LaFTer/ReCLIP issue) plus the scaffolded
method; ``FAIRCLIP_FULL_E2E=1`` runs every shipped method and the scaffolded one, two datasets, three seeds
(~6 minutes on 2 cores)."""
import csv
import filecmp
import os
import os.path as osp
import shutil
import sys

import pytest

from tests.conftest import REPO, run_cli
from fairclip.tools import methods as method_registry
from fairclip.tools.new_trainer import scaffold

SCRIPT = osp.join(REPO, "scripts", "compare.sh")
FULL = os.environ.get("FAIRCLIP_FULL_E2E") == "1"
SHIPPED = [m.name for m in method_registry.discover()]
NEW = "scaffolded"  # the method tools.new_trainer adds in the copy (trainer Scaffolded)
METHODS = (SHIPPED if FULL else ["zsclip", "lafter", "reclip", "fair"]) + [NEW]
SEEDS = [1, 2, 3] if FULL else [1, 2]
TRAINERS = dict({m.name: m.trainer for m in method_registry.discover()}, **{NEW: "Scaffolded"})
DATASETS = ["dtd", "eurosat"]
# Small everything: the time goes into starting one python per seed, so two at a time, one thread each.
FAST = ["DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "TRAINER.FAIR.N_CROPS", "3", "TRAINER.FAIR.TOP_K", "2", "TRAINER.WCA.N_CROPS", "3",
        "TRAINER.LAFTER.TEXT_STEPS", "3", "TRAINER.LAFTER.N_PROMPTS", "2", "TRAINER.RECLIP.N_NEIGHBORS", "3"]
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", "output", "data",
                                     "gpu_check", ".whl")


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
def repo_copy(tmp_path_factory):
    """A copy of the repository plus one scaffolded method, and the files the scaffold wrote."""
    copy = str(tmp_path_factory.mktemp("repo") / "fairclip")
    shutil.copytree(REPO, copy, ignore=COPY_IGNORE)
    written = scaffold("Scaffolded", like="must", repo=copy)
    return copy, sorted(osp.relpath(p, copy) for p in written)


@pytest.fixture(scope="module")
def compared(mini_data, tiny_clip, repo_copy, tmp_path_factory):
    """One command: METHODS x two datasets x SEEDS (the done criterion with FAIRCLIP_FULL_E2E=1)."""
    copy, _ = repo_copy
    out = tmp_path_factory.mktemp("compare-out")
    env = _env(mini_data, out, METHODS=" ".join(METHODS), DATASETS=" ".join(DATASETS),
               SEEDS=" ".join(map(str, SEEDS)))
    res = run_cli(["bash", osp.join(copy, "scripts", "compare.sh"), "MODEL.BACKBONE.PATH", tiny_clip] + FAST,
                  env=env, cwd=copy, timeout=900)
    return out, res


def _differences(a, b):
    """Paths that differ or exist on one side only, relative to the two roots."""
    found = []

    def walk(c, rel):
        found.extend(osp.join(rel, n) for n in c.left_only + c.right_only + c.diff_files + c.funny_files)
        for name, sub in c.subdirs.items():
            walk(sub, osp.join(rel, name))

    walk(filecmp.dircmp(a, b, ignore=[".git", "__pycache__", ".pytest_cache", "output", "data", "gpu_check",
                                      ".whl"] + [n for n in os.listdir(a) if n.endswith(".egg-info")]), "")
    return sorted(found)


def test_the_scaffold_edits_nothing_else_and_the_method_is_found(repo_copy):
    copy, written = repo_copy
    assert written == ["configs/trainers/Scaffolded/per_dataset/synthetic.yaml",
                       "configs/trainers/Scaffolded/vit_b32.yaml", "scripts/scaffolded/main.sh",
                       "trainers/scaffolded.py"]
    # every other file is the repository's: only the new folders and the new trainer file differ
    assert _differences(REPO, copy) == ["configs/trainers/Scaffolded", "scripts/scaffolded", "trainers/scaffolded.py"]
    new = method_registry.find("scaffolded", method_registry.discover(copy))
    assert (new.trainer, new.mode, new.trains, new.title) == ("Scaffolded", "train", True, "Scaffolded")
    assert [m.name for m in method_registry.discover(copy)][-1] == NEW  # no order line: after the shipped ones


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
    assert open(osp.join(out, "comparison.selection")).read().startswith("methods: " + " ".join(METHODS) + " |")
    for png in ("comparison_per_class_eurosat.png", "comparison_curves.png"):
        with open(osp.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert osp.getsize(osp.join(out, png)) > 10000
    for m in METHODS:
        for d in DATASETS:
            assert osp.isfile(osp.join(out, "compare_logs", "{}-{}.log".format(m, d)))
            for seed in SEEDS:
                assert osp.isfile(osp.join(out, d, TRAINERS[m], "vit_b32", "seed{}".format(seed), "results.json"))


def test_rerun_skips_finished_seeds_and_carries_on_past_a_failing_method(compared, mini_data, tiny_clip, repo_copy):
    out, first = compared
    assert first.returncode == 0
    earlier = {name: open(osp.join(out, name), "rb").read() for name in ("comparison.md", "comparison.csv")}
    # A new seed; the scaffolded method gets an invalid threshold and fails, zero-shot does not read it.
    new = max(SEEDS) + 1
    seeds = SEEDS + [new]
    env = _env(mini_data, out, METHODS="scaffolded zsclip", DATASETS="dtd", SEEDS=" ".join(map(str, seeds)),
               JOBS="1")
    bad = FAST + ["TRAINER.SCAFFOLDED.CONF_THRESHOLD", "1.5"]
    copy = repo_copy[0]
    res = run_cli(["bash", osp.join(copy, "scripts", "compare.sh"), "MODEL.BACKBONE.PATH", tiny_clip] + bad,
                  env=env, cwd=copy)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    for seed in SEEDS:
        assert "[ZeroshotCLIP dtd seed{}] finished earlier".format(seed) in res.stdout
        assert "[Scaffolded dtd seed{}] finished earlier".format(seed) in res.stdout
    assert "ERROR: TRAINER.SCAFFOLDED.CONF_THRESHOLD=1.5 must be in [0, 1)" in res.stdout + res.stderr  # check_cfg
    assert "scaffolded on dtd: FAILED" in res.stderr and "1 method run(s) failed" in res.stderr
    # JOBS=1: a progress line per pair and per seed; the runs' own output stays in their logs
    assert "[compare] (1/2) scaffolded on dtd (log: " in res.stdout and "[compare] (2/2) zsclip on dtd" in res.stdout
    assert "[ZeroshotCLIP dtd seed{}] -> ".format(new) in res.stdout and "Results written to" in res.stdout
    assert "** Config **" not in res.stdout
    assert "** Config **" in open(osp.join(out, "compare_logs", "zsclip-dtd.log")).read()
    # the first table (another selection) moved aside with a word, not overwritten
    moved = osp.join(out, "comparison.earlier-1")
    assert "held another selection (methods: {} |".format(" ".join(METHODS)) in res.stdout and moved in res.stdout
    for name, data in earlier.items():
        assert open(osp.join(moved, name), "rb").read() == data
    assert osp.isfile(osp.join(moved, "comparison_curves.png"))
    assert osp.isfile(osp.join(out, "dtd", "ZeroshotCLIP", "vit_b32", "seed{}".format(new), "results.json"))
    md = open(osp.join(out, "comparison.md")).read()
    table = md.split("### Protocol")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows)[1:3] == ["Scaffolded", "ZeroshotCLIP"]  # METHODS order
    assert "(n={})".format(len(SEEDS)) in rows["Scaffolded"] and "n=" not in rows["ZeroshotCLIP"]
    assert "{} seeds ({})".format(len(seeds), ", ".join(map(str, seeds))) in md


def test_bad_lists_fail_before_anything_runs(tmp_path):
    for env, message in [
        ({"METHODS": "zsclip"}, "ERROR: set DATASETS"),
        ({"DATASETS": "dtd", "METHODS": "zsclip fiar"}, "ERROR: unknown method 'fiar' in METHODS (known: zsclip "),
        ({"DATASETS": "dtd imagenett"}, "ERROR: unknown dataset 'imagenett' in DATASETS"),
        ({"DATASETS": "dtd", "JOBS": "two"}, "ERROR: JOBS must be a positive integer"),
        ({"DATASETS": "dtd", "SEEDS": "1 x"}, "ERROR: SEEDS must be non-negative integers"),
        ({"DATASETS": "dtd", "NAME": "a/b"}, "ERROR: NAME must be a file name"),
    ]:
        res = run_cli(["bash", SCRIPT], env=_env(tmp_path / "data", tmp_path / "out", **env))
        assert res.returncode == 2 and res.stderr.startswith(message), (env, res.stderr)
    res = run_cli(["bash", SCRIPT, "OPTIM.MAX_EPOCH"], env=_env(tmp_path, tmp_path / "out", DATASETS="dtd"))
    assert res.returncode == 2 and "KEY VALUE pairs" in res.stderr
    assert not osp.exists(tmp_path / "out")


def test_method_scripts_check_seeds_before_running(tmp_path):
    """'5 x' would train seed 5 and then stop; '-1' would run unseeded: both stop before anything runs."""
    for seeds in ("5 x", "-1", " "):
        res = run_cli(["bash", osp.join(REPO, "scripts", "fair", "main.sh"), "dtd"],
                      env={"SEEDS": seeds, "OUTPUT": str(tmp_path / "out"), "PYTHON": "false"})
        assert res.returncode == 2 and res.stderr.startswith("ERROR: SEEDS must be non-negative integers"), res.stderr
    assert not osp.exists(tmp_path / "out")
