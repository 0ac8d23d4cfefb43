"""What a ClipTrainer checkpoint holds, and how it is checked when it is read back (both backends).

A checkpoint ``<output>/<model name>/model.pth.tar-<epochs done>`` keeps Dassl's keys (``state_dict``,
``epoch``, ``optimizer``, ``scheduler``, ``val_result``) and adds ``fairclip``:

* ``identity``: trainer, dataset, class count, backbone fingerprint and the run's training configuration
  with its hash (``_run_folder.training_config``). Loading checks it against the run: another trainer's,
  dataset's, class count's or backbone's checkpoint is a one-line refusal; resuming also needs the same
  training configuration (the message lists the keys that differ);
* ``resume``: everything else the next epoch depends on, so that a resumed run trains bit for bit what the
  uninterrupted run trains: the Python, NumPy, torch CPU and CUDA random states, the states of the train
  loader's, its sampler's and the GPU-view maker's generators (per process under DDP), the trainer's own
  state across epochs (``ClipTrainer.extra_checkpoint_state``), the history, the best validation result,
  and the training time and images seen.

Everything is tensors and plain values, so ``torch.load(weights_only=True)`` reads it
(``toolbox.checkpoints.safe_load``). Files are written atomically (``toolbox.io.atomic_torch_save``).
"""
import random

import numpy as np
import torch

from fairclip.toolbox.errors import UserError

from . import _distributed
from ._run_folder import config_differences, config_hash, summarize, training_config

FORMAT = 1
KEY = "fairclip"


# ---------------------------------------------------------------------------- plain values
def plain(obj):
    """``obj`` with NumPy values turned into Python numbers / tensors, and tensors moved to the CPU, so that
    a weights-only load accepts it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # bool first (a bool is an int); subclasses become the plain type
        if isinstance(obj, kind):
            return kind(obj)
    raise TypeError("checkpoint state must be tensors and plain values, got {}".format(type(obj).__name__))


# ---------------------------------------------------------------------------- identity
def identity(trainer):
    cfg = trainer.cfg
    train_cfg = training_config(cfg)
    return {
        "format": FORMAT,
        "trainer": str(cfg.TRAINER.NAME),
        "dataset": str(cfg.DATASET.NAME),
        "num_classes": int(trainer.num_classes),
        "classnames": [str(c) for c in getattr(trainer, "classnames", [])],
        "subsample_classes": str(cfg.DATASET.SUBSAMPLE_CLASSES),
        "backbone_fingerprint": str(trainer.clip_info["fingerprint"]),
        "world_size": int(getattr(trainer, "world_size", 1)),
        "config_hash": config_hash(train_cfg),
        "config": train_cfg,
    }


def check_identity(checkpoint, trainer, path, resume):
    """Refuse a checkpoint of another trainer, dataset, class count or backbone (and, when ``resume``, of
    another training configuration or world size). Returns the training keys that differ (eval-only).

    Evaluation (``resume`` False) may use another dataset when the checkpoint knows every class of this one
    by name (a test set of the training classes, or of a subset of them), and CoOp's base-to-new protocol
    (trained on ``SUBSAMPLE_CLASSES base``, tested on ``new``) may change the classes."""
    meta = checkpoint.get(KEY) if isinstance(checkpoint, dict) else None
    ident = meta.get("identity") if isinstance(meta, dict) else None
    if not isinstance(ident, dict) or ident.get("format") != FORMAT or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError("checkpoint {} records no run identity (written by another tool or an older version of "
                        "this toolbox), so it cannot be checked against this run; retrain, or point at a run of "
                        "this version".format(path))
    mine = identity(trainer)
    problems = []
    if ident.get("trainer") != mine["trainer"]:
        problems.append("it was trained by {}, this run is {}".format(ident.get("trainer"), mine["trainer"]))
    known = set(ident.get("classnames") or [])
    unknown = [c for c in mine["classnames"] if c not in known]
    classes_known = not resume and not unknown  # evaluation on (a subset of) the classes it was trained on
    base_to_new = ident.get("subsample_classes") == "base" and mine["subsample_classes"] == "new" and not resume
    if ident.get("dataset") != mine["dataset"] and not classes_known:
        problems.append("it was trained on {}, this run uses {}{}".format(
            ident.get("dataset"), mine["dataset"],
            ", whose classes it does not know (first: {!r})".format(unknown[0]) if unknown else ""))
    elif ident.get("num_classes") != mine["num_classes"] and not (classes_known or base_to_new):
        problems.append("it has {} classes, this run {}".format(ident.get("num_classes"), mine["num_classes"]))
    if ident.get("backbone_fingerprint") != mine["backbone_fingerprint"]:
        problems.append("it was trained from another CLIP (backbone fingerprint {}, this run {})".format(
            ident.get("backbone_fingerprint"), mine["backbone_fingerprint"]))
    if problems:
        raise UserError("checkpoint {}: {}; point at a checkpoint of this trainer, dataset and backbone".format(
            path, "; ".join(problems)))
    diffs = config_differences(ident.get("config") or {}, mine["config"])
    if resume and (diffs or ident.get("config_hash") != mine["config_hash"]):
        raise UserError("checkpoint {} was trained with other settings ({}); resume with the settings it was "
                        "trained with, or pass --fresh (scripts: FRESH=1) to start afresh".format(
                            path, summarize(diffs) or "configuration hash differs"))
    if resume and ident.get("world_size") != mine["world_size"]:
        raise UserError("checkpoint {} was trained on {} process(es), this run has {}; resume with the same "
                        "number of processes".format(path, ident.get("world_size"), mine["world_size"]))
    return diffs


def state_dict_problems(model, state_dict):
    """What keeps ``state_dict`` from being exactly the trained state of ``model`` (None when it fits):
    missing trained tensors, unknown keys or wrong shapes."""
    expected = model.state_dict()
    known = torch.nn.Module.state_dict(model)
    missing = [k for k in expected if k not in state_dict]
    unknown = [k for k in state_dict if k not in known]
    shapes = ["{} has shape {} in the checkpoint, {} here".format(k, list(v.shape), list(known[k].shape))
              for k, v in state_dict.items() if k in known and torch.is_tensor(v) and v.shape != known[k].shape]
    problems = []
    if missing:
        problems.append("it lacks {} trained tensor(s) ({}{})".format(
            len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else ""))
    if unknown:
        problems.append("it has keys this model does not know ({}{})".format(
            ", ".join(unknown[:3]), ", ..." if len(unknown) > 3 else ""))
    if shapes:
        problems.append("; ".join(shapes[:3]))
    return "; ".join(problems) or None


def load_weights(model, state_dict, path, diffs=()):
    """Load ``state_dict`` into ``model`` exactly, or refuse in one line naming ``path`` and what differs."""
    problem = state_dict_problems(model, state_dict)
    if problem:
        hint = " (training settings that differ: {})".format(summarize(list(diffs), 3)) if diffs else ""
        raise UserError("checkpoint {} does not fit this model: {}{}".format(path, problem, hint))
    model.load_state_dict(state_dict)


# ---------------------------------------------------------------------------- random state
def _generators(trainer):
    """The train loader's own generators: ``{name: torch.Generator}``."""
    loader = trainer.train_loader_x
    gens = {}
    views = getattr(loader, "views", None)  # DeviceViewLoader: the GPU-view maker
    if views is not None:
        gens["gpu_views"] = views.generator
    inner = getattr(loader, "loader", loader)
    if getattr(inner, "generator", None) is not None:
        gens["train_loader"] = inner.generator
    sampler = getattr(inner, "sampler", None)
    if getattr(sampler, "generator", None) is not None:
        gens["train_sampler"] = sampler.generator
    return gens


def capture_random_state(trainer):
    """This process's random state: Python, NumPy, torch CPU and CUDA, and the train loader's generators."""
    key, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else None,
        "generators": {name: g.get_state().cpu() for name, g in _generators(trainer).items()},
    }
    return state


def restore_random_state(trainer, state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = _generators(trainer)
    for name, saved in state["generators"].items():
        if name not in gens:
            raise UserError("the checkpoint holds the state of the train loader's '{}' generator, which this run "
                            "does not have; resume with the settings it was trained with".format(name))
        gens[name].set_state(saved)


def capture_run_state(trainer):
    """Everything besides the weights, optimizer and scheduler that the next epoch depends on. Under DDP
    every rank contributes its random state (a collective call: every rank must make it)."""
    ranks = _distributed.all_gather_object(capture_random_state(trainer))
    return plain({
        "random": ranks,
        "trainer": trainer.extra_checkpoint_state(),
        "history": list(trainer.history),
        "best_result": float(getattr(trainer, "best_result", float("-inf"))),
        "train_seconds": float(trainer.train_seconds),
        "train_images_seen": int(trainer.train_images_seen),
    })


def restore_counters(trainer, run_state):
    """The counters and history (at resume); the random state waits until training starts."""
    trainer.history = list(run_state["history"])
    trainer.best_result = float(run_state["best_result"])
    trainer.train_seconds = float(run_state["train_seconds"])
    trainer.train_images_seen = int(run_state["train_images_seen"])
    trainer.load_extra_checkpoint_state(run_state.get("trainer") or {})


def restore_rank_random_state(trainer, run_state):
    ranks = run_state["random"]
    rank = _distributed.rank()
    if rank >= len(ranks):
        raise UserError("the checkpoint holds the random state of {} process(es), this run has {}".format(
            len(ranks), _distributed.world_size()))
    restore_random_state(trainer, ranks[rank])


def checkpoint_state(model, optim, sched, epoch, val_result, ident, run_state):
    return {
        "state_dict": model.state_dict(),
        "epoch": int(epoch) + 1,
        "optimizer": optim.state_dict() if optim is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "val_result": None if val_result is None else float(val_result),
        KEY: {"identity": ident, "resume": run_state},
    }
