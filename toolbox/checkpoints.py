"""Reading checkpoints safely (both toolbox backends).

* ``safe_load``: ``torch.load(weights_only=True)`` on the CPU. A checkpoint can then hold tensors and plain
  values only (numbers, strings, lists, tuples, dicts); a pickled object that would import a module or call
  a function is refused before anything runs, with one line naming the file.
* ``pointer_target``: the file a model folder's ``checkpoint`` pointer names. The pointer may only name a
  plain file beside it (no path, no ``..``, no symbolic link); anything else is a one-line refusal.
"""
import os.path as osp
import pickle
import zipfile

from .errors import UserError

POINTER = "checkpoint"
_MAX_POINTER_BYTES = 4096


def _refusal_reason(exc):
    """The useful line of torch's weights-only refusal (which module or function the pickle asked for)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return "it holds something other than tensors and plain values"


def safe_load(path, what="checkpoint"):
    """Load ``path`` with ``torch.load(weights_only=True, map_location="cpu")``; any failure is a one-line
    ``UserError`` naming the file (a refused pickle never runs any of its code)."""
    import torch

    if not osp.isfile(path):
        raise UserError("{} {} does not exist".format(what, path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError("{} {}: refused to load it ({}); only files holding tensors and plain values are read, "
                        "so this is not a checkpoint this toolbox wrote (delete it, or point at the right "
                        "folder)".format(what, path, _refusal_reason(exc))) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError,
            IndexError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError("{} {}: cannot be read ({}); it is damaged or not a checkpoint (delete it and "
                        "rerun)".format(what, path, first)) from exc


def pointer_target(folder):
    """The checkpoint file named by ``folder/checkpoint``, refused unless it is a plain file in ``folder``."""
    pointer = osp.join(folder, POINTER)
    try:
        with open(pointer, "rb") as f:
            raw = f.read(_MAX_POINTER_BYTES + 1)
    except OSError as exc:
        raise UserError("cannot read the checkpoint pointer {} ({})".format(pointer, exc.strerror or exc)) from exc
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = None
    name = lines[0].strip() if lines else ""
    bad = (lines is None or len(raw) > _MAX_POINTER_BYTES or not name or name in (".", "..")
           or name != osp.basename(name) or "/" in name or "\\" in name or "\x00" in name)
    if bad:
        raise UserError("checkpoint pointer {} does not name a file of its folder (it reads {!r}); a pointer may "
                        "only name a checkpoint file beside it: delete the pointer (the run then starts "
                        "afresh) or restore it".format(pointer, raw[:80].decode("utf-8", "replace")))
    target = osp.join(folder, name)
    if osp.islink(target):
        raise UserError("checkpoint pointer {} names {}, a symbolic link; a pointer may only name a plain "
                        "checkpoint file in its folder".format(pointer, target))
    if not osp.isfile(target):
        raise UserError("checkpoint pointer {} names {}, which does not exist (deleted?); delete the pointer to "
                        "start afresh".format(pointer, target))
    if osp.realpath(osp.dirname(target)) != osp.realpath(folder):
        raise UserError("checkpoint pointer {} names a file outside its folder".format(pointer))
    return target


def pointer_epoch(folder):
    """The epoch count of the checkpoint a pointer names (``model.pth.tar-<N>``), without loading it; None
    when there is no valid pointer or the name carries no epoch."""
    try:
        name = osp.basename(pointer_target(folder))
    except UserError:
        return None
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if name.startswith("model.pth.tar-") and tail.isdigit() else None


__all__ = ["POINTER", "safe_load", "pointer_target", "pointer_epoch"]
