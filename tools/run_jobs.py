"""Spread datasets x methods x seeds over the visible GPUs: one run per GPU at a time, finished runs skipped.

    python -m tools.run_jobs --datasets dtd eurosat oxford_pets --methods fair zsclip --seeds 1 2 3 \
        [--gpus 0,1 | --gpus cpu:2] [--per-gpu 1] [--data DATA] [--output OUTPUT] [--cfg vit_b32] \
        [--dry-run] [-- KEY VALUE ...]
    python -m tools.run_jobs --launcher slurm --partition P --gpus-per-job 1 ...   # Slurm via submitit
    python -m tools.run_jobs --plan ...        # what the sweep costs (images x epochs x views, GPU-hours)

Each job is one seed of ``scripts/<method>/main.sh <dataset> [KEY VALUE ...]`` (so per-dataset overrides,
resuming and the output layout are the scripts' own) with ``CUDA_VISIBLE_DEVICES`` set to its GPU.
A job whose ``<output>/<dataset>/<TRAINER>/<cfg>/seed<k>/results.json`` exists is skipped; an unfinished
one resumes. Logs go to ``<output>/jobs/<dataset>.<method>.seed<k>.log`` and a summary to
``<output>/jobs/summary.json``. Exit status: 0 when every job finished, 1 when one failed, 2 for bad input.
For this project's many small runs this beats DDP; use torchrun (docs/speed.md) for one big run.
Launchers other than the local one (Slurm through submitit) live in ``tools/launchers.py``, the cost
planner in ``tools/sweep_plan.py``; both take the jobs planned here.
"""
import argparse
import itertools
import os
import os.path as osp
import signal
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fairclip.tools import methods as method_registry  # noqa: E402
from fairclip.toolbox.errors import UserError, report_error  # noqa: E402
from fairclip.toolbox.io import atomic_write_json  # noqa: E402
from fairclip.tools import launchers  # noqa: E402

def available_methods(repo=REPO):
    """``{script folder: trainer name}`` of every method (``tools/methods.py`` reads ``scripts/<method>/main.sh``)."""
    return {m.name: m.trainer for m in method_registry.discover(repo)}


def available_datasets(repo=REPO):
    return sorted(f[:-5] for f in os.listdir(osp.join(repo, "configs", "datasets")) if f.endswith(".yaml"))


def resolve_method(name, methods):
    """A script folder from a folder or trainer name (case-insensitive): ``fair``, ``FAIR``, ``ZeroshotCLIP``."""
    for folder, trainer in methods.items():
        if name.lower() in (folder.lower(), trainer.lower()):
            return folder
    raise UserError("unknown method {!r}; choose from {} (scripts/<method>/main.sh)".format(
        name, ", ".join(methods)))


def parse_slots(spec, per_gpu=1):
    """Slot list from ``--gpus``: "0,1" (GPU ids), "cpu" or "cpu:N" (N CPU slots); "" = all visible GPUs,
    else one CPU slot. Each GPU appears ``per_gpu`` times."""
    if per_gpu < 1:
        raise UserError("--per-gpu must be at least 1, got {}".format(per_gpu))
    spec = (spec or "").strip()
    if not spec:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [g.strip() for g in visible.split(",") if g.strip()]
        else:
            try:
                import torch

                gpus = [str(i) for i in range(torch.cuda.device_count())]
            except ImportError:
                gpus = []
        spec = ",".join(gpus) if gpus else "cpu"
    if spec.startswith("cpu"):
        count = spec.split(":", 1)[1] if ":" in spec else "1"
        if not count.isdigit() or int(count) < 1:
            raise UserError("--gpus {!r}: write cpu or cpu:N with N >= 1".format(spec))
        return ["cpu"] * int(count)
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    if not all(g.isdigit() for g in gpus):
        raise UserError("--gpus {!r}: give GPU ids separated by commas (0,1,2) or cpu / cpu:N".format(spec))
    return [g for g in gpus for _ in range(per_gpu)]


def plan_jobs(datasets, methods, seeds, output, cfg, repo=REPO):
    """One dict per (dataset, method, seed) with its run folder and whether it already finished."""
    known = available_methods(repo)
    datasets_known = available_datasets(repo)
    jobs = []
    for dataset, method, seed in itertools.product(datasets, methods, seeds):
        if dataset not in datasets_known:
            raise UserError("unknown dataset {!r}; choose from {} (configs/datasets/)".format(
                dataset, ", ".join(datasets_known)))
        folder = resolve_method(method, known)
        run_dir = osp.join(output, dataset, known[folder], cfg, "seed{}".format(seed))
        jobs.append({"dataset": dataset, "method": folder, "trainer": known[folder], "seed": int(seed),
                     "run_dir": run_dir, "finished": osp.isfile(osp.join(run_dir, "results.json"))})
    return jobs


def _command(job, args):
    """The run's command and environment: what the other launchers run (``launchers.ScriptJob``), on its slot."""
    argv, extra = launchers.ScriptJob(job, args.data, args.output, args.cfg, args.python, args.opts).command()
    env = dict(os.environ, **extra)
    env["CUDA_VISIBLE_DEVICES"] = "" if job["slot"] == "cpu" else job["slot"]
    env.setdefault("PYTHONPATH", REPO)
    return argv, env


def run(jobs, slots, args, poll=0.2):
    """Run the unfinished jobs, one per free slot; returns the jobs with status/return code/times."""
    log_dir = osp.join(args.output, "jobs")
    os.makedirs(log_dir, exist_ok=True)
    queue = [j for j in jobs if not j["finished"]]
    for j in jobs:
        if j["finished"]:
            j.update(status="skipped (finished earlier)", returncode=0)
    free, running = list(slots), []

    def stop_all(signum, frame):
        for job, proc, _ in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the job's own process group (started below)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        while queue or running:
            while queue and free:
                job = queue.pop(0)
                job["slot"] = free.pop(0)
                job["log"] = launchers.run_log(args.output, job)
                cmd, env = _command(job, args)
                log = open(job["log"], "w")
                job["start"] = time.time()
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                running.append((job, proc, log))
                print("[start] {dataset} {method} seed{seed} on {where}".format(
                    where="cpu" if job["slot"] == "cpu" else "GPU " + job["slot"], **job), flush=True)
            time.sleep(poll)
            for item in list(running):
                job, proc, log = item
                if proc.poll() is None:
                    continue
                log.close()
                running.remove(item)
                free.append(job["slot"])
                job.update(returncode=proc.returncode, end=time.time(),
                           status="done" if proc.returncode == 0 else "FAILED (exit {})".format(proc.returncode))
                print("[{}] {dataset} {method} seed{seed} ({:.0f} s){}".format(
                    "done" if proc.returncode == 0 else "FAILED", job["end"] - job["start"],
                    "" if proc.returncode == 0 else "; log: " + job["log"], **job), flush=True)
    except KeyboardInterrupt:
        for job, proc, _ in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return jobs


def summarize(jobs, output):
    from tabulate import tabulate

    rows = [[j["dataset"], j["method"], j["seed"], j.get("slot", "-"), j["status"],
             "{:.0f}".format(j["end"] - j["start"]) if "end" in j else "-"] for j in jobs]
    print(tabulate(rows, headers=["dataset", "method", "seed", "slot", "status", "seconds"]))
    atomic_write_json(jobs, osp.join(output, "jobs", "summary.json"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", required=True, help="dataset config stems (configs/datasets/)")
    parser.add_argument("--methods", nargs="+", required=True, help="script folders or trainer names")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--gpus", default="", help="0,1 | cpu | cpu:N (default: every visible GPU, else cpu)")
    parser.add_argument("--per-gpu", type=int, default=1, help="runs at a time per GPU (default 1)")
    parser.add_argument("--data", default=os.environ.get("DATA", "./data"))
    parser.add_argument("--output", default=os.environ.get("OUTPUT", "./output"))
    parser.add_argument("--cfg", default=os.environ.get("CFG", "vit_b32"), help="method config name")
    parser.add_argument("--python", default=sys.executable, help="interpreter for train.py")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (or what would be submitted) and exit")
    parser.add_argument("--plan", action="store_true", help="print what the sweep costs (train images x epochs x "
                        "views, estimated GPU-hours) and exit")
    launchers.add_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="-- KEY VALUE ... passed to every run")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    args.data, args.output = osp.abspath(args.data), osp.abspath(args.output)
    try:
        if len(args.opts) % 2:
            raise UserError("overrides after -- must be KEY VALUE pairs, got {}".format(args.opts))
        jobs = plan_jobs(args.datasets, args.methods, args.seeds, args.output, args.cfg)
        if args.plan:
            from fairclip.tools.sweep_plan import print_plan

            return print_plan(jobs, args.cfg, args.opts)
        if args.launcher != "local":
            return launchers.launch(jobs, args)
        slots = parse_slots(args.gpus, args.per_gpu)
    except UserError as exc:
        return report_error(exc)
    todo = sum(not j["finished"] for j in jobs)
    print("{} jobs ({} finished earlier, {} to run) on {} slot(s): {}".format(
        len(jobs), len(jobs) - todo, todo, len(slots), ", ".join(slots)))
    if args.dry_run:
        for j in jobs:
            print("  {dataset} {method} seed{seed}: {state}".format(state="skip" if j["finished"] else "run", **j))
        return 0
    jobs = run(jobs, slots, args)
    summarize(jobs, args.output)
    return 0 if all(j["returncode"] == 0 for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
