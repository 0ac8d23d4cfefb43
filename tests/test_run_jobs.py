"""tools/run_jobs: the plan, the slots, and real zero-shot runs spread over two CPU slots."""
import json
import os
import sys

import pytest

from tests.conftest import run_cli
from fairclip.tools.run_jobs import available_methods, parse_slots, plan_jobs, resolve_method
from fairclip.toolbox.errors import UserError


def test_methods_come_from_the_scripts():
    methods = available_methods()
    assert methods["fair"] == "FAIR" and methods["zsclip"] == "ZeroshotCLIP"
    assert resolve_method("FAIR", methods) == "fair" and resolve_method("zeroshotclip", methods) == "zsclip"
    with pytest.raises(UserError, match="unknown method 'nope'; choose from .*fair"):
        resolve_method("nope", methods)


def test_slots(monkeypatch):
    assert parse_slots("0,1") == ["0", "1"]
    assert parse_slots("0,1", per_gpu=2) == ["0", "0", "1", "1"]
    assert parse_slots("cpu:3") == ["cpu"] * 3 and parse_slots("cpu") == ["cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert parse_slots("") == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parse_slots("") == ["cpu"]
    for bad in ("gpu0", "cpu:0", "cpu:x"):
        with pytest.raises(UserError, match="--gpus"):
            parse_slots(bad)


def test_plan_skips_finished_runs(tmp_path):
    done = tmp_path / "dtd" / "FAIR" / "vit_b32" / "seed2"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    jobs = plan_jobs(["dtd", "eurosat"], ["fair"], [1, 2], str(tmp_path), "vit_b32")
    assert [(j["dataset"], j["seed"], j["finished"]) for j in jobs] == [
        ("dtd", 1, False), ("dtd", 2, True), ("eurosat", 1, False), ("eurosat", 2, False)]
    with pytest.raises(UserError, match="unknown dataset 'cars'"):
        plan_jobs(["cars"], ["fair"], [1], str(tmp_path), "vit_b32")


def _run_jobs(*args):
    return run_cli([sys.executable, "-m", "tools.run_jobs", *map(str, args)], env={"OMP_NUM_THREADS": "1"})


def test_runs_jobs_in_parallel_skips_them_after_and_reports_failures(mini_pets_dtd, tiny_clip, tmp_path):
    out = tmp_path / "output"
    common = ["--methods", "zsclip", "--gpus", "cpu:2", "--data", mini_pets_dtd, "--output", out]
    res = _run_jobs("--datasets", "oxford_pets", "dtd", "--seeds", "1", *common,
                    "--", "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "jobs" / "summary.json").read_text())
    assert [j["status"] for j in summary] == ["done", "done"]
    assert max(j["start"] for j in summary) < min(j["end"] for j in summary)  # both ran at once
    for dataset in ("oxford_pets", "dtd"):
        assert (out / dataset / "ZeroshotCLIP" / "vit_b32" / "seed1" / "results.json").is_file()
    assert os.path.isfile(summary[0]["log"])

    # again: nothing to run; a bad override fails that job only, with its log named
    res = _run_jobs("--datasets", "oxford_pets", "dtd", "--seeds", "1", "2", *common,
                    "--", "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0", "TEST.NOPE", "1")
    assert res.returncode == 1
    summary = json.loads((out / "jobs" / "summary.json").read_text())
    status = {(j["dataset"], j["seed"]): j["status"] for j in summary}
    assert status[("oxford_pets", 1)].startswith("skipped") and status[("dtd", 1)].startswith("skipped")
    assert status[("oxford_pets", 2)].startswith("FAILED") and status[("dtd", 2)].startswith("FAILED")
    assert "unknown config key 'TEST.NOPE'" in open(summary[1]["log"]).read()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    res = _run_jobs("--datasets", "nope", "--methods", "fair", "--output", tmp_path, "--dry-run")
    assert res.returncode == 2 and res.stderr.startswith("ERROR: unknown dataset 'nope'")
    res = _run_jobs("--datasets", "dtd", "--methods", "fair", "--output", tmp_path, "--dry-run", "--", "KEY")
    assert res.returncode == 2 and "KEY VALUE pairs" in res.stderr
    res = _run_jobs("--datasets", "dtd", "--methods", "fair", "--seeds", "1", "--gpus", "0,1", "--output",
                    tmp_path, "--dry-run")
    assert res.returncode == 0 and "1 jobs (0 finished earlier, 1 to run) on 2 slot(s): 0, 1" in res.stdout
