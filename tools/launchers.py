"""Launchers of ``tools.run_jobs`` beyond the local one: Slurm through submitit.

    python -m tools.run_jobs --launcher slurm --partition P --gpus-per-job 1 --datasets ... --methods ... \
        [--time-min 240] [--cpus-per-job 10] [--mem-gb 64] [--array [--array-parallelism 20]] \
        [--slurm-extra account=ACC --slurm-extra qos=QOS] [--wait] [--dry-run] [-- KEY VALUE ...]

Each (dataset, method, seed) is one Slurm job (``--array``: all of them one job array) that runs what the
local launcher runs for it: ``scripts/<method>/main.sh <dataset> [KEY VALUE ...]`` with ``SEEDS=<seed>`` and the
sweep's ``DATA``, ``OUTPUT``, ``CFG`` and ``PYTHON``, on the GPU Slurm gives it. So the rules are the same:
runs whose ``<output>/<dataset>/<TRAINER>/<cfg>/seed<k>/results.json`` exists are not submitted (and a job
finds it again at start), an unfinished run resumes from its last checkpoint, the output layout and the
per-run log ``<output>/jobs/<dataset>.<method>.seed<k>.log`` are the local ones. Jobs are checkpointable for
submitit: a job that is preempted or reaches its time limit is requeued and its run resumes. submitit's own
files (the pickled job, Slurm's stdout/stderr) go to ``<output>/jobs/submitit/``; ``<output>/jobs/summary.json``
lists the jobs with their Slurm ids. ``--wait`` waits for them and reports like the local launcher (exit 1 if
one failed). ``--launcher submitit-local`` takes the same path through submitit's local executor (jobs are
processes of this machine, started at once; it always waits): a sweep can be tried without a cluster.
Do not resubmit a sweep while its earlier jobs are still queued (``squeue --me``): both would run the same seeds.
"""
import os
import os.path as osp
import shlex
import shutil
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LAUNCHERS = ("local", "slurm", "submitit-local")


def run_log(output, job):
    return osp.join(output, "jobs", "{dataset}.{method}.seed{seed}.log".format(**job))


class ScriptJob:
    """One run of a sweep as a submitit job (pickled with its settings; everything it needs is plain data)."""

    def __init__(self, job, data, output, cfg, python, opts, repo=REPO):
        self.job = {k: job[k] for k in ("dataset", "method", "trainer", "seed", "run_dir")}
        self.data, self.output, self.cfg, self.python, self.opts, self.repo = data, output, cfg, python, list(opts), repo

    def command(self):
        """``(argv, env additions)`` of the run: the local launcher's command without its GPU slot."""
        script = osp.join(self.repo, "scripts", self.job["method"], "main.sh")
        env = {"SEEDS": str(self.job["seed"]), "DATA": self.data, "OUTPUT": self.output, "CFG": self.cfg,
               "PYTHON": self.python}
        return ["bash", script, self.job["dataset"], *self.opts], env

    def shell_line(self):
        argv, env = self.command()
        return " ".join(["{}={}".format(k, shlex.quote(v)) for k, v in env.items()] + [shlex.quote(a) for a in argv])

    def __call__(self):
        job = self.job
        if osp.isfile(osp.join(job["run_dir"], "results.json")):
            return {"status": "skipped (finished earlier)", "returncode": 0}
        argv, extra = self.command()
        env = dict(os.environ, **extra)  # CUDA_VISIBLE_DEVICES: Slurm's (or submitit's local executor's)
        env.setdefault("PYTHONPATH", self.repo)
        log_path = run_log(self.output, job)
        os.makedirs(osp.dirname(log_path), exist_ok=True)
        start = time.time()
        with open(log_path, "a") as log:  # a requeued attempt appends to the same log
            log.write("[{}] {} on {}\n".format(time.strftime("%Y-%m-%d %H:%M:%S"), self.shell_line(),
                                                os.uname().nodename))
            log.flush()
            proc = subprocess.Popen(argv, cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                returncode = proc.wait()
            finally:  # preempted or cancelled: stop the run too (it resumes when the job is requeued)
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    proc.wait()
        if returncode != 0:
            raise RuntimeError("{dataset} {method} seed{seed} failed (exit {rc}); log: {log}".format(
                rc=returncode, log=log_path, **job))
        return {"status": "done", "returncode": 0, "seconds": time.time() - start}

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption or timeout: requeue the same run (it resumes from its last epoch)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _user_error(message):
    # imported here: a job process unpickles ScriptJob from this module and should not import torch for it
    from fairclip.toolbox.errors import UserError

    return UserError(message)


def parse_extra(pairs):
    """``--slurm-extra KEY=VALUE`` items -> a dict of extra #SBATCH options (``account=abc`` -> --account=abc)."""
    extra = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _user_error("--slurm-extra {!r}: write KEY=VALUE (an sbatch option without its dashes, e.g. "
                            "account=myproject)".format(item))
        extra[key.strip().replace("-", "_")] = value.strip()
    return extra


def executor_parameters(args):
    """The ``AutoExecutor.update_parameters`` arguments of a sweep."""
    if args.gpus_per_job not in (0, 1):
        raise _user_error("--gpus-per-job {}: each run uses one GPU (0 for CPU partitions); for one run over several "
                        "GPUs or nodes use torchrun (docs/speed.md)".format(args.gpus_per_job))
    if args.time_min < 1 or args.cpus_per_job < 1:
        raise _user_error("--time-min and --cpus-per-job must be at least 1")
    params = {"name": "fairclip", "timeout_min": args.time_min, "gpus_per_node": args.gpus_per_job,
              "cpus_per_task": args.cpus_per_job, "nodes": 1, "tasks_per_node": 1}
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.array and args.array_parallelism:
        params["slurm_array_parallelism"] = args.array_parallelism
    extra = parse_extra(args.slurm_extra)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def job_folder(args):
    return args.job_folder or osp.join(args.output, "jobs", "submitit")


def _describe(args, params, todo):
    gpus = params["gpus_per_node"]
    where = "Slurm partition {}".format(args.partition) if args.partition else "Slurm (default partition)"
    if args.launcher == "submitit-local":
        where = "this machine through submitit's local executor"
    return "{} {} on {}: {} GPU, {} CPUs{}, {} min each{}".format(
        todo, "runs as one job array" if args.array else "jobs (one per run)", where, gpus, params["cpus_per_task"],
        ", {} GB".format(params["mem_gb"]) if "mem_gb" in params else "", params["timeout_min"],
        "; extra: " + " ".join("--{}={}".format(k, v) for k, v in params.get("slurm_additional_parameters", {}).items())
        if params.get("slurm_additional_parameters") else "")


def make_executor(args, params):
    try:
        import submitit
    except ImportError as exc:
        raise _user_error("--launcher {} needs submitit: pip install submitit (requirements.txt lists it)".format(
            args.launcher)) from exc
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise _user_error("--launcher slurm: sbatch is not on PATH (run this on a Slurm login node); --dry-run shows "
                        "what would be submitted, --launcher submitit-local runs the same jobs on this machine")
    executor = submitit.AutoExecutor(folder=job_folder(args), cluster=cluster)
    executor.update_parameters(**params)
    return executor


def launch(jobs, args):
    """Submit the unfinished jobs (or, with ``args.dry_run``, print them); returns the exit status."""
    from fairclip.toolbox.io import atomic_write_json

    params = executor_parameters(args)
    todo = [j for j in jobs if not j["finished"]]
    for j in jobs:
        if j["finished"]:
            j.update(status="skipped (finished earlier)", returncode=0)
    print("{} jobs ({} finished earlier) -> {}".format(len(jobs), len(jobs) - len(todo), _describe(args, params, len(todo))))
    calls = {id(j): ScriptJob(j, args.data, args.output, args.cfg, args.python, args.opts) for j in todo}
    if args.dry_run:
        for j in jobs:
            if j["finished"]:
                print("  skip {dataset} {method} seed{seed}: finished".format(**j))
            else:
                print("  submit {dataset} {method} seed{seed}: {line}".format(line=calls[id(j)].shell_line(), **j))
        return 0
    if not todo:
        print("Nothing to submit.")
        return 0
    executor = make_executor(args, params)
    # The jobs run `python -m submitit.core._submit` in this folder's environment: make this package importable.
    os.environ["PYTHONPATH"] = REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    if args.array:
        with executor.batch():
            handles = [executor.submit(calls[id(j)]) for j in todo]
    else:
        handles = [executor.submit(calls[id(j)]) for j in todo]
    for j, handle in zip(todo, handles):
        j.update(job_id=str(handle.job_id), log=run_log(args.output, j), status="submitted", launcher=args.launcher)
        print("[submitted] {dataset} {method} seed{seed}: job {job_id}".format(**j), flush=True)
    summary = osp.join(args.output, "jobs", "summary.json")
    atomic_write_json(jobs, summary)
    if not (args.wait or args.launcher == "submitit-local"):
        print("Submitted {} jobs; submitit's files in {}; summary {}. Re-run this command after they end to submit "
              "only what is unfinished.".format(len(todo), job_folder(args), summary))
        return 0
    for j, handle in zip(todo, handles):
        try:
            result = handle.result()
            j.update(status=result["status"], returncode=0)
        except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
            lines = [line for line in str(exc).splitlines() if line.strip()]
            j.update(status="FAILED", returncode=1, error=lines[-1] if lines else type(exc).__name__)
        print("[{}] {dataset} {method} seed{seed} (job {job_id}){}".format(
            "done" if j["returncode"] == 0 else "FAILED", "" if j["returncode"] == 0 else "; log: " + j["log"], **j),
            flush=True)
    atomic_write_json(jobs, summary)
    return 0 if all(j["returncode"] == 0 for j in jobs) else 1


def add_arguments(parser):
    """The launcher options of ``tools.run_jobs``."""
    group = parser.add_argument_group("launchers (docs/speed.md)")
    group.add_argument("--launcher", default="local", choices=LAUNCHERS,
                       help="local: the GPUs of this machine (default); slurm: one Slurm job per run through "
                            "submitit; submitit-local: the Slurm path run by submitit's local executor")
    group.add_argument("--partition", default="", help="Slurm partition (default: the cluster's)")
    group.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per Slurm job: 1 (default) or 0")
    group.add_argument("--cpus-per-job", type=int, default=10, help="CPUs per Slurm job (loader workers + 2)")
    group.add_argument("--mem-gb", type=int, default=0, help="host memory per Slurm job (default: the cluster's)")
    group.add_argument("--time-min", type=int, default=240, help="time limit per Slurm job in minutes; a run "
                       "that reaches it is requeued and resumes")
    group.add_argument("--array", action="store_true", help="submit the runs as one Slurm job array")
    group.add_argument("--array-parallelism", type=int, default=0, help="with --array: at most this many at once")
    group.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                       help="an extra sbatch option, e.g. account=myproject, qos=high, constraint=a100 (repeatable)")
    group.add_argument("--job-folder", default="", help="submitit's folder (default OUTPUT/jobs/submitit)")
    group.add_argument("--wait", action="store_true", help="wait for the Slurm jobs and report them")


if __name__ == "__main__":
    sys.exit("run tools.run_jobs --launcher slurm (this module is its launcher layer)")
