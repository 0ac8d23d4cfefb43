"""tools/run_jobs beyond one machine: the Slurm launcher (through submitit; its local executor here, no Slurm
needed) and the sweep planner."""
import json
import os
import sys

import pytest


def test_slurm_launcher_runs_a_sweep_through_submitits_local_executor(mini_pets_dtd, tiny_clip, tmp_path, capsys,
                                                                       monkeypatch):
    from fairclip.tools.run_jobs import main

    # in this process (the launcher's imports are paid already); the jobs are processes of their own
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 4 jobs at once on a small machine
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # the launcher prepends the repository
    out = tmp_path / "output"
    sweep = ["--datasets", "oxford_pets", "dtd", "--methods", "zsclip", "cupl", "--data", mini_pets_dtd,
             "--output", str(out), "--partition", "P", "--gpus-per-job", "1", "--time-min", "10"]
    overrides = ["--", "MODEL.BACKBONE.PATH", tiny_clip, "DATALOADER.NUM_WORKERS", "0"]
    status = main(["--launcher", "submitit-local", "--seeds", "1", *sweep, *overrides])
    printed = capsys.readouterr()
    assert status == 0, printed.out[-3000:] + printed.err[-3000:]
    summary = json.loads((out / "jobs" / "summary.json").read_text())
    assert len(summary) == 4 and all(j["status"] == "done" and j["job_id"] for j in summary)
    for dataset in ("oxford_pets", "dtd"):  # the local launcher's layout and logs
        for trainer, method in (("ZeroshotCLIP", "zsclip"), ("CuPL", "cupl")):
            assert (out / dataset / trainer / "vit_b32" / "seed1" / "results.json").is_file()
            log = (out / "jobs" / "{}.{}.seed1.log".format(dataset, method)).read_text()
            assert "SEEDS=1" in log and "Results written to" in log
    assert os.listdir(str(out / "jobs" / "submitit"))  # submitit's pickles and job logs

    # the same sweep with a second seed: the finished runs are skipped, only the new ones would be submitted
    assert main(["--launcher", "slurm", "--seeds", "1", "2", "--dry-run", "--array", *sweep, *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "8 jobs (4 finished earlier) -> 4 runs as one job array on Slurm partition P: 1 GPU, 10 CPUs, 10 min each" \
        in lines[0]
    assert sum(line.startswith("  skip ") for line in lines) == 4
    submits = [line for line in lines if line.startswith("  submit ")]
    assert len(submits) == 4 and all("SEEDS=2" in line and "main.sh" in line and tiny_clip in line for line in submits)


def test_slurm_launcher_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    from fairclip.tools.run_jobs import main

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + ":/usr/bin:/bin")  # no sbatch here
    common = ["--datasets", "dtd", "--methods", "fair", "--seeds", "1", "--output", str(tmp_path)]
    cases = [
        (["--launcher", "slurm", "--gpus-per-job", "2", "--dry-run"], "--gpus-per-job 2: each run uses one GPU"),
        (["--launcher", "slurm", "--slurm-extra", "account", "--dry-run"], "--slurm-extra 'account': write KEY=VALUE"),
        (["--launcher", "slurm"], "--launcher slurm: sbatch is not on PATH"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(common + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("ERROR: " + message) and len(err.strip().splitlines()) == 1, (extra, err)


def test_planner_counts_views_and_gpu_hours(tmp_path):
    from fairclip.tools.run_jobs import plan_jobs
    from fairclip.tools.sweep_plan import REFERENCE, format_plan, plan

    jobs = plan_jobs(["dtd"], ["fair", "zsclip", "wca"], [1, 2, 3], str(tmp_path), "vit_b32")
    rows = {r["method"]: r for r in plan(jobs, "vit_b32", [])}
    fair = rows["fair"]  # DTD: 2,820 train / 1,692 test images (CoOp's split); 15 epochs; weak + strong + 8 crops
    assert (fair["runs"], fair["train_images"], fair["epochs"], fair["views"]) == (3, 2820, 15, 10)
    assert fair["train_views"] == 2820 * 15 * 10 and fair["other_views"] == 15 * 1692  # a test pass per epoch
    assert fair["seconds"] == pytest.approx(2820 * 15 / REFERENCE["fair"][0] + 15 * 1692 / REFERENCE["eval"][0])
    assert rows["zsclip"]["train_views"] == 0 and rows["wca"]["other_views"] == 1692 * 61

    big = {r["method"]: r for r in plan(jobs, "vit_l14", ["OPTIM.MAX_EPOCH", "5"])}["fair"]
    assert big["backbone"] == "ViT-L/14" and big["epochs"] == 5
    assert big["seconds"] / (5 * 2820 / REFERENCE["fair"][0] + 5 * 1692 / REFERENCE["eval"][0]) == pytest.approx(
        162.03 / 8.82)  # the image-tower FLOP ratio of ViT-L/14 to ViT-B/32
    text = format_plan(list(rows.values()), "vit_b32")
    assert "2,055 images/s" in text and "28,398 images/s" in text and "Total: 9 runs" in text
