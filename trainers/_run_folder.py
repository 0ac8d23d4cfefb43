"""The output folder of a run: one run at a time, and only the same run resumes in it.

``prepare(cfg, fresh, train)`` runs before anything is written to ``cfg.OUTPUT_DIR`` (``train.py`` calls it
before the log opens; ``ClipTrainer.before_train`` calls it again, a no-op then, so runs started by a host
CoOp checkout get the same guarantees):

* the folder must be a writable folder (created when missing): else one line;
* **lock**: an exclusive ``flock`` on ``run.lock`` for the life of the process. A second run in the folder
  stops with one line naming the PID that holds it. The kernel drops the lock when its process dies, so a
  killed run's folder is taken over by the next run, which deletes the temp files of the killed run's
  interrupted atomic writes;
* ``fresh`` (``--fresh``, scripts ``FRESH=1``): the previous run's checkpoints, history, results, TensorBoard
  events and config record are deleted first (its log files are kept);
* **config record** (training runs): ``run_config.json`` keeps the run's training configuration
  (``training_config``). When the folder already holds a checkpoint or a results.json, a run whose training
  keys differ is refused with the keys that differ (so a changed ``OPTIM.LR`` is never silently ignored and
  a finished run is never overwritten by a shorter or different one); a folder with nothing to resume
  (a run that failed before its first checkpoint) simply takes the new record.

Training keys are every config key except those that cannot change the trained weights (``FREE_KEYS`` and
``FREE_PREFIXES``: paths, logging, checkpoint frequency, evaluation-only keys, other trainers' nodes).
"""
import atexit
import errno
import fcntl
import hashlib
import json
import os
import os.path as osp
import shutil

from fairclip.config import flat_config
from fairclip.toolbox.checkpoints import POINTER, pointer_epoch
from fairclip.toolbox.errors import UserError
from fairclip.toolbox.io import atomic_write_json

RECORD = "run_config.json"
LOCK = "run.lock"

# Keys that may differ between the runs of one folder: where files are, what is printed, how often a
# checkpoint is written, and how the trained model is evaluated.
FREE_KEYS = {
    "OUTPUT_DIR", "RESUME", "VERBOSE", "USE_CUDA", "DATASET.ROOT", "MODEL.BACKBONE.PATH",
    "MODEL.BACKBONE.DOWNLOAD_ROOT", "MODEL.TEXT_CACHE_DIR", "DATALOADER.DECODED_CACHE",
    "DATALOADER.DECODED_CACHE_DIR", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ", "TRAINER.WRITE_RESULTS",
}
FREE_PREFIXES = ("RUN.", "DATALOADER.TEST.", "TEST.")
TRAINING_EXCEPTIONS = {"TEST.FINAL_MODEL"}  # under a free prefix, but it selects the reported model
# Keys of the trainer's own node (TRAINER.<NODE>.<KEY>) that only change evaluation
FREE_TRAINER_KEYS = ("EVAL_EACH_EPOCH",)
FREE_TRAINER_PREFIXES = ("TEST_",)

_held = {}  # realpath of a folder -> (pid, open lock file): this process's locks


# ---------------------------------------------------------------------------- training configuration
def trainer_node(cfg):
    """The ``TRAINER.<NODE>`` name of the run's trainer (None when unknown)."""
    from fairclip.toolbox import TRAINER_REGISTRY

    try:
        return getattr(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), "CFG_NODE", None)
    except KeyError:
        return None


def is_training_key(key, node):
    if key in FREE_KEYS:
        return False
    if key.startswith(FREE_PREFIXES) and key not in TRAINING_EXCEPTIONS:
        return False
    parts = key.split(".")
    if parts[0] == "TRAINER" and len(parts) >= 3:  # TRAINER.<NODE>.<KEY>
        if parts[1] != node:
            return False  # another trainer's keys
        if parts[2] in FREE_TRAINER_KEYS or parts[2].startswith(FREE_TRAINER_PREFIXES):
            return False
    return True


def training_config(cfg):
    """``{KEY: value}`` of every config key that can change the trained weights (lists for tuples)."""
    node = trainer_node(cfg)
    return {k: v for k, v in sorted(flat_config(cfg).items()) if is_training_key(k, node)}


def config_hash(train_cfg):
    return hashlib.sha256(json.dumps(train_cfg, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def config_differences(old, new):
    """``["KEY old -> new", ...]`` over the keys of both training configurations."""
    missing = object()
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            diffs.append("{} {} -> {}".format(key, "(absent)" if a is missing else repr(a),
                                              "(absent)" if b is missing else repr(b)))
    return diffs


def summarize(diffs, limit=6):
    shown = "; ".join(diffs[:limit])
    return shown + ("; and {} more".format(len(diffs) - limit) if len(diffs) > limit else "")


# ---------------------------------------------------------------------------- what a folder holds
def checkpoint_folders(folder):
    """The sub-folders of ``folder`` that hold a checkpoint pointer (one per registered model)."""
    if not osp.isdir(folder):
        return []
    return sorted(osp.join(folder, d) for d in os.listdir(folder) if osp.isfile(osp.join(folder, d, POINTER)))


def last_checkpoint_epoch(folder):
    """Epochs done by the last checkpoint in ``folder`` (the smallest over its models), or 0 when none."""
    epochs = [pointer_epoch(d) for d in checkpoint_folders(folder)]
    epochs = [e for e in epochs if e is not None]
    return min(epochs) if epochs else 0


def holds_run(folder):
    """Whether ``folder`` holds something a rerun would resume or overwrite: a checkpoint or results."""
    return bool(checkpoint_folders(folder)) or osp.isfile(osp.join(folder, "results.json"))


# ---------------------------------------------------------------------------- preparing the folder
def check_output_dir(folder):
    if not folder:
        raise UserError("no output folder: give --output-dir")
    if osp.exists(folder) and not osp.isdir(folder):
        raise UserError("--output-dir {} is a file, not a folder; give a folder path".format(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError("cannot create --output-dir {} ({}); give a folder you can write to".format(
            folder, exc.strerror or exc)) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError("--output-dir {} is not writable; give a folder you can write to".format(folder))


def acquire_lock(folder):
    """Hold an exclusive lock on ``folder`` for the life of this process (re-entrant within it). Returns
    True when this call took the lock, False when this process already held it."""
    real = osp.realpath(folder)
    held = _held.get(real)
    if held is not None and held[0] == os.getpid():
        return False
    path = osp.join(folder, LOCK)
    try:
        f = open(path, "a+")
    except OSError as exc:
        raise UserError("cannot create the lock file {} ({}); give an --output-dir you can write to".format(
            path, exc.strerror or exc)) from exc
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError("--output-dir {} is in use by another run (PID {}); wait for it to finish or give "
                            "this run another --output-dir".format(folder, holder)) from exc
        raise UserError("cannot lock --output-dir {} ({})".format(folder, exc.strerror or exc)) from exc
    f.seek(0)
    f.truncate()
    f.write("{}\n".format(os.getpid()))
    f.flush()
    _held[real] = (os.getpid(), f)
    return True


def release_lock(folder):
    """Give up this process's lock on ``folder`` (a finished process releases it by exiting)."""
    held = _held.pop(osp.realpath(folder), None)
    if held is not None and held[0] == os.getpid():
        held[1].close()


@atexit.register
def _release_all():
    for folder in list(_held):
        release_lock(folder)


def discard_previous(folder):
    """Delete what a previous run left to resume or report (its logs stay)."""
    removed = []
    for name in ("results.json", "history.json", RECORD):
        path = osp.join(folder, name)
        if osp.isfile(path):
            os.remove(path)
            removed.append(name)
    for sub in checkpoint_folders(folder) + [osp.join(folder, "tensorboard")]:
        if osp.isdir(sub):
            shutil.rmtree(sub)
            removed.append(osp.basename(sub) + "/")
    for name in os.listdir(folder):  # model folders whose pointer was never written
        sub = osp.join(folder, name)
        if osp.isdir(sub) and any(f.startswith("model") and ".pth.tar" in f for f in os.listdir(sub)):
            shutil.rmtree(sub)
            removed.append(name + "/")
    if removed:
        print("Starting afresh in {}: removed {}".format(folder, ", ".join(sorted(removed))))


def check_record(cfg, folder):
    """Refuse a run whose training keys differ from those of the run the folder holds; else (re)write
    the record."""
    path = osp.join(folder, RECORD)
    current = training_config(cfg)
    if osp.isfile(path) and holds_run(folder):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)["training_config"]
            if not isinstance(previous, dict):
                raise TypeError("not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError("{} cannot be read ({}); pass --fresh (scripts: FRESH=1) to discard the run in {} "
                            "and start afresh".format(path, exc, folder)) from exc
        diffs = config_differences(previous, current)
        if diffs:
            finished = osp.isfile(osp.join(folder, "results.json"))
            raise UserError("--output-dir {} holds a {} run with other training settings ({}); rerun with its "
                            "settings to {} it, give another --output-dir, or pass --fresh (scripts: FRESH=1) to "
                            "discard it and start afresh".format(
                                folder, "finished" if finished else "resumable", summarize(diffs),
                                "re-evaluate" if finished else "resume"))
        return
    atomic_write_json({"trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME,
                       "training_config": current, "config": flat_config(cfg)}, path)


def remove_stale_temp_files(folder):
    """Delete the temp files of atomic writes (``.tmp-*``) a killed run left in ``folder`` and its
    sub-folders (only while holding the folder's lock: no other writer can be using them)."""
    for sub in [folder] + [osp.join(folder, d) for d in os.listdir(folder) if osp.isdir(osp.join(folder, d))]:
        for name in os.listdir(sub):
            path = osp.join(sub, name)
            if name.startswith(".tmp-") and osp.isfile(path) and not osp.islink(path):
                os.remove(path)


def prepare(cfg, fresh=False, train=True):
    """Make ``cfg.OUTPUT_DIR`` ready for this run (see the module docstring). Rank 0 only."""
    folder = cfg.OUTPUT_DIR
    check_output_dir(folder)
    if acquire_lock(folder):  # this process has just taken the folder over
        remove_stale_temp_files(folder)
    if fresh:
        discard_previous(folder)
    if train:
        try:
            check_record(cfg, folder)
        except OSError as exc:
            raise UserError("cannot write {} ({})".format(osp.join(folder, RECORD), exc.strerror or exc)) from exc
