"""Runs, checkpoints and resume (docs/reliability.md): exact resume after faults at random points, safe and
strict checkpoint loading, one run per folder, only the same run resumes, clean one-line failures.

The fault test kills runs in-process at random points (``FAIRCLIP_FAULT_RUNS`` faults per case, default 2,
plus a kill while results.json is being written; ``FAIRCLIP_FAULT_SEED`` replays a draw;
``FAIRCLIP_FULL_RESUME=1`` adds DPA and UPL) and once with a real ``kill -9``; the resumed run must end with
bit-identical weights, metrics and history.
"""
import copy
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, build_seeded, run_cli, trainer_cfg
from fairclip.toolbox.errors import UserError

EPOCHS = 3
FAULT_RUNS = int(os.environ.get("FAIRCLIP_FAULT_RUNS", "2"))
FAULT_SEED = int(os.environ.get("FAIRCLIP_FAULT_SEED", str(int(time.time() * 1000) % 100000)))


class Killed(BaseException):
    """A simulated kill: nothing in the trainer catches it (it is not an Exception)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny CLIP at 32 px (patch 16) and a miniature Oxford Pets tree: a whole run takes about a second."""
    from fairclip.tools.make_miniature_data import make_oxford_pets
    from fairclip.tools.make_tiny_clip import save_tiny_clip

    root = tmp_path_factory.mktemp("resume")
    make_oxford_pets(str(root / "data"), classes=3, per_class=6, size=40)
    clip = save_tiny_clip(str(root / "clip32.pt"), "state_dict", resolution=32, patch=16)
    return {"root": str(root), "data": str(root / "data"), "clip": clip, "refs": {}}


CASES = {  # (trainer, views) -> extra KEY VALUE pairs
    ("FAIR", "never"): ["TRAINER.FAIR.N_CROPS", "3", "TRAINER.FAIR.TOP_K", "2"],
    ("FAIR", "always"): ["TRAINER.FAIR.N_CROPS", "3", "TRAINER.FAIR.TOP_K", "2", "TRAINER.FAIR.EVAL_EACH_EPOCH",
                         "False",  # with the self-trained LAS term (its device-side re-cut) and a gamma schedule
                         "TRAINER.FAIR.LAS_LOSS_WEIGHT", "0.5", "TRAINER.FAIR.GAMMA_SCHEDULE", "linear"],
    ("MUST", "never"): ["TEST.FINAL_MODEL", "best_val"],
    ("MUST", "always"): ["DATALOADER.NUM_WORKERS", "1"],  # persistent loader workers on the GPU-view path
    # LaFTer: the text classifier is trained before epoch 1 only, then kept (with its frozen copy) in the checkpoint
    ("LaFTer", "never"): ["TRAINER.LAFTER.TEXT_STEPS", "3", "TRAINER.LAFTER.N_PROMPTS", "2"],
    # ReCLIP: every epoch starts with a pass over the train split and label propagation (GPU views: the pass too)
    ("ReCLIP", "always"): ["TRAINER.RECLIP.N_NEIGHBORS", "3", "TRAINER.RECLIP.V_LOSS", "mean"],
}
if os.environ.get("FAIRCLIP_FULL_RESUME"):  # the other trainers that train (slow: not in the default suite)
    CASES.update({("DPA", "never"): [], ("DPA", "always"): [], ("UPL", "never"): ["TRAINER.UPL.TOPK", "4"]})


def opts_for(world, trainer, views, *extra):
    return ["MODEL.BACKBONE.PATH", world["clip"], "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "OPTIM.MAX_EPOCH", str(EPOCHS), "INPUT.SIZE", "(32, 32)", "VERBOSE", "False", "DATALOADER.GPU_VIEWS",
            views, *CASES[(trainer, views)], *extra]


def cfg_for(world, trainer, views, out, *extra, resume=""):
    cfg = trainer_cfg(trainer, "oxford_pets", world["data"], out, *opts_for(world, trainer, views, *extra))
    if resume:
        cfg.defrost()
        cfg.RESUME = resume
        cfg.freeze()
    return cfg


def weights(trainer):
    return {name: {k: v.clone() for k, v in trainer._models[name].state_dict().items()}
            for name in trainer.get_model_names()}


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def reference(world, trainer, views):
    """The uninterrupted run of a case (built once per module)."""
    key = (trainer, views)
    if key not in world["refs"]:
        out = os.path.join(world["root"], "ref-{}-{}".format(trainer, views))
        tr = build_seeded(cfg_for(world, trainer, views, out))
        tr.train()
        world["refs"][key] = {"out": out, "trainer": tr, "weights": weights(tr), "results": results(out)}
    return world["refs"][key]


def assert_same_run(ref, out, trainer, note):
    got = weights(trainer)
    for name, tensors in ref["weights"].items():
        assert set(got[name]) == set(tensors), note
        bad = [k for k in tensors if not torch.equal(tensors[k], got[name][k])]
        assert not bad, "{}: resumed weights differ from the uninterrupted run's: {}".format(note, bad[:3])
    res, exp = results(out), ref["results"]
    assert res["metrics"] == exp["metrics"], note
    assert res["history"] == exp["history"], note
    assert res["protocol"]["evaluated_epoch"] == exp["protocol"]["evaluated_epoch"], note
    assert res["timings"]["train_seconds"] and res["timings"]["train_images_per_s"], note
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp-")]
    assert not leftovers, note


def fault_plan(rng, batches, n):
    """``n`` random faults in run order: ("batch", epoch, batch) kills before that step, ("checkpoint",
    epoch, None) right after that epoch's checkpoint; then a kill just before results.json is written."""
    points = []
    for _ in range(n):
        epoch = rng.randrange(EPOCHS)
        if rng.random() < 0.5:
            points.append(("batch", epoch, rng.randrange(batches)))
        else:
            points.append(("checkpoint", epoch, None))
    points = sorted(set(points), key=lambda p: (p[1], p[0] == "checkpoint", p[2] or 0))  # each fires once
    return points + [("results", None, None)]


def arm(trainer, point):
    """Make ``trainer`` die at ``point`` (wrapping its own methods: the trainer code itself is unchanged)."""
    kind, epoch, batch = point
    if kind == "batch":
        step = trainer.forward_backward

        def forward_backward(b):
            if trainer.epoch == epoch and trainer.batch_idx == batch:
                raise Killed(point)
            return step(b)
        trainer.forward_backward = forward_backward
    elif kind == "checkpoint":
        save = trainer.save_model

        def save_model(ep, directory, *args, **kwargs):
            save(ep, directory, *args, **kwargs)
            if ep == epoch and not kwargs.get("model_name"):
                raise Killed(point)
        trainer.save_model = save_model
    else:
        def write_results(evaluation):
            raise Killed(point)
        trainer.write_results = write_results


@pytest.mark.parametrize("trainer,views", list(CASES), ids=["-".join(c) for c in CASES])
def test_resume_after_faults_at_random_points_is_bit_identical(world, trainer, views):
    ref = reference(world, trainer, views)
    rng = random.Random("{}-{}-{}".format(FAULT_SEED, trainer, views))
    plan = fault_plan(rng, len(ref["trainer"].train_loader_x), FAULT_RUNS)
    note = "{} {}: faults {} (replay with FAIRCLIP_FAULT_SEED={})".format(trainer, views, plan, FAULT_SEED)
    out = os.path.join(world["root"], "faults-{}-{}".format(trainer, views))
    for point in plan:
        tr = build_seeded(cfg_for(world, trainer, views, out))
        arm(tr, point)
        if trainer == "MUST" and views == "never":  # best_val: the best result so far survives the resume
            _check_best_on_resume(tr, out)
        with pytest.raises(Killed):
            tr.train()
        tr.close_writer()
    tr = build_seeded(cfg_for(world, trainer, views, out))
    tr.train()
    assert_same_run(ref, out, tr, note)
    if ref["trainer"].cfg.TEST.FINAL_MODEL == "best_val":
        assert tr.best_result == ref["trainer"].best_result, note


def _check_best_on_resume(trainer, out):
    before = trainer.before_epoch

    def before_epoch():
        best = os.path.join(out, "must", "model-best.pth.tar")
        if trainer.epoch == trainer.start_epoch and trainer.start_epoch > 0 and os.path.isfile(best):
            assert trainer.best_result == _read(best)["val_result"], "best_val forgot its best on resume"
        before()
    trainer.before_epoch = before_epoch


def test_kill_9_then_resume_is_bit_identical(world):
    """A real ``kill -9`` of train.py at a random moment after its first checkpoint; the run resumed in the
    same folder (its stale lock taken over) ends exactly like the uninterrupted run."""
    ref = reference(world, "FAIR", "never")
    out = os.path.join(world["root"], "kill9")
    args = ["--root", world["data"], "--trainer", "FAIR", "--seed", "1", "--output-dir", out,
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
            "--config-file", os.path.join(REPO, "configs/trainers/FAIR/vit_b32.yaml"),
            *opts_for(world, "FAIR", "never")]
    env = dict(os.environ, PYTHONPATH=REPO)
    pointer = os.path.join(out, "fair", "checkpoint")
    # The whole run takes about a second, so the kill must follow the first checkpoint closely: a random
    # delay of up to 20 ms (an epoch takes several times that), then, if the run still got to the end,
    # again with no delay in a fresh folder.
    for delay in (random.Random(FAULT_SEED).uniform(0.0, 0.02), 0.0, 0.0):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not os.path.exists(pointer) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.001)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not os.path.exists(os.path.join(out, "results.json")):
            break
    else:
        pytest.skip("the run finished before it could be killed, three times (machine too fast)")
    tr = build_seeded(cfg_for(world, "FAIR", "never", out))
    tr.train()
    assert_same_run(ref, out, tr, "kill -9 (FAIRCLIP_FAULT_SEED={})".format(FAULT_SEED))


def test_interrupt_says_where_a_rerun_resumes(world):
    """SIGTERM (as train.py handles it) stops the run like Ctrl-C; the line names the epoch a rerun resumes
    from."""
    import train

    out = os.path.join(world["root"], "sigterm")
    cfg = cfg_for(world, "MUST", "always", out)
    tr = build_seeded(cfg)
    step = tr.forward_backward

    def forward_backward(batch):
        if tr.epoch == 1 and tr.batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, delivered to this process
        return step(batch)
    tr.forward_backward = forward_backward
    previous = signal.signal(signal.SIGTERM, train._on_sigterm)
    try:
        with pytest.raises(KeyboardInterrupt) as exc:
            tr.train()
    finally:
        signal.signal(signal.SIGTERM, previous)
        tr.close_writer()
    assert isinstance(exc.value, train.Interrupted)
    message = train.interrupted_message(cfg, tr, "SIGTERM")
    assert message == ("interrupted (SIGTERM) during epoch 2/3; rerunning the same command resumes from epoch 2 "
                       "(the checkpoint of epoch 1 is intact)")
    assert train.interrupted_message(cfg_for(world, "MUST", "always", os.path.join(world["root"], "none")), None) == (
        "interrupted (Ctrl-C); no checkpoint was written, so rerunning the same command starts from epoch 1")


def _read(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- safe loading
class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def _copy_run(world, trainer, views, name):
    dst = os.path.join(world["root"], name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(reference(world, trainer, views)["out"], dst, ignore=shutil.ignore_patterns("run.lock"))
    return dst


def test_a_malicious_checkpoint_never_runs(world):
    from fairclip.toolbox import load_checkpoint, resume_from_checkpoint

    marker = os.path.join(world["root"], "pwned")
    evil = _copy_run(world, "FAIR", "never", "evil")
    ckpt = os.path.join(evil, "fair", "model.pth.tar-{}".format(EPOCHS))
    torch.save({"state_dict": Evil(marker), "epoch": EPOCHS}, ckpt)

    def refused(call):
        with pytest.raises(UserError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg and ckpt in msg and "refused to load it" in msg and "posix.system" in msg, msg
        assert not os.path.exists(marker)

    # --eval-only --model-dir
    evaluator = build_seeded(cfg_for(world, "FAIR", "never", os.path.join(world["root"], "evil-eval")))
    refused(lambda: evaluator.load_model(evil))
    # resume in the run's own folder, and --resume from another folder
    refused(build_seeded(cfg_for(world, "FAIR", "never", evil)).train)
    refused(build_seeded(cfg_for(world, "FAIR", "never", os.path.join(world["root"], "evil-out"), resume=evil)).train)
    # the toolbox functions (the engine's own resume and load paths)
    refused(lambda: load_checkpoint(ckpt))
    refused(lambda: resume_from_checkpoint(os.path.join(evil, "fair"), torch.nn.Linear(1, 1)))

    # the pointer may only name a plain file beside it
    outside = os.path.join(world["root"], "outside.pth")
    torch.save({"state_dict": Evil(marker)}, outside)
    link = os.path.join(evil, "fair", "link.pth")
    os.symlink(outside, link)
    for named in ("../../outside.pth", outside, "link.pth", "", "..", "missing.pth"):
        with open(os.path.join(evil, "fair", "checkpoint"), "w") as f:
            f.write(named + "\n")
        with pytest.raises(UserError, match="checkpoint pointer") as exc:
            evaluator.resume_model_if_exist(evil)
        assert "\n" not in str(exc.value)
        with pytest.raises(UserError, match="checkpoint pointer"):
            resume_from_checkpoint(os.path.join(evil, "fair"), torch.nn.Linear(1, 1))
    assert not os.path.exists(marker)


def test_checkpoint_loading_never_goes_through_the_backend(world, monkeypatch):
    """On real Dassl the engine's save/load/resume are Dassl's (non-atomic writes, unchecked loads): the CLIP
    trainers must not use them. With the engine's functions broken, saving, resuming and loading still work."""
    from fairclip.toolbox import BACKEND
    from fairclip.toolbox.builtin import engine

    assert BACKEND == "builtin"

    def broken(*args, **kwargs):
        raise AssertionError("the backend's checkpoint function was called")
    for name in ("save_checkpoint", "load_checkpoint", "resume_from_checkpoint"):
        monkeypatch.setattr(engine, name, broken)
    ref = reference(world, "MUST", "always")
    tr = ref["trainer"]
    out = os.path.join(world["root"], "no-backend")
    tr.save_model(EPOCHS - 1, out)
    assert tr.resume_model_if_exist(out) == EPOCHS
    tr.load_model(out)
    tr.load_model(out, epoch=EPOCHS)


# ---------------------------------------------------------------------------- strict checkpoints
def _plant(folder, name, checkpoint):
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    torch.save(checkpoint, os.path.join(folder, name, "model.pth.tar-3"))
    with open(os.path.join(folder, name, "checkpoint"), "w") as f:
        f.write("model.pth.tar-3\n")


def test_checkpoints_are_checked_against_the_run(world):
    ref = reference(world, "FAIR", "never")
    good = _read(os.path.join(ref["out"], "fair", "model.pth.tar-3"))
    evaluator = build_seeded(cfg_for(world, "FAIR", "never", os.path.join(world["root"], "strict-eval")))

    def variant(name, edit):
        ckpt = copy.deepcopy(good)
        edit(ckpt)
        folder = os.path.join(world["root"], "strict-" + name)
        _plant(folder, "fair", ckpt)
        return folder

    ident = lambda c: c["fairclip"]["identity"]  # noqa: E731
    cases = [
        ("empty", lambda c: c.update(state_dict={}), r"does not fit this model: it lacks \d+ trained tensor"),
        ("shape", lambda c: c["state_dict"].update(anchors=torch.zeros(4, 32)),
         r"anchors has shape \[4, 32\] in the checkpoint, \[3, 32\] here"),
        ("unknown", lambda c: c["state_dict"].update(extra=torch.zeros(1)), "keys this model does not know"),
        ("trainer", lambda c: ident(c).update(trainer="MUST"), "it was trained by MUST, this run is FAIR"),
        ("dataset", lambda c: ident(c).update(dataset="DescribableTextures", classnames=["banded", "blotchy", "x"]),
         "trained on DescribableTextures, this run uses OxfordPets, whose classes it does not know"),
        ("classes", lambda c: ident(c).update(num_classes=5, classnames=ident(c)["classnames"] + ["a", "b"]),
         "it has 5 classes, this run 3"),
        ("backbone", lambda c: ident(c).update(backbone_fingerprint="0123"), "trained from another CLIP"),
        ("anonymous", lambda c: c.pop("fairclip"), "records no run identity"),
    ]
    for name, edit, message in cases:
        folder = variant(name, edit)
        calls = [lambda: evaluator.resume_model_if_exist(folder)]
        if name != "classes":  # evaluation matches a model of more classes by class name (then by shapes)
            calls.append(lambda: evaluator.load_model(folder))
        for call in calls:
            with pytest.raises(UserError, match=message) as exc:
                call()
            assert "\n" not in str(exc.value) and folder in str(exc.value), name
    # a test set of the same classes under another dataset name (ImageNet -> ImageNet-V2) is evaluated
    evaluator.load_model(variant("renamed", lambda c: ident(c).update(dataset="OxfordPetsV2")))

    # FAIR's description anchors cannot read a class-anchor checkpoint: the line says which setting differs
    desc = build_seeded(cfg_for(world, "FAIR", "never", os.path.join(world["root"], "strict-desc"),
                                "TRAINER.FAIR.ANCHORS", "description"))
    with pytest.raises(UserError, match=r"anchors has shape .*TRAINER.FAIR.ANCHORS 'class' -> 'description'"):
        desc.load_model(ref["out"])
    # resuming needs the same training settings (the checkpoint's own record, for --resume from elsewhere)
    with pytest.raises(UserError, match=r"trained with other settings \(TRAINER.FAIR.ANCHORS 'class' -> "
                                        r"'description'\).*--fresh"):
        desc.resume_model_if_exist(ref["out"])


# ---------------------------------------------------------------------------- the run folder
def test_only_the_same_run_resumes_in_a_folder(world):
    from fairclip.trainers import _run_folder

    finished = _copy_run(world, "FAIR", "never", "folder-finished")
    before = open(os.path.join(finished, "results.json")).read()

    def prepare(*extra, fresh=False, out=finished):
        _run_folder.prepare(cfg_for(world, "FAIR", "never", out, *extra), fresh=fresh)

    with pytest.raises(UserError, match=r"holds a finished run with other training settings \(OPTIM.LR 0.0001 -> "
                                        r"0.001\).*--fresh \(scripts: FRESH=1\)"):
        prepare("OPTIM.LR", "0.001")
    with pytest.raises(UserError, match=r"OPTIM.MAX_EPOCH 3 -> 2"):
        prepare("OPTIM.MAX_EPOCH", "2")  # a shorter run never overwrites a finished one
    assert open(os.path.join(finished, "results.json")).read() == before
    # evaluation-only and cosmetic keys may differ
    prepare("DATALOADER.TEST.BATCH_SIZE", "7", "TRAINER.FAIR.EVAL_EACH_EPOCH", "False", "TRAINER.FAIR.TEST_LAS",
            "True", "TRAIN.PRINT_FREQ", "3", "TRAIN.CHECKPOINT_FREQ", "2", "DATASET.ROOT", "/elsewhere")
    # --fresh discards the previous run and records the new settings
    prepare("OPTIM.LR", "0.001", fresh=True)
    assert not os.path.exists(os.path.join(finished, "results.json"))
    assert not os.path.exists(os.path.join(finished, "fair"))
    assert json.load(open(os.path.join(finished, "run_config.json")))["training_config"]["OPTIM.LR"] == 0.001
    # a folder whose run failed before its first checkpoint holds nothing to protect
    prepare("OPTIM.LR", "0.01")


def test_one_run_per_folder_and_a_dead_holders_lock_is_taken_over(world):
    from fairclip.trainers import _run_folder

    out = os.path.join(world["root"], "locked")
    cfg = cfg_for(world, "MUST", "always", out)
    os.makedirs(out, exist_ok=True)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the holder: takes the lock, says so, waits to be killed
        try:
            _run_folder.acquire_lock(out)
            os.write(ready_w, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        with pytest.raises(UserError) as exc:
            _run_folder.prepare(cfg)
        assert str(exc.value) == ("--output-dir {} is in use by another run (PID {}); wait for it to finish or give "
                                  "this run another --output-dir".format(out, child))
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    _run_folder.prepare(cfg)  # the killed holder's lock is gone
    assert open(os.path.join(out, "run.lock")).read().strip() == str(os.getpid())
    _run_folder.release_lock(out)


def test_bad_output_folders_and_failed_writes_are_one_line(world, monkeypatch, capsys):
    import train
    from fairclip.toolbox import io as toolbox_io
    from fairclip.trainers import _run_folder

    a_file = os.path.join(world["root"], "a-file")
    open(a_file, "w").close()
    args = ["--root", world["data"], "--trainer", "MUST", "--seed", "1", "--output-dir", a_file,
            "--dataset-config-file", os.path.join(REPO, "configs/datasets/oxford_pets.yaml"),
            "--config-file", os.path.join(REPO, "configs/trainers/MUST/vit_b32.yaml")]
    with pytest.raises(SystemExit) as exc:
        train.cli(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err == "ERROR: --output-dir {} is a file, not a folder; give a folder path\n".format(a_file)
    with pytest.raises(UserError, match="cannot create --output-dir"):
        _run_folder.prepare(cfg_for(world, "MUST", "always", os.path.join(a_file, "sub")))
    if os.geteuid() != 0:  # root writes anywhere
        ro = os.path.join(world["root"], "read-only")
        os.makedirs(ro, exist_ok=True)
        os.chmod(ro, 0o555)
        with pytest.raises(UserError, match="is not writable"):
            _run_folder.prepare(cfg_for(world, "MUST", "always", ro))

    # disk full while checkpointing: one line, and the last good checkpoint is intact and still resumes
    ref = reference(world, "MUST", "always")
    out = _copy_run(world, "MUST", "always", "disk-full")
    files = sorted(os.listdir(os.path.join(out, "must")))

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(toolbox_io.os, "fsync", full)
    with pytest.raises(UserError) as exc:
        ref["trainer"].save_model(EPOCHS, out)
    monkeypatch.undo()
    last = os.path.join(out, "must", "model.pth.tar-3")
    assert str(exc.value) == (
        "cannot write checkpoint {} (No space left on device [ENOSPC]); the last good checkpoint ({}, epoch 3) is "
        "intact: free space and rerun the same command to resume from epoch 4".format(
            os.path.join(out, "must", "model.pth.tar-4"), last))
    assert sorted(os.listdir(os.path.join(out, "must"))) == files  # no temp file, the pointer unchanged
    assert ref["trainer"].resume_model_if_exist(out) == EPOCHS


def test_files_follow_the_umask(tmp_path):
    from fairclip.toolbox.io import atomic_torch_save, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text("x", str(tmp_path / "a.txt"))
        atomic_torch_save({"x": 1}, str(tmp_path / "b.pth"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.pth").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------- the scripts
def test_scripts_tell_a_resumable_run_from_a_failed_one_and_pass_fresh(tmp_path):
    """run_seeds.sh: a folder with a checkpoint resumes; one whose run failed before its first checkpoint
    starts again (said so); FRESH=1 passes --fresh; train.py learns that --root came from DATA."""
    fake = tmp_path / "python"  # stands in for the interpreter: records what the script runs
    fake.write_text("#!/bin/sh\necho \"root-var=$FAIRCLIP_ROOT_VAR args=$*\" >> {}\n".format(tmp_path / "calls"))
    fake.chmod(0o755)
    seed1 = tmp_path / "out/dtd/UPL/vit_b32/seed1"
    seed2 = tmp_path / "out/dtd/UPL/vit_b32/seed2"
    (seed1 / "prompt_learner").mkdir(parents=True)
    (seed1 / "prompt_learner/checkpoint").write_text("model.pth.tar-1\n")
    seed2.mkdir(parents=True)
    (seed2 / "log.txt").write_text("ERROR: dataset root ... does not exist\n")
    env = {"DATA": str(tmp_path / "data"), "OUTPUT": str(tmp_path / "out"), "SEEDS": "1 2", "PYTHON": str(fake)}
    res = run_cli(["bash", os.path.join(REPO, "scripts/upl/main.sh"), "dtd"], env=env)
    assert res.returncode == 0, res.stderr
    assert "[UPL dtd seed1] unfinished run in {}; resuming from its last checkpoint".format(
        tmp_path / "out/dtd/UPL/vit_b32/seed1") in res.stdout.replace("//", "/")
    assert "seed2] an earlier attempt in" in res.stdout and "stopped before its first checkpoint" in res.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and all(c.startswith("root-var=DATA ") and "--fresh" not in c for c in calls)
    res = run_cli(["bash", os.path.join(REPO, "scripts/upl/main.sh"), "dtd"], env=dict(env, FRESH="1", SEEDS="1"))
    assert res.returncode == 0 and "FRESH=1: discarding the previous run" in res.stdout
    assert "--fresh" in (tmp_path / "calls").read_text().splitlines()[-1]


def test_dataset_root_errors_name_the_scripts_variable(monkeypatch, tmp_path):
    from tests.conftest import make_dataset_cfg
    from fairclip.datasets.common import dataset_root

    cfg = make_dataset_cfg(tmp_path / "nowhere", "dtd")
    with pytest.raises(UserError, match="pass it with --root"):
        dataset_root(cfg)
    monkeypatch.setenv("FAIRCLIP_ROOT_VAR", "DATA")
    with pytest.raises(UserError, match=r"set DATA to it \(the script passes DATA to train.py as --root\)"):
        dataset_root(cfg)
